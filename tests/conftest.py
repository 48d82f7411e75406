"""Test-wide settings: W&B off (no network, no files), a fixed seed, a headless matplotlib, few threads."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator

os.environ.setdefault("MPLBACKEND", "Agg")
os.environ["WANDB_MODE"] = "disabled"
os.environ.setdefault("WANDB_SILENT", "true")

import pytest  # noqa: E402
import torch  # noqa: E402
from lightning.pytorch import seed_everything  # noqa: E402


@pytest.fixture(autouse=True)
def _seed_and_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Seed every test, restore W&B's mode if a test changed it, and close any W&B run a test left open.

    A config's ``WandbLogger(offline=True)`` asks W&B for offline mode explicitly, so a CLI test can start a real
    run; left open, the next ``WandbLogger`` would silently attach to it instead of starting its own.
    """
    monkeypatch.setenv("WANDB_MODE", "disabled")
    seed_everything(0, workers=True, verbose=False)
    torch.set_num_threads(1)  # small ops: one thread avoids oversubscription on shared 2-core CI machines
    yield
    wandb = sys.modules.get("wandb")  # only if a test imported it: keep the other tests light
    if wandb is not None and wandb.run is not None:
        wandb.finish()
