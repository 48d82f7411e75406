"""Simulated sets for PAIRS in plain torch: a stream of freshly simulated sets with N cycling through given sizes,
and the stage-2 bank of pre-aggregated (θ, z, log N) triples (arXiv 2605.07972 §2; research note §2).

:class:`~lightning_papers.datamodules.simulated_sets.SimulatedSetsDataModule` serves these to Lightning.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from torch.utils.data import IterableDataset, TensorDataset

from lightning_papers.methods.pairs.encoder import DeepSetEncoder, embed_sets
from lightning_papers.methods.pairs.simulators import SetSimulator, simulate


def check_sizes(sizes: Sequence[int], name: str) -> list[int]:
    """The set sizes as ints, or ``ValueError`` naming ``name`` unless they are a non-empty list of sizes >= 1."""
    sizes = [int(n) for n in sizes]
    if not sizes or min(sizes) < 1:
        raise ValueError(f"{name} must be a non-empty list of set sizes >= 1, got {sizes}")
    return sizes


class SimulatedSetStream(IterableDataset):
    """``num_batches`` freshly simulated batches ``{"theta": [B, p], "x": [B, N, d]}``; N cycles through ``set_sizes``.

    Every pass draws new data (the simulator is the dataset). Each pass reseeds from ``seed`` and a pass
    counter, so runs are reproducible but epochs differ.
    """

    def __init__(
        self, simulator: SetSimulator, set_sizes: Sequence[int], batch_size: int, num_batches: int, seed: int = 0
    ) -> None:
        self.simulator = simulator
        self.set_sizes = check_sizes(set_sizes, "set_sizes")
        if batch_size < 1 or num_batches < 1:
            raise ValueError(f"batch_size and num_batches must be >= 1, got {batch_size} and {num_batches}")
        self.batch_size, self.num_batches, self.seed = batch_size, num_batches, seed
        self._passes = 0

    def __len__(self) -> int:
        return self.num_batches

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + self._passes)
        self._passes += 1
        for i in range(self.num_batches):
            n = self.set_sizes[i % len(self.set_sizes)]
            theta, x = simulate(self.simulator, self.batch_size, n, gen)
            yield {"theta": theta, "x": x}


@dataclass
class EmbeddingBank:
    """Stored stage-2 training triples: θ [M, p], pooled embedding z [M, k], log N [M, 1]."""

    theta: torch.Tensor
    z: torch.Tensor
    log_n: torch.Tensor

    def __len__(self) -> int:
        return self.theta.shape[0]

    def dataset(self) -> TensorDataset:
        return TensorDataset(self.theta, self.z, self.log_n)


def pre_aggregate(
    encoder: DeepSetEncoder,
    simulator: SetSimulator,
    num_sets: int,
    set_sizes: Sequence[int],
    generator: torch.Generator | None = None,
    chunk_elements: int = 2**17,
) -> EmbeddingBank:
    """Simulate ``num_sets`` sets split evenly over ``set_sizes`` and embed each once with the frozen encoder.

    This is the whole of stage 2's encoder cost (PAIRS §2): one no-grad forward pass per element, in chunks of
    ``chunk_elements`` elements; the head is then trained on the bank alone.
    """
    sizes = check_sizes(set_sizes, "set_sizes")
    if num_sets < len(sizes):
        raise ValueError(f"num_sets ({num_sets}) must be at least the number of set sizes ({len(sizes)})")
    device = next(encoder.parameters()).device
    was_training = encoder.training
    encoder.eval()
    thetas, zs, log_ns = [], [], []
    for i, n in enumerate(sizes):
        todo = num_sets // len(sizes) + (1 if i < num_sets % len(sizes) else 0)
        block = max(1, chunk_elements // n)
        while todo > 0:
            s = min(block, todo)
            theta, x = simulate(simulator, s, n, generator)
            zs.append(embed_sets(encoder, x.to(device), chunk_elements).cpu())
            thetas.append(theta)
            log_ns.append(torch.full((s, 1), math.log(n)))
            todo -= s
    encoder.train(was_training)
    return EmbeddingBank(torch.cat(thetas), torch.cat(zs), torch.cat(log_ns))
