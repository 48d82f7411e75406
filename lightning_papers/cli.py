"""The ``lightning-papers`` command: a LightningCLI in subclass mode over every method in the package.

Every sub-package of :mod:`lightning_papers.methods` is imported here so that its LightningModules and
LightningDataModules are known subclasses (they show up in ``--help`` and can be named by their short class
name in a config). Any other class can still be named by its full ``class_path``.
"""

from __future__ import annotations

import importlib
import pkgutil
from pathlib import Path
from typing import Any

from lightning.pytorch import LightningDataModule, LightningModule, Trainer
from lightning.pytorch.cli import ArgsType, LightningCLI, SaveConfigCallback

import lightning_papers.methods


def import_methods() -> list[str]:
    """Import every method sub-package (registers its classes with the CLI) and return their names."""
    names = [m.name for m in pkgutil.iter_modules(lightning_papers.methods.__path__) if m.ispkg]
    for name in names:
        importlib.import_module(f"lightning_papers.methods.{name}")
    return names


class WandbSaveConfigCallback(SaveConfigCallback):
    """Save the fully resolved config next to the run, and into the W&B run config when W&B logs the run.

    Lightning's own callback writes ``config.yaml`` into ``trainer.log_dir``, which for a ``WandbLogger`` is the
    shared ``save_dir`` (so a second run would collide with the first, Lightning #7679/#11256), and never
    reaches the W&B run config (#19728). Here the file goes into the W&B run's ``files`` folder (synced with
    ``wandb sync``) and the whole config into ``run.config``; without W&B it goes to ``trainer.log_dir``.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs["save_to_log_dir"] = False
        super().__init__(*args, **kwargs)

    def save_config(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        from lightning.pytorch.loggers import WandbLogger

        text = self.parser.dump(self.config, skip_none=False)
        wandb_loggers = [lg for lg in trainer.loggers if isinstance(lg, WandbLogger)]
        for logger in wandb_loggers:
            run = logger.experiment
            run.config.update(self.config.as_dict(), allow_val_change=True)
            run_dir = getattr(run, "dir", None)
            if run_dir:
                Path(run_dir).mkdir(parents=True, exist_ok=True)
                (Path(run_dir) / self.config_filename).write_text(text)
        if not wandb_loggers and trainer.log_dir is not None:
            Path(trainer.log_dir).mkdir(parents=True, exist_ok=True)
            (Path(trainer.log_dir) / self.config_filename).write_text(text)


def cli_main(args: ArgsType = None, run: bool = True) -> LightningCLI:
    """Build (and by default run) the CLI.

    Args:
        args: Command-line arguments as a list or a dict; ``None`` reads ``sys.argv``.
        run: ``False`` only parses and instantiates (model, datamodule, trainer), as the config tests do.
    """
    import_methods()
    return LightningCLI(
        LightningModule,
        LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        save_config_callback=WandbSaveConfigCallback,
        args=args,
        run=run,
    )
