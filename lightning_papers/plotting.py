"""Where a run's figures go: a PNG file under the run directory always, and a ``wandb.Image`` when W&B logs the run.

This is a neutral utility: methods, callbacks and benchmarks import it, and it imports none of them.
:class:`lightning_papers.callbacks.FigureLogger` is the callback that calls :func:`log_figure` for a module that
implements ``make_figures(stage)``.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING

from lightning.pytorch import Trainer
from lightning.pytorch.utilities import rank_zero_only

if TYPE_CHECKING:
    from lightning.pytorch.loggers import WandbLogger
    from matplotlib.figure import Figure


def wandb_loggers(loggers: list) -> list[WandbLogger]:
    """The ``WandbLogger`` instances among ``loggers`` (for example ``trainer.loggers``)."""
    from lightning.pytorch.loggers import WandbLogger

    return [lg for lg in loggers if isinstance(lg, WandbLogger)]


def figure_dir(trainer: Trainer) -> Path:
    """Folder for this run's PNG figures.

    ``<save_dir>/figures/<wandb run id>`` with a WandbLogger (a resumed run keeps its id, so its folder too),
    ``<log_dir>/figures`` with another logger, and ``<default_root_dir>/figures`` without one.
    """
    from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

    loggers = wandb_loggers(trainer.loggers)
    if loggers:
        logger = loggers[0]
        return Path(logger.save_dir or trainer.default_root_dir) / "figures" / str(logger.version)
    # ``trainer.log_dir`` would broadcast from rank 0, and only rank 0 logs figures: under DDP the other ranks
    # would never join the collective. Read the same folder ``log_dir`` names, without the broadcast.
    if trainer.loggers:
        first = trainer.loggers[0]
        log_dir = first.log_dir if isinstance(first, CSVLogger | TensorBoardLogger) else first.save_dir
        if log_dir is not None:
            return Path(log_dir) / "figures"
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
    loggers = wandb_loggers(trainer.loggers)
    if loggers:
        import wandb

        for logger in loggers:
            logger.log_image(key=key, images=[wandb.Image(str(path))], step=trainer.global_step)
    if close:
        plt.close(figure)
    return path
