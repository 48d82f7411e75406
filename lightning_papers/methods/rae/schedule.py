"""What both RAE modules share: the learning-rate schedule (linear warm-up, then cosine decay to a floor: RAE v1 §4
and RAEv2 §3, 2e-4 decaying to 2e-5), plain hyper-parameters in checkpoints, and generators seeded by position."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import numpy as np
import torch


def position_generator(seed: int, *position: int) -> torch.Generator:
    """A CPU generator seeded by ``(seed, *position)`` only (e.g. step, rank, stream): a run resumed at any step
    draws what an uninterrupted run draws there."""
    entropy = [seed % 2**32, *(int(p) for p in position)]
    return torch.Generator(device="cpu").manual_seed(int(np.random.SeedSequence(entropy).generate_state(1)[0]))


def plain_hparams(hparams: dict) -> None:
    """Replace dataclass hyper-parameters by dicts, so a checkpoint loads with ``torch.load(weights_only=True)``
    (LightningCLI already passes dicts; a module built in Python gets the dataclasses themselves)."""
    for key, value in list(hparams.items()):
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            hparams[key] = dataclasses.asdict(value)


def check_schedule(lr: float, lr_min: float, warmup_steps: int) -> None:
    """Raise naming the bad value unless 0 < lr_min <= lr and warmup_steps >= 0."""
    if not 0 < lr_min <= lr:
        raise ValueError(f"need 0 < lr_min <= lr, got lr_min={lr_min}, lr={lr}")
    if warmup_steps < 0:
        raise ValueError(f"warmup_steps must be >= 0, got {warmup_steps}")


def warmup_cosine(optimizer: torch.optim.Optimizer, lr: float, lr_min: float, warmup_steps: int,
                  total_steps: int | Callable[[], int]) -> dict:  # fmt: skip
    """A per-step ``LambdaLR`` in Lightning's scheduler-dict form: ``lr * (s + 1) / warmup`` for the first
    ``warmup_steps`` steps, then cosine from ``lr`` to ``lr_min`` at ``total_steps``.

    ``total_steps`` may be a callable, evaluated at the first step past the warm-up: pass
    ``lambda: trainer.estimated_stepping_batches`` from ``configure_optimizers``. Asking Lightning for it there
    directly loads the training dataloader before a resumed fit restores its state, so a run resumed mid-epoch
    would replay the epoch from its start.
    """
    check_schedule(lr, lr_min, warmup_steps)
    floor = lr_min / lr
    total: list[int] = [] if callable(total_steps) else [max(1, int(total_steps))]

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        if step == warmup_steps:
            return 1.0  # the cosine's start: needs no total (LambdaLR calls this at construction when warmup = 0)
        if not total:
            total.append(max(1, int(total_steps())))  # type: ignore[operator]
        progress = min(1.0, (step - warmup_steps) / max(1, total[0] - warmup_steps))
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))

    return {"scheduler": torch.optim.lr_scheduler.LambdaLR(optimizer, factor), "interval": "step"}
