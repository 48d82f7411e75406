"""A training loader that only counts steps and resumes in the middle of an epoch.

For methods whose data live in the module or are drawn per step (point-cloud pairs, simulated tables, trajectories):
the batch is just the step's index in the epoch, and :class:`StepClock` saves how many were served, so a run resumed
from a mid-epoch checkpoint plays only the rest of that epoch.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset


class StepIndices(Dataset):
    """``n`` items, the integers ``0 .. n-1``: the batches of a loader that only counts steps."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> torch.Tensor:
        return torch.tensor(i)


class StepClock(DataLoader):
    """A ``DataLoader`` of ``len(dataset)`` dummy batches per epoch that resumes in the middle of an epoch.

    Lightning saves ``state_dict()`` of a training loader that has one in the checkpoint and calls
    ``load_state_dict`` before iterating again, so a run stopped after k of n steps plays the remaining n - k
    steps of that epoch on resume (a plain ``DataLoader`` would replay all n). Lightning fetches from a sized
    loader only when a step consumes the batch (no prefetch), so "served" equals "consumed". Extra keyword
    arguments go to ``DataLoader`` (Lightning re-creates the loader with a ``DistributedSampler`` under DDP).
    """

    def __init__(self, dataset: Dataset, **kwargs: Any) -> None:
        super().__init__(dataset, **kwargs)
        self.served = 0  # batches handed out in the current epoch
        self.skip = 0  # batches the next epoch's iterator skips (set by load_state_dict)

    @classmethod
    def of(cls, steps: int) -> StepClock:
        """A clock of ``steps`` batches of size 1 (the batch is the step's index in the epoch)."""
        return cls(StepIndices(steps), batch_size=1)

    def __iter__(self) -> Iterator[Any]:  # type: ignore[override]
        skip, self.skip = self.skip, 0
        self.served = skip
        for batch in itertools.islice(super().__iter__(), skip, None):
            self.served += 1
            yield batch

    def state_dict(self) -> dict[str, int]:
        return {"served": self.served}

    def load_state_dict(self, state: dict[str, int]) -> None:
        served = int(state["served"])
        self.served = served
        self.skip = served if 0 < served < len(self) else 0  # a finished epoch restarts from its beginning


def single_step_loader() -> DataLoader:
    """A loader of one dummy batch: validation/test of a method whose evaluation data live in the module."""
    return DataLoader(StepIndices(1), batch_size=1)
