"""Test-wide settings: W&B off (no network, no files), a fixed seed, a headless matplotlib, few threads."""

from __future__ import annotations

import os

os.environ.setdefault("MPLBACKEND", "Agg")
os.environ["WANDB_MODE"] = "disabled"
os.environ.setdefault("WANDB_SILENT", "true")

import pytest  # noqa: E402
import torch  # noqa: E402
from lightning.pytorch import seed_everything  # noqa: E402


@pytest.fixture(autouse=True)
def _seed_and_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Seed every test and restore W&B's mode if a test changed it."""
    monkeypatch.setenv("WANDB_MODE", "disabled")
    seed_everything(0, workers=True, verbose=False)
    torch.set_num_threads(1)  # small ops: one thread avoids oversubscription on shared 2-core CI machines
