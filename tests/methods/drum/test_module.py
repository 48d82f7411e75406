"""DRUMModule under a Trainer: a fit writes predictions with their rho; a resumed fit equals an uninterrupted one."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch
from lightning.pytorch import Trainer

from lightning_papers.datamodules.source_target import SourceTargetDataModule
from lightning_papers.methods.drum.module import DRUMModule


def _dm() -> SourceTargetDataModule:
    return SourceTargetDataModule(n_source=400, n_target=300, n_eval=200, steps_per_epoch=10)


def _model(**kw: object) -> DRUMModule:
    return DRUMModule(**{"rho": 0.3, "nuisance_steps": 30, "hidden": 16, "batch_size": 64, "warm_start_steps": 5,
                         "k_g": 2, "robustness_rhos": [0.0, 0.3], **kw})


def _trainer(tmp_path: Path, **kw: object) -> Trainer:
    return Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False, enable_model_summary=False,
                   default_root_dir=str(tmp_path), **kw)


def test_fit_writes_predictions_with_rho(tmp_path: Path) -> None:
    model = _model()
    _trainer(tmp_path, max_epochs=2, enable_checkpointing=False).fit(model, datamodule=_dm())
    with (model.predictions_dir / "target_predictions.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 300 and {r["rho"] for r in rows} == {"0.3"}
    with (model.predictions_dir / "robustness.csv").open() as fh:
        curve = list(csv.DictReader(fh))
    assert [float(r["rho"]) for r in curve] == [0.0, 0.3]
    assert all(float(curve[1][k]) >= float(curve[0][k]) for k in ("DRUM f", "multiple imputation"))
    metrics = model.evaluate()
    assert metrics["mse_worst"] >= metrics["mse_mean"] > 0 and 0 < metrics["div"] <= 0.3 + 1e-5  # inside the ball
    assert set(model.make_figures("validate")) == {"val/game", "val/generator", "val/robustness"}


def test_bad_model_arguments_fail_before_training() -> None:
    with pytest.raises(ValueError, match="rho must be >= 0, got -1"):
        DRUMModule(rho=-1.0)
    with pytest.raises(ValueError, match="robustness_rhos must be >= 0"):
        DRUMModule(robustness_rhos=[-0.1])


def test_resume_equals_uninterrupted(tmp_path: Path) -> None:
    full = _model()
    _trainer(tmp_path / "a", max_epochs=3, enable_checkpointing=False).fit(full, datamodule=_dm())
    first = _model()
    t = _trainer(tmp_path / "b", max_epochs=1, enable_checkpointing=False)
    t.fit(first, datamodule=_dm())
    ckpt = tmp_path / "mid.ckpt"
    t.save_checkpoint(ckpt)
    resumed = _model()
    _trainer(tmp_path / "c", max_epochs=3, enable_checkpointing=False).fit(resumed, datamodule=_dm(),
                                                                           ckpt_path=str(ckpt))
    assert int(resumed.game.steps) == int(full.game.steps) == 30
    for (name, p), q in zip(full.game.state_dict().items(), resumed.game.state_dict().values()):
        assert torch.equal(p, q), name
