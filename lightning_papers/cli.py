"""The ``lightning-papers`` command: a LightningCLI in subclass mode over every method in the package.

Classes are found by walking the packages (:func:`discover`), not through side-effect imports in ``__init__``
files: every module under :mod:`lightning_papers.methods`, :mod:`lightning_papers.datamodules` and
:mod:`lightning_papers.callbacks` is imported, so its LightningModules, LightningDataModules and Callbacks are known
subclasses. They show up in ``--help`` and a config can name them by their short class name
(``class_path: GradientProjection``); any other class can still be named by its full ``class_path``.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import textwrap
from pathlib import Path
from typing import Any

from lightning.pytorch import LightningDataModule, LightningModule, Trainer
from lightning.pytorch.cli import ArgsType, LightningCLI, SaveConfigCallback

from lightning_papers.plotting import wandb_loggers

#: Packages whose modules :func:`discover` imports.
DISCOVERED_PACKAGES = ("lightning_papers.methods", "lightning_papers.datamodules", "lightning_papers.callbacks")


def discover() -> list[str]:
    """Import every module of :data:`DISCOVERED_PACKAGES` and return the names of the method packages.

    Importing is cheap: heavy dependencies (transformers, peft, timm, POT, wandb) are imported inside the
    functions that need them.
    """
    for package_name in DISCOVERED_PACKAGES:
        package = importlib.import_module(package_name)
        for info in pkgutil.walk_packages(package.__path__, prefix=f"{package_name}."):
            importlib.import_module(info.name)
    methods = importlib.import_module("lightning_papers.methods")
    return sorted(m.name for m in pkgutil.iter_modules(methods.__path__) if m.ispkg)


class HelpFormatter(argparse.HelpFormatter):
    """Wrap help text at spaces only, so a long ``class_path`` is never split mid-word."""

    def _split_lines(self, text: str, width: int) -> list[str]:
        text = self._whitespace_matcher.sub(" ", text).strip()
        return textwrap.wrap(text, width, break_long_words=False, break_on_hyphens=False)


def _help_formatter() -> type:
    """jsonargparse's formatter (it prints defaults and types) with :class:`HelpFormatter`'s wrapping."""
    from jsonargparse import DefaultHelpFormatter

    return type("LightningPapersHelpFormatter", (HelpFormatter, DefaultHelpFormatter), {})


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
        text = self.parser.dump(self.config, skip_none=False)
        loggers = wandb_loggers(trainer.loggers)
        for logger in loggers:
            run = logger.experiment
            run.config.update(self.config.as_dict(), allow_val_change=True)
            run_dir = getattr(run, "dir", None)
            if run_dir:
                Path(run_dir).mkdir(parents=True, exist_ok=True)
                (Path(run_dir) / self.config_filename).write_text(text)
        if not loggers and trainer.log_dir is not None:
            Path(trainer.log_dir).mkdir(parents=True, exist_ok=True)
            (Path(trainer.log_dir) / self.config_filename).write_text(text)


def cli_main(args: ArgsType = None, run: bool = True) -> LightningCLI:
    """Build (and by default run) the CLI.

    Args:
        args: Command-line arguments as a list or a dict; ``None`` reads ``sys.argv``.
        run: ``False`` only parses and instantiates (model, datamodule, trainer), as the config tests do.
    """
    discover()
    return LightningCLI(
        LightningModule,
        LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        save_config_callback=WandbSaveConfigCallback,
        parser_kwargs={"formatter_class": _help_formatter()},
        args=args,
        run=run,
    )
