"""Sets simulated on the fly from a :class:`~lightning_papers.methods.pairs.simulators.SetSimulator`, banks of
pre-aggregated embeddings, fixed validation sets per N, and the user's own sets from NPZ files.

The datamodule drives the two PAIRS stages (arXiv 2605.07972 §2) inside one ``fit``:

* epochs ``< stage1_epochs`` of the module: fresh simulated sets with N cycling through ``train_set_sizes``
  (default {1, 2}), one N per batch;
* from epoch ``stage1_epochs`` on: a bank of (θ, z, log N) triples, built once with the module's frozen
  encoder at ``stage2_set_sizes`` (no gradients, chunked), then sampled with replacement. This needs
  ``trainer.reload_dataloaders_every_n_epochs=1`` so the loader is rebuilt at the switch.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from lightning.pytorch import LightningDataModule
from torch.utils.data import DataLoader, Dataset, RandomSampler, TensorDataset

from lightning_papers.methods.pairs.data import EmbeddingBank, SimulatedSetStream, check_sizes, pre_aggregate
from lightning_papers.methods.pairs.encoder import DeepSetEncoder
from lightning_papers.methods.pairs.simulators import SetSimulator, simulate

__all__ = ["EmbeddingBank", "NPZSets", "SimulatedSetStream", "SimulatedSetsDataModule", "pre_aggregate"]


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


class SimulatedSetsDataModule(LightningDataModule):
    """Training, validation and prediction data for set-based posterior estimation (PAIRS two-stage schedule).

    Args:
        simulator: Any :class:`SetSimulator`, named by ``class_path`` in a config.
        train_set_sizes: Stage-1 set sizes, cycled one per batch (PAIRS §2: {1, 2}).
        batch_size: Stage-1 sets per batch.
        batches_per_epoch: Stage-1 batches per epoch (fresh simulations each time).
        stage2_set_sizes: Set sizes of the stage-2 bank (the deployment N, or a range of N).
        stage2_num_sets: Number of sets in the stage-2 bank, split evenly over ``stage2_set_sizes``.
        stage2_batch_size: Bank triples per stage-2 batch.
        stage2_batches_per_epoch: Stage-2 batches per epoch, drawn with replacement from the bank.
        val_set_sizes: One fixed validation set of ``val_num_sets`` sets per N.
        val_num_sets: Sets per validation N.
        chunk_elements: Elements per encoder call when pre-aggregating or embedding large sets.
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
        stage2_batch_size: int = 256,
        stage2_batches_per_epoch: int = 500,
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
                        ("stage2_num_sets", stage2_num_sets), ("stage2_batch_size", stage2_batch_size),
                        ("stage2_batches_per_epoch", stage2_batches_per_epoch),
                        ("val_num_sets", val_num_sets), ("chunk_elements", chunk_elements)]:  # fmt: skip
            if v < 1:
                raise ValueError(f"{name} must be >= 1, got {v}")
        self.batch_size, self.batches_per_epoch = batch_size, batches_per_epoch
        self.stage2_num_sets, self.stage2_batch_size = stage2_num_sets, stage2_batch_size
        self.stage2_batches_per_epoch = stage2_batches_per_epoch
        self.val_num_sets, self.chunk_elements = val_num_sets, chunk_elements
        self.predict_path, self.seed = predict_path, seed
        self.stream = SimulatedSetStream(simulator, self.train_set_sizes, batch_size, batches_per_epoch, seed)
        self.bank: EmbeddingBank | None = None
        self.val_data: list[TensorDataset] = []

    def setup(self, stage: str) -> None:
        if stage in ("fit", "validate") and not self.val_data:
            gen = torch.Generator().manual_seed(self.seed + 7919)
            for n in self.val_set_sizes:
                self.val_data.append(TensorDataset(*simulate(self.simulator, self.val_num_sets, n, gen)))

    def _stage(self) -> int:
        module = self.trainer.lightning_module if self.trainer is not None else None
        return module.stage_at_epoch(self.trainer.current_epoch) if hasattr(module, "stage_at_epoch") else 1

    def build_bank(self, encoder: DeepSetEncoder) -> EmbeddingBank:
        """Pre-aggregate the stage-2 bank with ``encoder`` (once; later calls return the stored bank)."""
        if self.bank is None:
            gen = torch.Generator().manual_seed(self.seed + 104729)
            self.bank = pre_aggregate(
                encoder, self.simulator, self.stage2_num_sets, self.stage2_set_sizes, gen, self.chunk_elements
            )
        return self.bank

    def train_dataloader(self) -> DataLoader:
        if self._stage() == 1:
            return DataLoader(self.stream, batch_size=None)
        bank = self.build_bank(self.trainer.lightning_module.encoder)
        self.trainer.lightning_module.on_bank_built(bank)
        gen = torch.Generator().manual_seed(self.seed + self.trainer.current_epoch)
        num = self.stage2_batch_size * self.stage2_batches_per_epoch
        sampler = RandomSampler(bank.dataset(), replacement=True, num_samples=num, generator=gen)
        return DataLoader(bank.dataset(), batch_size=self.stage2_batch_size, sampler=sampler)

    def val_dataloader(self) -> list[DataLoader]:
        return [DataLoader(d, batch_size=self.val_num_sets) for d in self.val_data]

    def predict_dataloader(self) -> DataLoader:
        if self.predict_path is None:
            raise ValueError("predict needs data.predict_path: an NPZ file of sets (see NPZSets)")
        return DataLoader(NPZSets(self.predict_path, self.simulator.x_dim), batch_size=None)
