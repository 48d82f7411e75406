"""``FigureLogger``: log a module's ``make_figures(stage)`` at the end of validation/test epochs.

The figure helpers themselves (:func:`lightning_papers.plotting.log_figure`, ``figure_dir``) live in the neutral
:mod:`lightning_papers.plotting`, which methods import directly.
"""

from __future__ import annotations

from lightning.pytorch import Callback, LightningModule, Trainer

from lightning_papers.plotting import log_figure


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
