"""Figures without W&B: PNG files under the logger's directory; bad arguments are refused."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import pytest
from lightning.pytorch import Trainer
from lightning.pytorch.demos.boring_classes import BoringDataModule, BoringModel
from lightning.pytorch.loggers import CSVLogger

from lightning_papers.callbacks.figures import FigureLogger
from lightning_papers.plotting import log_figure


def test_log_figure_saves_png_in_log_dir(tmp_path: Path) -> None:
    trainer = Trainer(logger=CSVLogger(tmp_path), max_steps=1, enable_progress_bar=False)
    fig, ax = plt.subplots()
    ax.scatter([0, 1], [0, 1])
    path = log_figure(trainer, "val/samples", fig)
    assert path.exists() and path.suffix == ".png"
    assert path.parent == Path(trainer.log_dir) / "figures"
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_figure_logger_skips_modules_without_figures(tmp_path: Path) -> None:
    trainer = Trainer(
        default_root_dir=tmp_path, logger=CSVLogger(tmp_path), max_epochs=1, limit_train_batches=1,
        limit_val_batches=1, callbacks=[FigureLogger()], enable_progress_bar=False, enable_checkpointing=False,
    )
    trainer.fit(BoringModel(), BoringDataModule())
    assert not (Path(trainer.log_dir) / "figures").exists()


def test_figure_logger_rejects_bad_interval() -> None:
    with pytest.raises(ValueError, match="every_n_epochs"):
        FigureLogger(every_n_epochs=0)
