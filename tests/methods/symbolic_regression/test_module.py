"""SymbolicRegressionModule under a Trainer: logs, equation files, figures, exact resume, the contract check."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import ModelCheckpoint

from lightning_papers.callbacks.figures import FigureLogger
from lightning_papers.datamodules.trajectories import TrajectoryDataModule
from lightning_papers.methods.symbolic_regression.config import SymbolicConfig
from lightning_papers.methods.symbolic_regression.module import SymbolicRegressionModule


def small(steps: int = 120) -> tuple[SymbolicRegressionModule, TrajectoryDataModule]:
    cfg = SymbolicConfig(n_layers=1, steps=steps, max_points=200, cycle_steps=40)
    dm = TrajectoryDataModule(
        "pendulum", noise=0.01, n_trajectories=2, n_val_trajectories=1, t_end=5.0, steps_per_epoch=30
    )
    return SymbolicRegressionModule(cfg), dm


def trainer(root: Path, steps: int, **kw) -> Trainer:  # noqa: ANN003
    return Trainer(
        max_steps=steps,
        max_epochs=-1,
        accelerator="cpu",
        logger=False,
        default_root_dir=root,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        **kw,
    )


def test_fit_logs_metrics_equations_and_figures(tmp_path: Path) -> None:
    model, dm = small()
    t = trainer(
        tmp_path, 120, check_val_every_n_epoch=4, callbacks=[FigureLogger(every_n_epochs=4)], enable_checkpointing=False
    )
    t.fit(model, dm)
    m = t.callback_metrics
    for key in ("val/n_terms", "val/exact", "val/max_coef_error", "train/fit"):
        assert key in m and torch.isfinite(m[key]), key
    assert m["val/heldout_error"] >= 0  # inf when a 120-step network's equations diverge from the held-out start
    files = {p.name for p in (tmp_path / "figures").iterdir()}
    assert any(f.startswith("val_trajectories") for f in files) and any(
        f.startswith("val_loss_sparsity") for f in files
    )
    eq = json.loads((tmp_path / "figures" / "equations_step000120.json").read_text())
    assert eq["states"] == ["theta", "omega"] and len(eq["equations"]) == 2 and len(eq["latex"]) == 2
    # the mask was applied at step 96 and masked weights stayed zero
    lin = model.net.layers[0].linear
    assert (lin.weight_mask == 0).any() and (lin.effective()[0][lin.weight_mask == 0] == 0).all()


def test_resume_from_a_mid_run_checkpoint_is_exact(tmp_path: Path) -> None:
    model, dm = small()
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ck", every_n_train_steps=50, save_top_k=-1, save_last=False)
    trainer(tmp_path, 120, callbacks=[ckpt], limit_val_batches=0).fit(model, dm)
    resumed, dm2 = small()
    trainer(tmp_path / "r", 120, limit_val_batches=0, enable_checkpointing=False).fit(
        resumed, dm2, ckpt_path=str(tmp_path / "ck" / "epoch=1-step=50.ckpt")
    )
    for (name, a), b in zip(model.net.state_dict().items(), resumed.net.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)
    assert resumed.history == model.history


def test_a_datamodule_without_trajectories_is_refused(tmp_path: Path) -> None:
    from lightning_papers.datamodules.point_clouds import PointCloudPairDataModule

    with pytest.raises(TypeError, match="TrajectorySource"):
        trainer(tmp_path, 5).fit(SymbolicRegressionModule(SymbolicConfig(steps=5)), PointCloudPairDataModule())


def test_max_steps_beyond_the_schedule_is_refused(tmp_path: Path) -> None:
    model, dm = small(100)
    with pytest.raises(
        ValueError, match=r"trainer.max_steps \(150\) is beyond the schedule's end, config.steps \(100\)"
    ):
        trainer(tmp_path, 150).fit(model, dm)


def test_plain_fit_loop_matches_the_lightning_module(tmp_path: Path) -> None:
    """The benchmark's ``fit`` and ``SymbolicRegressionModule`` under a Trainer run the same steps."""
    from lightning_papers.methods.symbolic_regression.derivatives import training_arrays
    from lightning_papers.methods.symbolic_regression.network import SymbolicNetwork
    from lightning_papers.methods.symbolic_regression.training import fit, to_tensors

    model, dm = small(60)
    trainer(tmp_path, 60, limit_val_batches=0, enable_checkpointing=False).fit(model, dm)
    cfg = model.cfg
    arr = training_arrays(dm.train_trajectories, "savgol", cfg.savgol_window, cfg.savgol_order, cfg.max_points)
    net = SymbolicNetwork(2, cfg)
    fit(net, to_tensors(arr), cfg)
    for (name, a), b in zip(net.state_dict().items(), model.net.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)
