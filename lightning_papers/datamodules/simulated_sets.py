"""Sets simulated on the fly from a :class:`~lightning_papers.datamodules.set_simulators.SetSimulator`, fixed
validation sets per N, and the user's own sets from NPZ files.

The datamodule only serves simulated sets; it knows nothing of the model that trains on them:

* ``train_dataloader``: a stream of fresh batches ``{"theta": [B, p], "x": [B, N, d]}`` with N cycling through
  ``train_set_sizes`` (PAIRS stage 1, arXiv 2605.07972 §2: {1, 2}). The batch of optimizer step ``s`` is drawn from
  a generator seeded by ``(seed, rank, s)``, and the stream starts at the trainer's ``global_step``: a run resumed
  from a checkpoint taken at any step continues the very same stream, and DDP ranks draw different sets;
* ``stage2_sets``: the raw sets of a stage-2 bank (``stage2_num_sets`` sets over ``stage2_set_sizes``, in chunks of
  at most ``chunk_elements`` elements, always the same for a given ``seed``), for a model that pre-aggregates them;
* ``val_dataloader``: one fixed set of ``val_num_sets`` sets per N in ``val_set_sizes``;
* ``predict_dataloader``: the user's own sets from an NPZ file (:class:`NPZSets`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from lightning.pytorch import LightningDataModule
from torch.utils.data import DataLoader, Dataset, IterableDataset, TensorDataset

from lightning_papers.datamodules.set_simulators import (
    SetSimulator,
    check_sizes,
    derived_seed,
    simulate,
    simulate_in_chunks,
)


class SimulatedSetStream(IterableDataset):
    """``num_batches`` freshly simulated batches ``{"theta": [B, p], "x": [B, N, d]}`` per pass; N cycles through
    ``set_sizes`` by step.

    The batch of (absolute) step ``s`` has N = ``set_sizes[s % len(set_sizes)]`` and is drawn from a generator
    seeded by ``derived_seed(seed, rank, s)``, so any batch can be regenerated from its step alone. A pass starts at
    ``position()`` when given (the datamodule passes the trainer's ``global_step``, which makes a resumed run
    continue where it stopped); without it, pass ``k`` starts at step ``k * num_batches`` (runs are reproducible,
    passes differ).
    """

    def __init__(
        self,
        simulator: SetSimulator,
        set_sizes: Sequence[int],
        batch_size: int,
        num_batches: int,
        seed: int = 0,
        rank: int = 0,
        position: Callable[[], int] | None = None,
    ) -> None:
        self.simulator = simulator
        self.set_sizes = check_sizes(set_sizes, "set_sizes")
        if batch_size < 1 or num_batches < 1:
            raise ValueError(f"batch_size and num_batches must be >= 1, got {batch_size} and {num_batches}")
        self.batch_size, self.num_batches, self.seed, self.rank = batch_size, num_batches, seed, rank
        self.position = position
        self.passes = 0

    def __len__(self) -> int:
        return self.num_batches

    def batch(self, step: int) -> dict[str, torch.Tensor]:
        """The batch of absolute step ``step``."""
        n = self.set_sizes[step % len(self.set_sizes)]
        gen = torch.Generator().manual_seed(derived_seed(self.seed, self.rank, step))
        theta, x = simulate(self.simulator, self.batch_size, n, gen)
        return {"theta": theta, "x": x}

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        start = self.position() if self.position is not None else self.passes * self.num_batches
        self.passes += 1
        for step in range(start, start + self.num_batches):
            yield self.batch(step)


class NPZSets(Dataset):
    """The user's own sets from an ``.npz`` file, one item ``{"x": [N, d]}`` (plus ``"theta"`` if stored) per set.

    Accepted layouts: an array ``x`` of shape [S, N, d] (or [S, N] for d = 1), or arrays ``x_0, x_1, ...`` of
    shapes [N_i, d] for sets of different sizes; optional ``theta`` [S, p] holds known parameters.
    """

    def __init__(self, path: str | Path, x_dim: int) -> None:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"no NPZ file at {str(path)!r}")
        with np.load(path) as data:
            if "x" in data:
                x = data["x"]
                sets = list(x[..., None] if x.ndim == 2 else x)
            else:
                keys = sorted((k for k in data if k.startswith("x_")), key=lambda k: int(k[2:]))
                sets = [data[k] if data[k].ndim == 2 else data[k][:, None] for k in keys]
            theta = data["theta"] if "theta" in data else None
        if not sets:
            raise ValueError(f"{path} has neither an array 'x' nor arrays 'x_0', 'x_1', ...")
        self.sets = [torch.as_tensor(s, dtype=torch.float32) for s in sets]
        for i, s in enumerate(self.sets):
            if s.ndim != 2 or s.shape[1] != x_dim or s.shape[0] < 1:
                raise ValueError(f"set {i} in {path} has shape {tuple(s.shape)}, expected [N >= 1, {x_dim}]")
        self.theta = None if theta is None else torch.as_tensor(theta, dtype=torch.float32).reshape(len(sets), -1)

    def __len__(self) -> int:
        return len(self.sets)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        item = {"x": self.sets[i]}
        if self.theta is not None:
            item["theta"] = self.theta[i]
        return item


class StepSeededLoader(DataLoader):
    """The training loader of a :class:`SimulatedSetStream`: resumable without any saved state, because the stream
    regenerates the batch of every step from the step itself and starts each pass at the trainer's ``global_step``.

    ``state_dict``/``load_state_dict`` tell Lightning so (it warns about mid-epoch resumes of loaders without them).
    """

    def state_dict(self) -> dict[str, int]:
        """Nothing to restore: the position is the trainer's ``global_step`` (kept for inspection only)."""
        return {"seed": self.dataset.seed, "rank": self.dataset.rank}

    def load_state_dict(self, state_dict: dict[str, int]) -> None:
        """No-op (see :meth:`state_dict`)."""


