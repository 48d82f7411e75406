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
from typing_extensions import override

from lightning_papers.plotting import figure_dir, wandb_loggers

#: Checkpoint key under which the W&B run id is saved, so a resumed fit continues the same run.
WANDB_RUN_ID_KEY = "wandb_run_id"

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
        if not loggers:  # the run folder without ``trainer.log_dir``: it broadcasts, and only rank 0 is here
            log_dir = figure_dir(trainer).parent
            log_dir.mkdir(parents=True, exist_ok=True)
            (log_dir / self.config_filename).write_text(text)

    @override
    def on_save_checkpoint(self, trainer: Trainer, pl_module: LightningModule, checkpoint: dict[str, Any]) -> None:
        """Record the W&B run id, so ``--ckpt_path`` resumes the same run (:class:`LightningPapersCLI`)."""
        loggers = wandb_loggers(trainer.loggers)
        if loggers:
            checkpoint[WANDB_RUN_ID_KEY] = str(loggers[0].version)


def _wandb_run_id(ckpt_path: str | Path) -> str | None:
    """The W&B run id a checkpoint was written under (see :meth:`WandbSaveConfigCallback.on_save_checkpoint`)."""
    import torch

    path = Path(ckpt_path)
    if not path.is_file():
        return None
    checkpoint = torch.load(path, map_location="cpu", weights_only=False, mmap=True)
    return checkpoint.get(WANDB_RUN_ID_KEY)


def _run_name(config: Any) -> str | None:
    """``<method>/<config name>-seed<seed>`` from the first ``--config`` file, e.g. ``qdsb/debug-seed0``."""
    paths = [p for p in (config.get("config") or []) if p is not None]
    if not paths:
        return None
    path = Path(str(paths[0].absolute if hasattr(paths[0], "absolute") else paths[0]))
    seed = config.get("seed_everything")
    name = f"{path.parent.name}/{path.stem}"
    return name if seed is None or isinstance(seed, bool) else f"{name}-seed{seed}"


class LightningPapersCLI(LightningCLI):
    """LightningCLI with the package's habits.

    - ``--gradient_projection`` adds a :class:`~lightning_papers.callbacks.GradientProjection` from the command line
      or a config's top-level ``gradient_projection:`` key, so ``--gradient_projection.subspace PATH`` sets the GRASP
      subspace file without touching the callback list.
    - A W&B run gets a name from the config (``<method>/<config>-seed<seed>``) unless the config names it, and a
      fit resumed with ``--ckpt_path`` continues the W&B run (and so the figures folder) the checkpoint was written
      under, instead of opening a new one.
    """

    @override
    def add_arguments_to_parser(self, parser: Any) -> None:
        from lightning_papers.callbacks.gradient_projection import GradientProjection

        parser.add_lightning_class_args(GradientProjection, "gradient_projection", subclass_mode=True, required=False)

    @override
    def before_instantiate_classes(self) -> None:
        config = self.config.get(self.subcommand) if self.subcommand else self.config
        loggers = config.trainer.get("logger")
        for logger in loggers if isinstance(loggers, list) else [loggers]:
            if not hasattr(logger, "class_path") or not logger.class_path.endswith("WandbLogger"):
                continue
            init_args = logger.init_args
            if init_args.get("name") is None:
                init_args.name = _run_name(config)
            ckpt_path = config.get("ckpt_path")
            run_id = _wandb_run_id(ckpt_path) if ckpt_path else None
            if run_id is not None and init_args.get("id") is None and init_args.get("version") is None:
                init_args.id = run_id
                init_args.resume = "allow"

    @override
    def before_fit(self) -> None:
        """Refuse a multi-process fit of a single-device method before any process starts.

        A LightningModule that cannot run on several processes says so with a class attribute
        ``max_world_size: int`` (and the reason in its docstring); without it, any world size is fine.
        """
        limit = getattr(self.model, "max_world_size", None)
        world_size = self.trainer.world_size
        if limit is not None and world_size > limit:
            raise ValueError(
                f"{type(self.model).__name__} runs on at most {limit} process(es), got world_size={world_size} "
                f"(strategy {type(self.trainer.strategy).__name__}, devices {self.trainer.num_devices}); "
                "run it with --trainer.devices 1 (see its docs for how it scales instead)"
            )

    @override
    def _instantiate_trainer(self, config: dict[str, Any], callbacks: list[Any]) -> Trainer:
        trainer = super()._instantiate_trainer(config, [c for c in callbacks if c is not None])
        for logger in wandb_loggers(trainer.loggers):
            if logger.save_dir:  # wandb warns "git root ... does not exist" when its dir is not there yet
                Path(logger.save_dir).mkdir(parents=True, exist_ok=True)
            # Lightning always passes anonymous=None, and wandb warns on every run that the setting has no effect.
            if logger._wandb_init.get("anonymous") is None:
                logger._wandb_init.pop("anonymous", None)
        return trainer


def cli_main(args: ArgsType = None, run: bool = True) -> LightningCLI:
    """Build (and by default run) the CLI.

    Args:
        args: Command-line arguments as a list or a dict; ``None`` reads ``sys.argv``.
        run: ``False`` only parses and instantiates (model, datamodule, trainer), as the config tests do.
    """
    discover()
    return LightningPapersCLI(
        LightningModule,
        LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        save_config_callback=WandbSaveConfigCallback,
        parser_kwargs={"formatter_class": _help_formatter()},
        args=args,
        run=run,
    )
