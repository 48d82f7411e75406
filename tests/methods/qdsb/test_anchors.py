"""Anchor quantisation: valid cells and weights, nested farthest-first covering radii, k-means never worse."""

from __future__ import annotations

import pytest
import torch

from lightning_papers.datamodules.point_clouds import sample_toy
from lightning_papers.methods.qdsb.anchors import farthest_first, kmeans, nearest, quantize


def _cloud(n: int = 3000, seed: int = 0) -> torch.Tensor:
    return sample_toy("moons", n, torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("method", ["farthest_first", "kmeans"])
def test_weights_sum_to_one_and_no_cell_is_empty(method: str) -> None:
    x = _cloud()
    q = quantize(x, 64, method, n_restarts=2, generator=torch.Generator().manual_seed(1))
    k = q.anchors.shape[0]
    counts = torch.bincount(q.cells, minlength=k)
    assert (counts > 0).all()
    assert float(q.weights.sum()) == pytest.approx(1.0, abs=1e-12)
    torch.testing.assert_close(q.weights, counts.double() / x.shape[0])
    # every point sits in the cell of its nearest anchor (brute force)
    brute = torch.cdist(x.double(), q.anchors.double()).argmin(1)
    d_own = ((x - q.anchors[q.cells]) ** 2).sum(1)
    d_best = ((x - q.anchors[brute]) ** 2).sum(1)
    torch.testing.assert_close(d_own, d_best, atol=1e-4, rtol=0)
    assert q.radius == pytest.approx(float(d_own.max().sqrt()), rel=1e-5)


def test_farthest_first_anchors_are_data_points_and_distinct() -> None:
    x = _cloud()
    idx, cells, _ = farthest_first(x, 50, generator=torch.Generator().manual_seed(0))
    assert idx.unique().numel() == 50
    assert (cells[idx] == torch.arange(50)).all()  # each anchor is in its own cell


def test_covering_radius_does_not_grow_with_k() -> None:
    x = _cloud()
    radii = []
    for k in (1, 2, 4, 8, 16, 32, 64, 128, 256):
        q = quantize(x, k, n_restarts=3, generator=torch.Generator().manual_seed(7))
        radii.append(q.radius)
    assert all(b <= a + 1e-6 for a, b in zip(radii, radii[1:], strict=False)), radii
    assert radii[-1] < 0.25 * radii[0]


def test_farthest_first_is_a_two_approximation_on_a_grid() -> None:
    # 16 x 16 unit grid: the optimal 4-center radius is the half-diagonal of an 8 x 8 block, sqrt(2) * 3.5.
    g = torch.stack(torch.meshgrid(torch.arange(16.0), torch.arange(16.0), indexing="ij"), -1).reshape(-1, 2)
    q = quantize(g, 4, n_restarts=5, generator=torch.Generator().manual_seed(0))
    assert q.radius <= 2 * 3.5 * 2**0.5 + 1e-6


def test_kmeans_does_not_increase_the_quantisation_error() -> None:
    x = _cloud()
    gen = torch.Generator().manual_seed(3)
    idx, cells, sq = farthest_first(x, 32, generator=gen)
    centers, km_cells = kmeans(x, 32, generator=torch.Generator().manual_seed(3))
    sse_ff = float(sq.sum())
    sse_km = float(((x - centers[km_cells]) ** 2).sum())
    assert sse_km < sse_ff


def test_duplicate_points_leave_no_empty_cell() -> None:
    x = torch.tensor([[0.0, 0.0]] * 10 + [[1.0, 1.0]] * 10)
    q = quantize(x, 5, generator=torch.Generator().manual_seed(0))
    assert q.anchors.shape[0] == 2  # only two distinct locations exist
    assert (torch.bincount(q.cells) == 10).all()


def test_nearest_chunks_agree_with_one_block() -> None:
    x, a = torch.randn(1000, 3), torch.randn(17, 3)
    i1, d1 = nearest(x, a, chunk=64)
    i2, d2 = nearest(x, a)
    assert torch.equal(i1, i2)
    torch.testing.assert_close(d1, d2)


@pytest.mark.parametrize(
    ("x", "match"),
    [
        (torch.tensor([[0.0, float("nan")], [1.0, 1.0]]), "NaN or inf"),
        (torch.zeros(5), "shape"),
        (torch.zeros(5, 2, dtype=torch.long), "floating-point"),
    ],
)
def test_bad_points_raise(x: torch.Tensor, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        quantize(x, 2)


def test_bad_arguments_raise() -> None:
    x = _cloud(100)
    with pytest.raises(ValueError, match="k .* must be >= 1"):
        quantize(x, 0)
    with pytest.raises(ValueError, match="anchors must be"):
        quantize(x, 4, method="random")