class SimulatedSetsDataModule(LightningDataModule):
    """Simulated sets for set-based posterior estimation: a training stream, the raw sets of a stage-2 bank,
    fixed validation sets per N, and the user's own sets for ``predict``.

    Args:
        simulator: Any :class:`~lightning_papers.datamodules.set_simulators.SetSimulator`, named by ``class_path``
            in a config.
        train_set_sizes: Set sizes of the training stream, cycled one per step (PAIRS §2: {1, 2}).
        batch_size: Sets per training batch.
        batches_per_epoch: Training batches per epoch (fresh simulations each time).
        stage2_set_sizes: Set sizes of the stage-2 bank's sets (the deployment N, or a range of N).
        stage2_num_sets: Number of sets for the stage-2 bank, split evenly over ``stage2_set_sizes``.
        val_set_sizes: One fixed validation set of ``val_num_sets`` sets per N.
        val_num_sets: Sets per validation N.
        chunk_elements: Largest number of elements per chunk of stage-2 sets (the model embeds one chunk at a time).
        predict_path: Optional NPZ file of the user's own sets for ``predict`` (see :class:`NPZSets`).
        seed: Seed of all simulations.
    """

    def __init__(
        self,
        simulator: SetSimulator,
        train_set_sizes: list[int] = [1, 2],  # noqa: B006 (jsonargparse needs a plain list default)
        batch_size: int = 256,
        batches_per_epoch: int = 200,
        stage2_set_sizes: list[int] = [1000],  # noqa: B006
        stage2_num_sets: int = 20_000,
        val_set_sizes: list[int] = [1, 10, 100, 1000],  # noqa: B006
        val_num_sets: int = 200,
        chunk_elements: int = 2**17,
        predict_path: str | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if not isinstance(simulator, SetSimulator):
            raise ValueError(f"simulator must be a SetSimulator, got {type(simulator).__name__}")
        self.simulator = simulator
        self.train_set_sizes = check_sizes(train_set_sizes, "train_set_sizes")
        self.stage2_set_sizes = check_sizes(stage2_set_sizes, "stage2_set_sizes")
        self.val_set_sizes = check_sizes(val_set_sizes, "val_set_sizes")
        for name, v in [("batch_size", batch_size), ("batches_per_epoch", batches_per_epoch),
                        ("stage2_num_sets", stage2_num_sets), ("val_num_sets", val_num_sets),
                        ("chunk_elements", chunk_elements)]:  # fmt: skip
            if v < 1:
                raise ValueError(f"{name} must be >= 1, got {v}")
        if stage2_num_sets < len(self.stage2_set_sizes):
            raise ValueError(f"stage2_num_sets ({stage2_num_sets}) must be at least the number of stage2_set_sizes "
                             f"({len(self.stage2_set_sizes)})")  # fmt: skip
        self.batch_size, self.batches_per_epoch = batch_size, batches_per_epoch
        self.stage2_num_sets = stage2_num_sets
        self.val_num_sets, self.chunk_elements = val_num_sets, chunk_elements
        self.predict_path, self.seed = predict_path, seed
        self.stream = SimulatedSetStream(simulator, self.train_set_sizes, batch_size, batches_per_epoch, seed)
        self.val_data: list[TensorDataset] = []

    def setup(self, stage: str) -> None:
        if stage in ("fit", "validate") and not self.val_data:
            gen = torch.Generator().manual_seed(self.seed + 7919)
            for n in self.val_set_sizes:
                self.val_data.append(TensorDataset(*simulate(self.simulator, self.val_num_sets, n, gen)))

    def global_step(self) -> int:
        """The attached trainer's optimizer step (0 without a trainer): where the training stream starts a pass."""
        return 0 if self.trainer is None else int(self.trainer.global_step)

    def train_dataloader(self) -> StepSeededLoader:
        rank = 0 if self.trainer is None else int(self.trainer.global_rank)
        self.stream = SimulatedSetStream(self.simulator, self.train_set_sizes, self.batch_size,
                                         self.batches_per_epoch, self.seed, rank, self.global_step)  # fmt: skip
        return StepSeededLoader(self.stream, batch_size=None)

    def stage2_sets(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The raw stage-2 sets, ``(theta [s, p], x [s, N, d])`` chunks of at most ``chunk_elements`` elements.

        The same sets on every call and every DDP rank (seeded by ``seed`` alone).
        """
        return simulate_in_chunks(self.simulator, self.stage2_num_sets, self.stage2_set_sizes, self.seed + 104729,
                                  self.chunk_elements)  # fmt: skip

    def val_dataloader(self) -> list[DataLoader]:
        return [DataLoader(d, batch_size=self.val_num_sets) for d in self.val_data]

    def predict_dataloader(self) -> DataLoader:
        if self.predict_path is None:
            raise ValueError("predict needs data.predict_path: an NPZ file of sets (see NPZSets)")
        return DataLoader(NPZSets(self.predict_path, self.simulator.x_dim), batch_size=None)
