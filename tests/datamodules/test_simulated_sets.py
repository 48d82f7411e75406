"""Simulated-set data: the stream's set sizes and step seeding (resumable at any step), the stage-2 sets and their
bank, NPZ user sets, and clear errors for bad arguments."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from lightning_papers.datamodules.set_simulators import (
    GaussianSharedLocation,
    MultivariateGaussianSharedLocation,
    simulate_in_chunks,
)
from lightning_papers.datamodules.simulated_sets import NPZSets, SimulatedSetsDataModule, SimulatedSetStream
from lightning_papers.methods.pairs.bank import pre_aggregate
from lightning_papers.methods.pairs.encoder import DeepSetEncoder, embed_sets


def test_stream_cycles_set_sizes_and_is_reproducible_but_fresh_each_pass() -> None:
    stream = SimulatedSetStream(GaussianSharedLocation(), [1, 2, 5], batch_size=4, num_batches=7, seed=3)
    first = list(stream)
    assert len(stream) == 7 and len(first) == 7
    assert [b["x"].shape[1] for b in first] == [1, 2, 5, 1, 2, 5, 1]
    assert all(b["theta"].shape == (4, 1) and b["x"].dtype == torch.float32 for b in first)
    second = list(stream)
    assert not torch.equal(first[0]["x"], second[0]["x"])  # a new pass draws new sets
    again = list(SimulatedSetStream(GaussianSharedLocation(), [1, 2, 5], 4, 7, seed=3))
    assert torch.equal(first[3]["x"], again[3]["x"])  # same seed, same pass -> same data
    other_rank = list(SimulatedSetStream(GaussianSharedLocation(), [1, 2, 5], 4, 7, seed=3, rank=1))
    assert not torch.equal(first[0]["x"], other_rank[0]["x"])  # DDP ranks draw different sets


def test_stream_resumes_at_any_step_from_its_position() -> None:
    """A pass that starts at step 10 (a resumed run: the trainer's global_step) yields exactly the batches 10, 11, ...
    of an uninterrupted stream, with the same set sizes; this is what makes a mid-epoch resume exact."""
    full = SimulatedSetStream(GaussianSharedLocation(), [1, 2], batch_size=5, num_batches=8, seed=1)
    uninterrupted = list(full) + list(full)  # two epochs: steps 0..15
    resumed = list(SimulatedSetStream(GaussianSharedLocation(), [1, 2], 5, 8, seed=1, position=lambda: 10))
    assert len(resumed) == 8
    for a, b in zip(uninterrupted[10:], resumed):
        assert torch.equal(a["x"], b["x"]) and torch.equal(a["theta"], b["theta"])


def test_pre_aggregate_splits_sizes_and_embeds_the_simulated_sets() -> None:
    sim, enc = MultivariateGaussianSharedLocation(2), DeepSetEncoder(2, embed_dim=5)
    bank = pre_aggregate(enc, simulate_in_chunks(sim, 11, [3, 40], seed=0, chunk_elements=50), chunk_elements=50)
    assert len(bank) == 11 and bank.z.shape == (11, 5) and bank.theta.shape == (11, 2)
    assert (bank.log_n == math.log(3)).sum() == 6 and (bank.log_n == math.log(40)).sum() == 5
    # the same generator reproduces the sets, and their embeddings are the bank's
    gen = torch.Generator().manual_seed(0)
    thetas, zs = [], []
    for n, count in [(3, 6), (40, 5)]:
        for start in range(0, count, max(1, 50 // n)):
            s = min(max(1, 50 // n), count - start)
            theta, x = sim.sample(s, n, gen)
            thetas.append(theta)
            zs.append(embed_sets(enc, x))
    torch.testing.assert_close(bank.theta, torch.cat(thetas))
    torch.testing.assert_close(bank.z, torch.cat(zs), atol=1e-6, rtol=1e-5)
    with pytest.raises(ValueError, match="at least the number of set sizes"):
        next(simulate_in_chunks(sim, 1, [3, 40], seed=0))


def test_npz_sets_layouts(tmp_path: Path) -> None:
    same = tmp_path / "same.npz"
    np.savez(same, x=np.random.randn(3, 8), theta=np.zeros((3, 1)))
    ds = NPZSets(same, x_dim=1)
    assert len(ds) == 3 and ds[0]["x"].shape == (8, 1) and ds[2]["theta"].shape == (1,)
    ragged = tmp_path / "ragged.npz"
    np.savez(ragged, x_0=np.random.randn(5, 2), x_1=np.random.randn(1000, 2), x_10=np.random.randn(2, 2))
    ds = NPZSets(ragged, x_dim=2)
    assert [ds[i]["x"].shape[0] for i in range(3)] == [5, 1000, 2]  # x_10 sorts after x_1 numerically
    assert "theta" not in ds[0]


def test_npz_sets_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no NPZ file"):
        NPZSets(tmp_path / "missing.npz", 1)
    wrong = tmp_path / "wrong.npz"
    np.savez(wrong, x=np.random.randn(2, 4, 3))
    with pytest.raises(ValueError, match=r"set 0 .* has shape \(4, 3\), expected \[N >= 1, 1\]"):
        NPZSets(wrong, 1)
    empty = tmp_path / "empty.npz"
    np.savez(empty, y=np.zeros(3))
    with pytest.raises(ValueError, match="neither an array 'x'"):
        NPZSets(empty, 1)


def test_datamodule_validation_sets_and_errors() -> None:
    dm = SimulatedSetsDataModule(GaussianSharedLocation(), val_set_sizes=[1, 30], val_num_sets=9)
    dm.setup("fit")
    loaders = dm.val_dataloader()
    theta, x = next(iter(loaders[1]))
    assert len(loaders) == 2 and theta.shape == (9, 1) and x.shape == (9, 30, 1)
    with pytest.raises(ValueError, match="simulator must be a SetSimulator, got str"):
        SimulatedSetsDataModule("gaussian")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"stage2_set_sizes must be a non-empty list of set sizes >= 1, got \[0\]"):
        SimulatedSetsDataModule(GaussianSharedLocation(), stage2_set_sizes=[0])
    with pytest.raises(ValueError, match="stage2_num_sets must be >= 1, got 0"):
        SimulatedSetsDataModule(GaussianSharedLocation(), stage2_num_sets=0)
    with pytest.raises(ValueError, match=r"stage2_num_sets \(1\) must be at least the number of .* \(2\)"):
        SimulatedSetsDataModule(GaussianSharedLocation(), stage2_num_sets=1, stage2_set_sizes=[3, 4])
    with pytest.raises(ValueError, match="predict needs data.predict_path"):
        dm.predict_dataloader()


def test_stage2_sets_are_fixed_chunks_split_over_the_sizes() -> None:
    """The stage-2 sets: ``stage2_num_sets`` sets split evenly over the sizes, chunks of at most ``chunk_elements``
    elements, and the very same sets on every call (the bank of a resumed or DDP run is the same bank)."""
    dm = SimulatedSetsDataModule(GaussianSharedLocation(), stage2_set_sizes=[10, 100], stage2_num_sets=7,
                                 chunk_elements=250)  # fmt: skip
    chunks = list(dm.stage2_sets())
    assert [tuple(x.shape) for _, x in chunks] == [(4, 10, 1), (2, 100, 1), (1, 100, 1)]
    assert all(x.shape[0] * x.shape[1] <= 250 for _, x in chunks)
    for (t1, x1), (t2, x2) in zip(chunks, dm.stage2_sets()):
        assert torch.equal(t1, t2) and torch.equal(x1, x2)
