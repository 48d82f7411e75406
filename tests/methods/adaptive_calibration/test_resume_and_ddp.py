"""The stream module resumes exactly from a checkpoint at any step, and plays the same stream on every DDP rank."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch.distributed as dist
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import WandbLogger

from lightning_papers.datamodules.streams import PiecewiseStreamDataModule
from lightning_papers.methods.adaptive_calibration.forecasters import build_forecaster
from lightning_papers.methods.adaptive_calibration.module import CalibrationStreamModule
from lightning_papers.metrics.calibration import l1_calibration_error
from tests.helpers.ddp import ddp_cpu_kwargs

STOP_STEP = 7  # of 16 batches: segment 2 (rounds 2000-3999) is still to come


class CrashAtStep(Callback):
    """Raise after the optimizer step ``step`` (the checkpoint of that step is written first)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, *args: object) -> None:
        if trainer.global_step == self.step:
            raise RuntimeError("simulated crash")


def fit(root: Path, ckpt: str | None = None, stop: str | None = None) -> tuple[CalibrationStreamModule, Trainer]:
    dm = PiecewiseStreamDataModule(length=4000, segments=2, batch_size=250, seed=0)
    module = CalibrationStreamModule(forecaster="adaptive")
    # a crash is resumed from the checkpoint of its last step; a max_steps stop from the one ModelCheckpoint writes
    # by default at (what Lightning takes for) the end of the epoch, as with the shipped configs
    every = 1 if stop == "crash" else None
    callbacks: list[Callback] = [ModelCheckpoint(dirpath=root, save_last=True, every_n_train_steps=every)]
    if stop == "crash":
        callbacks.append(CrashAtStep(STOP_STEP))
    trainer = Trainer(max_epochs=1, max_steps=STOP_STEP if stop == "max_steps" else -1, logger=False,
                      default_root_dir=root, enable_progress_bar=False, enable_model_summary=False,
                      callbacks=callbacks)  # fmt: skip
    if stop == "crash":
        with pytest.raises(RuntimeError, match="simulated crash"):
            trainer.fit(module, dm, ckpt_path=ckpt)
    else:
        trainer.fit(module, dm, ckpt_path=ckpt)
    return module, trainer


@pytest.mark.parametrize("stop", ["crash", "max_steps"])
def test_resume_mid_stream_equals_uninterrupted_run(tmp_path: Path, stop: str) -> None:
    """Stop at step 7 of 16 (a crash, or ``max_steps``), resume from ``last.ckpt`` with the same settings: the rest
    of the stream is played (not the stream from round 0, and not nothing), and everything equals one run."""
    full, full_trainer = fit(tmp_path / "full")
    part, _ = fit(tmp_path / stop, stop=stop)
    assert sum(h.size for h in part.history["y"]) == STOP_STEP * 250
    resumed, trainer = fit(tmp_path / stop, ckpt=str(tmp_path / stop / "last.ckpt"))

    assert trainer.global_step == full_trainer.global_step == 16
    for key in ("p", "y", "ref"):
        np.testing.assert_array_equal(np.concatenate(resumed.history[key]), np.concatenate(full.history[key]))
    assert resumed.curve == full.curve
    assert resumed.forecaster.state_dict() == full.forecaster.state_dict()
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
    assert metrics == {k: float(v) for k, v in full_trainer.callback_metrics.items()}
    assert metrics["train/rounds"] == 4000
    # ground truth: the same forecaster playing the whole stream outside Lightning
    dm = PiecewiseStreamDataModule(length=4000, segments=2, batch_size=250, seed=0)
    dm.setup()
    p = build_forecaster("adaptive").run(dm.y)
    np.testing.assert_array_equal(np.concatenate(resumed.history["p"]), p)
    assert metrics["train/l1_exact_per_T"] == pytest.approx(l1_calibration_error(p, dm.y) / 4000)


class CheckSameStreamOnEveryRank(Callback):
    """On each rank: the whole stream was played, in order, as a forecaster outside Lightning plays it, and the
    logged exact ℓ1/T is right; across ranks: equal forecaster states. Gathers first, then raises, so a failing
    rank cannot leave the other waiting in a collective."""

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        dm = trainer.datamodule
        p = np.concatenate(pl_module.history["p"])
        y = np.concatenate(pl_module.history["y"])
        logged = float(trainer.callback_metrics["train/l1_exact_per_T"])
        problems = []
        if not np.array_equal(y, dm.y):
            problems.append(f"played {y.size} rounds, not the whole stream in order")
        elif not np.array_equal(p, build_forecaster("adaptive").run(dm.y)):
            problems.append("forecasts differ from a single-process run")
        elif abs(logged - l1_calibration_error(p, y) / y.size) > 1e-6 * logged:  # logged as float32
            problems.append(f"logged l1_exact_per_T {logged} is not the exact value")
        reports: list = [None] * dist.get_world_size()
        dist.all_gather_object(reports, (problems, pl_module.forecaster.state_dict()))
        if any(r[0] for r in reports):
            raise AssertionError(f"per-rank problems: {[r[0] for r in reports]}")
        if reports[0][1] != reports[1][1]:
            raise AssertionError("forecaster state differs between ranks")


@pytest.mark.ddp
def test_debug_config_module_runs_under_ddp_spawn(tmp_path: Path) -> None:
    """The debug config's module and datamodule (smaller stream) on 2 CPU processes: same stream on both ranks,
    and rank 0 leaves the figures (W&B offline, as the configs log)."""
    kwargs = ddp_cpu_kwargs()
    kwargs["logger"] = WandbLogger(offline=True, save_dir=str(tmp_path), project="lightning-papers")
    trainer = Trainer(max_epochs=1, default_root_dir=tmp_path, callbacks=[CheckSameStreamOnEveryRank()], **kwargs)
    trainer.fit(CalibrationStreamModule(forecaster="adaptive"),
                PiecewiseStreamDataModule(length=4000, segments=2, batch_size=1000, seed=0))  # fmt: skip
    assert list(tmp_path.glob("figures/*/train_reliability_step000004.png"))
