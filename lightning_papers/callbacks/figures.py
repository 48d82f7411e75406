"""Log matplotlib figures: a PNG file under the run directory always, and a ``wandb.Image`` when W&B logs the run.

Methods call :func:`log_figure` directly, or implement ``make_figures(stage) -> dict[str, Figure]`` and let
:class:`FigureLogger` call it at the end of validation/test epochs (rank zero only, sanity check skipped).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING

from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_only

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def _wandb_loggers(trainer: Trainer) -> list:
    from lightning.pytorch.loggers import WandbLogger

    return [lg for lg in trainer.loggers if isinstance(lg, WandbLogger)]


def figure_dir(trainer: Trainer) -> Path:
    """Folder for this run's PNG figures.

    ``<save_dir>/figures/<wandb run id>`` with a WandbLogger, ``<log_dir>/figures`` with another logger, and
    ``<default_root_dir>/figures`` without one.
    """
    wandb_loggers = _wandb_loggers(trainer)
    if wandb_loggers:
        logger = wandb_loggers[0]
        return Path(logger.save_dir or trainer.default_root_dir) / "figures" / str(logger.version)
    if trainer.log_dir is not None:
        return Path(trainer.log_dir) / "figures"
    return Path(trainer.default_root_dir) / "figures"


@rank_zero_only
def log_figure(trainer: Trainer, key: str, figure: Figure, close: bool = True) -> Path:
    """Save ``figure`` as ``<figure_dir>/<key>_step<global_step>.png`` and log it to every attached WandbLogger.

    Args:
        trainer: The running trainer (gives the run directory, the step and the loggers).
        key: Name of the plot, e.g. ``"val/samples"``; used as the W&B key and, sanitised, as the file name.
        figure: A matplotlib figure.
        close: Close the figure afterwards to free its memory.

    Returns:
        The path of the PNG file.
    """
    import matplotlib.pyplot as plt

    if not key:
        raise ValueError("log_figure needs a non-empty key")
    out = figure_dir(trainer)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{re.sub(r'[^A-Za-z0-9_.-]+', '_', key)}_step{trainer.global_step:06d}.png"
    figure.savefig(path, dpi=110, bbox_inches="tight")
    loggers = _wandb_loggers(trainer)
    if loggers:
        import wandb

        for logger in loggers:
            logger.log_image(key=key, images=[wandb.Image(str(path))], step=trainer.global_step)
    if close:
        plt.close(figure)
    return path


class FigureLogger(Callback):
    """Ask the module for its figures at the end of validation/test epochs and log them with :func:`log_figure`.

    The module implements ``make_figures(stage: str) -> dict[str, matplotlib.figure.Figure]`` (stage is
    ``"validate"`` or ``"test"``); modules without it are left alone.

    Args:
        every_n_epochs: Log on every n-th validation epoch (test epochs always log).

    Example::

        trainer = Trainer(callbacks=[FigureLogger(every_n_epochs=5)])
    """

    def __init__(self, every_n_epochs: int = 1) -> None:
        if every_n_epochs < 1:
            raise ValueError(f"every_n_epochs must be >= 1, got {every_n_epochs}")
        self.every_n_epochs = every_n_epochs

    def _log(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        make = getattr(pl_module, "make_figures", None)
        if make is None or not trainer.is_global_zero:
            return
        for key, fig in make(stage).items():
            log_figure(trainer, key, fig)

    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.sanity_checking or (trainer.current_epoch + 1) % self.every_n_epochs:
            return
        self._log(trainer, pl_module, "validate")

    def on_test_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._log(trainer, pl_module, "test")
