"""Exact resume for every method's debug config: stop at an arbitrary optimizer step (mid-epoch), resume with
``ckpt_path``, and get the same final weights and metrics as an uninterrupted run.

Each case shrinks its debug config so three short fits run in seconds, and stops at a step that is not an epoch
boundary (for PAIRS: in the middle of stage 2). GRASP's configs need a pretrained base model first; its
mid-epoch resume test lives in ``tests/methods/grasp/``.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.helpers.debug_configs import CASES, CONFIGS, fit


def test_every_debug_config_has_a_resume_case() -> None:
    debug = {str(p.relative_to(CONFIGS)) for p in CONFIGS.rglob("*debug*.yaml")}
    assert debug <= set(CASES), f"add a resume case for {sorted(debug - set(CASES))}"


@pytest.mark.parametrize("config", sorted(CASES))
def test_resume_mid_epoch_equals_uninterrupted(config: str, tmp_path: Path) -> None:
    overrides, stop, total = CASES[config]
    full = fit(config, tmp_path / "full", overrides, total)
    first = fit(config, tmp_path / "first", overrides, stop)
    assert first.trainer.global_step == stop
    ckpt = tmp_path / "stopped.ckpt"
    first.trainer.save_checkpoint(ckpt)
    resumed = fit(config, tmp_path / "resumed", overrides, total, ckpt_path=ckpt)
    assert resumed.trainer.global_step == full.trainer.global_step == total
    want, got = full.model.state_dict(), resumed.model.state_dict()
    assert want.keys() == got.keys()
    for key in want:
        torch.testing.assert_close(got[key], want[key], rtol=1e-5, atol=1e-6, msg=f"{config}: {key} differs")
    metrics_full, metrics_resumed = full.trainer.callback_metrics, resumed.trainer.callback_metrics
    for key in metrics_full.keys() & metrics_resumed.keys():
        torch.testing.assert_close(metrics_resumed[key], metrics_full[key], rtol=1e-5, atol=1e-6,
                                   msg=f"{config}: metric {key} differs")
