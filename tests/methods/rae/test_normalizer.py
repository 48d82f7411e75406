"""LatentStatistics: Welford/Chan statistics equal a two-pass float64 computation, also merged across shards/ranks."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from lightning_papers.methods.rae.normalizer import LatentStatistics

SHAPE = (3, 2, 2)
TIMEOUT = timedelta(seconds=300)


def data(n: int = 103, seed: int = 0) -> torch.Tensor:
    """Latents with a large offset and per-element scales (a naive sum-of-squares variance would lose digits)."""
    g = torch.Generator().manual_seed(seed)
    scale = torch.linspace(0.1, 5.0, 12).view(SHAPE)
    return (1e4 + scale * torch.randn(n, *SHAPE, generator=g, dtype=torch.float64)).float()


def two_pass(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    x = x.double()
    mean = x.sum(0) / len(x)
    return mean, ((x - mean) ** 2).sum(0) / len(x)


def fit(x: torch.Tensor, sizes: list[int]) -> LatentStatistics:
    s = LatentStatistics(SHAPE)
    for chunk in torch.split(x, sizes):
        s.update(chunk)
    return s


def test_batched_welford_equals_two_pass() -> None:
    x = data()
    s = fit(x, [1, 50, 7, 45])
    mean, var = two_pass(x)
    assert s.count == 103 and s.mean.dtype == s.var.dtype == torch.float64
    torch.testing.assert_close(s.mean, mean, rtol=1e-13, atol=0)
    torch.testing.assert_close(s.var, var, rtol=1e-10, atol=0)


def test_merge_of_two_shards_equals_one_pass() -> None:
    x = data()
    a, b = fit(x[:40], [40]), fit(x[40:], [10, 53])
    a.merge(b)
    mean, var = two_pass(x)
    torch.testing.assert_close(a.mean, mean, rtol=1e-13, atol=0)
    torch.testing.assert_close(a.var, var, rtol=1e-10, atol=0)
    empty = LatentStatistics(SHAPE)
    empty.merge(a)
    torch.testing.assert_close(empty.var, var, rtol=1e-10, atol=0)


def test_normalize_standardises_and_inverts() -> None:
    x = data()
    s = fit(x, [103])
    z = s.normalize(x)
    assert z.dtype == torch.float32
    torch.testing.assert_close(z.double().mean(0), torch.zeros(SHAPE, dtype=torch.float64), atol=2e-3, rtol=0)
    torch.testing.assert_close(z.double().var(0, unbiased=False), torch.ones(SHAPE, dtype=torch.float64), atol=2e-3,
                               rtol=0)  # fmt: skip
    torch.testing.assert_close(s.denormalize(z), x, rtol=1e-6, atol=0)


def test_save_load_and_errors(tmp_path: Path) -> None:
    s = fit(data(), [30, 73])
    s.save(tmp_path / "stats.pt")
    t = LatentStatistics.load(tmp_path / "stats.pt")
    assert t.count == s.count and torch.equal(t.mean, s.mean) and torch.equal(t.var, s.var)
    with pytest.raises(ValueError, match=r"\(2, 3, 2\)"):
        t.update(torch.zeros(2, 3, 2))
    with pytest.raises(ValueError, match="count = 0"):
        LatentStatistics(SHAPE).normalize(torch.zeros(1, *SHAPE))
    with pytest.raises(FileNotFoundError, match="nope.pt"):
        LatentStatistics.load(tmp_path / "nope.pt")
    with pytest.raises(ValueError, match=r"\(3, 2, 2\)"):
        LatentStatistics((4,)).merge(s)


def _rank_worker(rank: int, world: int, init_file: str, out_dir: str) -> None:
    """One gloo rank; ends with a barrier and destroys its group (a clean exit, as ``tests/helpers/ddp.py`` explains;
    that helper imports Lightning, which would triple the start-up time of each spawned worker)."""
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world,
                            timeout=TIMEOUT)  # fmt: skip
    try:
        x = data()
        shard = x[rank::world]
        s = fit(shard, [7, len(shard) - 7])  # each rank sees every world-th latent, in uneven batches
        s.merge_across_ranks()
        s.save(Path(out_dir) / f"rank{rank}.pt")
        dist.monitored_barrier(timeout=TIMEOUT)
    finally:
        dist.destroy_process_group()


@pytest.mark.ddp
def test_merge_across_two_gloo_ranks_equals_single_process(tmp_path: Path) -> None:
    mp.spawn(_rank_worker, args=(2, str(tmp_path / "pg"), str(tmp_path)), nprocs=2, join=True)
    r0, r1 = (LatentStatistics.load(tmp_path / f"rank{r}.pt") for r in (0, 1))
    assert r0.count == r1.count == 103
    assert torch.equal(r0.mean, r1.mean) and torch.equal(r0.m2, r1.m2)  # every rank ends with identical stats
    mean, var = two_pass(data())
    torch.testing.assert_close(r0.mean, mean, rtol=1e-13, atol=0)
    torch.testing.assert_close(r0.var, var, rtol=1e-10, atol=0)
