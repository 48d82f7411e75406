"""Exact resume for every method's debug config: crash at an arbitrary optimizer step (mid-epoch), resume from
the last checkpoint with ``ckpt_path``, and get the same final weights and metrics as an uninterrupted run.

Each case shrinks its debug config so three short fits run in seconds, and crashes at a step that is not an epoch
boundary (for PAIRS: in the middle of stage 2). GRASP's configs need a pretrained base model first; its
mid-epoch resume test lives in ``tests/methods/grasp/``.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from lightning.pytorch import Callback, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint

from tests.helpers.debug_configs import CASES, CONFIGS, build, fit


class CrashAfter(Callback):
    """Raise at the end of the first training batch at or after optimizer step ``step``."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer: Trainer, *args: object) -> None:
        if trainer.global_step >= self.step:
            raise RuntimeError(f"simulated crash at step {trainer.global_step}")


def test_every_debug_config_has_a_resume_case() -> None:
    debug = {str(p.relative_to(CONFIGS)) for p in CONFIGS.rglob("*debug*.yaml")}
    assert debug <= set(CASES), f"add a resume case for {sorted(debug - set(CASES))}"


@pytest.mark.parametrize("config", sorted(CASES))
def test_crash_mid_epoch_then_resume_equals_uninterrupted(config: str, tmp_path: Path) -> None:
    overrides, stop, total = CASES[config]
    full = fit(config, tmp_path / "full", overrides, total)

    crashed = build(config, tmp_path / "crashed", overrides, total)
    # checkpoint every step (saved before the crash callback runs), as a long job with frequent checkpoints would
    crashed.trainer.callbacks += [ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True, every_n_train_steps=1),
                                  CrashAfter(stop)]
    with pytest.raises(RuntimeError, match="simulated crash"):
        crashed.trainer.fit(crashed.model, datamodule=crashed.datamodule)
    assert 0 < crashed.trainer.global_step < total

    resumed = fit(config, tmp_path / "resumed", overrides, total, ckpt_path=tmp_path / "ckpt" / "last.ckpt")
    assert resumed.trainer.global_step == full.trainer.global_step
    want, got = full.model.state_dict(), resumed.model.state_dict()
    assert want.keys() == got.keys()
    for key in want:
        torch.testing.assert_close(got[key], want[key], rtol=1e-5, atol=1e-6, msg=f"{config}: {key} differs")
    # callback_metrics hold what this process logged: compare what both runs logged after the crash point
    metrics_full, metrics_resumed = full.trainer.callback_metrics, resumed.trainer.callback_metrics
    assert metrics_full.keys() & metrics_resumed.keys(), "the resumed run logged none of the full run's metrics"
    for key in metrics_full.keys() & metrics_resumed.keys():
        torch.testing.assert_close(metrics_resumed[key], metrics_full[key], rtol=1e-5, atol=1e-6,
                                   msg=f"{config}: metric {key} differs")
