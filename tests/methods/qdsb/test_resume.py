"""Exact resume: a QDSB run stopped at an arbitrary optimizer step (mid-epoch) and resumed from its checkpoint
ends with the same weights, the same anchor refreshes and the same validation scores as an uninterrupted run,
whether it crashed (checkpoint saved during the step) or was stopped by ``max_steps``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from lightning.pytorch import Callback, LightningModule, Trainer

from lightning_papers.datamodules.point_clouds import PointCloudPairDataModule
from lightning_papers.methods.qdsb.module import SF2MModule

STEPS, EPOCHS, CRASH_AT = 4, 5, 7  # step 7 is the 3rd of 4 steps of epoch 1; refreshes are due at epochs 2 and 4


class _Crash(Exception):
    pass


class _Record(Callback):
    """Epoch -> (epoch its plan was fitted at, the plan), and the number of steps run; optionally crash at a step."""

    def __init__(self, crash_at: int | None = None, ckpt: Path | None = None) -> None:
        self.crash_at, self.ckpt = crash_at, ckpt
        self.fits: dict[int, tuple[int, torch.Tensor]] = {}
        self.steps = 0

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int) -> None:
        self.fits.setdefault(trainer.current_epoch, (pl_module.last_fit_epoch, pl_module.coupling.plan.clone()))

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, *args: Any) -> None:
        self.steps += 1
        if trainer.global_step == self.crash_at:
            assert self.ckpt is not None
            trainer.save_checkpoint(self.ckpt)
            raise _Crash


def _fit(callback: _Record, ckpt_path: Path | None = None, max_steps: int = -1) -> tuple[SF2MModule, Trainer]:
    torch.manual_seed(0)  # the networks' initial weights
    dm = PointCloudPairDataModule("8gaussians", "moons", n_train=512, n_val=64, steps_per_epoch=STEPS, seed=3)
    model = SF2MModule(n_anchors=16, n_restarts=1, refresh_every=2, batch_size=64, lr=1e-2, n_eval=64,
                       n_sample_steps=5, seed=5)  # fmt: skip
    trainer = Trainer(max_epochs=EPOCHS, max_steps=max_steps, accelerator="cpu", logger=False,
                      enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                      callbacks=[callback])  # fmt: skip
    trainer.fit(model, dm, ckpt_path=ckpt_path)
    return model, trainer


def test_mid_epoch_resume_equals_an_uninterrupted_run(tmp_path: Path) -> None:
    full = _Record()
    ref, ref_trainer = _fit(full)
    ckpt = tmp_path / "crash.ckpt"
    with pytest.raises(_Crash):
        _fit(_Record(crash_at=CRASH_AT, ckpt=ckpt))
    after = _Record()
    resumed, trainer = _fit(after, ckpt_path=ckpt)

    assert after.steps == EPOCHS * STEPS - CRASH_AT  # the rest of epoch 1 only, not a replay of it
    assert trainer.global_step == ref_trainer.global_step == EPOCHS * STEPS
    for epoch in range(1, EPOCHS):  # the plan loaded at epoch 1, then the same refreshes at epochs 2 and 4
        assert after.fits[epoch][0] == full.fits[epoch][0] == 2 * (epoch // 2), epoch
        assert torch.equal(after.fits[epoch][1], full.fits[epoch][1]), epoch
    for a, b in zip(ref.state_dict().items(), resumed.state_dict().items(), strict=True):
        assert a[0] == b[0] and torch.equal(a[1], b[1]), a[0]
    for key in ("val/w1", "val/mmd", "val/energy", "coupling/expected_cost"):
        assert torch.equal(trainer.callback_metrics[key], ref_trainer.callback_metrics[key]), key


def test_a_run_stopped_by_max_steps_continues_the_cut_epoch(tmp_path: Path) -> None:
    ref, ref_trainer = _fit(_Record())
    _, stopped = _fit(_Record(), max_steps=CRASH_AT)
    ckpt = tmp_path / "stopped.ckpt"
    stopped.save_checkpoint(ckpt)  # Lightning marks the cut epoch as completed here
    after = _Record()
    resumed, trainer = _fit(after, ckpt_path=ckpt)
    assert after.steps == EPOCHS * STEPS - CRASH_AT and min(after.fits) == CRASH_AT // STEPS
    for (name, want), got in zip(ref.state_dict().items(), resumed.state_dict().values(), strict=True):
        assert torch.equal(want, got), name
    assert torch.equal(trainer.callback_metrics["val/w1"], ref_trainer.callback_metrics["val/w1"])
