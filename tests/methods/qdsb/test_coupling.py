"""Couplings: uniform lifted marginals, the QDSB cost gap against full and minibatch OT (ground truth: ``ot.emd``),
the Sinkhorn-anchor cross-covariance against the Gaussian closed form, exact expected costs, and clear errors."""

from __future__ import annotations

import ot
import pytest
import torch
from scipy import stats

from lightning_papers.datamodules.point_clouds import entropic_cross_covariance, sample_toy
from lightning_papers.methods.qdsb.coupling import (
    ExactOTCoupling,
    IndependentCoupling,
    MinibatchOTCoupling,
    QuantizedCoupling,
    build_coupling,
)


@pytest.fixture(scope="module")
def toy_2048() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return sample_toy("8gaussians", 2048, g), sample_toy("moons", 2048, g)


def _pair_cost(x0: torch.Tensor, x1: torch.Tensor, i0: torch.Tensor, i1: torch.Tensor) -> float:
    return float(((x0[i0].double() - x1[i1].double()) ** 2).sum(1).mean())


@pytest.mark.parametrize("anchors", ["farthest_first", "kmeans"])
def test_lifted_marginals_are_uniform(anchors: str) -> None:
    g = torch.Generator().manual_seed(1)
    x0, x1 = sample_toy("8gaussians", 300, g), sample_toy("moons", 200, g)
    c = QuantizedCoupling(n_anchors=12, anchors=anchors, ot="exact", seed=3).fit(x0, x1)
    n_draws = 300_000
    i0, i1 = c.sample(n_draws)
    for idx, n in ((i0, 300), (i1, 200)):
        counts = torch.bincount(idx, minlength=n).double().numpy()
        p = stats.chisquare(counts).pvalue  # H0: every point drawn with probability 1/N
        assert p > 1e-3, p
    # the test has power: a coupling that ignores cell sizes (uniform over anchors) is rejected
    bad = torch.randint(c.plan.shape[0], (n_draws,), generator=g)
    bad_idx = c._cells0.draw(bad, g)
    assert stats.chisquare(torch.bincount(bad_idx, minlength=300).double().numpy()).pvalue < 1e-6


def test_cost_gap_qdsb_vs_full_and_minibatch_ot(toy_2048: tuple[torch.Tensor, torch.Tensor]) -> None:
    x0, x1 = toy_2048
    exact = ExactOTCoupling().fit(x0, x1).expected_cost()
    w = torch.full((2048,), 1 / 2048, dtype=torch.float64).numpy()
    ref = ot.emd2(w, w, (torch.cdist(x0.double(), x1.double()) ** 2).numpy(), numItermax=10_000_000)
    assert exact == pytest.approx(ref, rel=1e-9)
    costs = {k: QuantizedCoupling(n_anchors=k, seed=0).fit(x0, x1).expected_cost() for k in (16, 64, 256)}
    minibatch = MinibatchOTCoupling(batch_size=256, n_estimate=16, seed=0).fit(x0, x1).expected_cost()
    independent = IndependentCoupling().fit(x0, x1).expected_cost()
    assert all(cost >= exact - 1e-9 for cost in costs.values())  # no coupling beats the optimum
    assert costs[256] <= 1.05 * exact, (costs, exact)
    assert costs[256] < minibatch, (costs[256], minibatch)
    assert costs[16] > costs[64] > costs[256]
    assert minibatch < independent


def test_expected_cost_is_exact(toy_2048: tuple[torch.Tensor, torch.Tensor]) -> None:
    x0, x1 = toy_2048
    for c in (QuantizedCoupling(n_anchors=32, seed=0), IndependentCoupling(), ExactOTCoupling()):
        c.fit(x0[:512], x1[:512])
        i0, i1 = c.sample(200_000)
        assert _pair_cost(x0, x1, i0, i1) == pytest.approx(c.expected_cost(), rel=0.02), type(c).__name__


def test_exact_coupling_is_a_matching_for_equal_sizes() -> None:
    g = torch.Generator().manual_seed(0)
    x0, x1 = torch.randn(64, 2, generator=g), torch.randn(64, 2, generator=g) + 3
    c = ExactOTCoupling().fit(x0, x1)
    i0, i1 = c.sample(5000)
    # an EMD plan between uniform measures of equal size is a permutation: each source has one partner
    partners = torch.zeros(64, dtype=torch.long).index_put_((i0,), i1)
    assert torch.equal(partners[i0], i1)


def test_sinkhorn_anchor_cross_covariance_matches_closed_form() -> None:
    """Lifted Cov(x0, x1) with Sinkhorn anchors (epsilon = 2 sigma^2) vs C_sigma (closed form in docs/qdsb.md).

    Tolerance 0.06 per entry: sampling error of N=4096 points (~0.02) + quantisation with k=256 (cell radius
    ~0.3); the exact-OT plan's cross-covariance differs from C_sigma by ~0.3-0.4, so the test tells them apart.
    """
    sigma = 1.0
    a = torch.tensor([[1.0, 0.3], [0.3, 0.5]], dtype=torch.float64)
    b = torch.tensor([[2.0, -0.4], [-0.4, 1.0]], dtype=torch.float64)
    g = torch.Generator().manual_seed(0)
    n = 4096
    x0 = (torch.randn(n, 2, generator=g, dtype=torch.float64) @ torch.linalg.cholesky(a).T).float()
    x1 = (1.0 + torch.randn(n, 2, generator=g, dtype=torch.float64) @ torch.linalg.cholesky(b).T).float()
    closed = entropic_cross_covariance(a, b, sigma)

    def lifted_cov(c: QuantizedCoupling) -> torch.Tensor:
        i0, i1 = c.sample(400_000)
        u, v = x0[i0].double(), x1[i1].double()
        return (u - u.mean(0)).T @ (v - v.mean(0)) / len(u)

    sink = QuantizedCoupling(n_anchors=256, ot="sinkhorn", epsilon=2 * sigma**2, seed=0).fit(x0, x1)
    assert "sinkhorn" in sink.describe()
    torch.testing.assert_close(lifted_cov(sink), closed, atol=0.06, rtol=0)
    exact = QuantizedCoupling(n_anchors=256, ot="exact", seed=0).fit(x0, x1)
    assert float((lifted_cov(exact) - closed).abs().max()) > 0.2


def test_draws_do_not_touch_other_points_than_cells() -> None:
    """A QDSB pair always joins two cells that the anchor plan connects (lifting respects the plan)."""
    g = torch.Generator().manual_seed(2)
    x0, x1 = sample_toy("gaussian", 1000, g), sample_toy("moons", 1000, g)
    c = QuantizedCoupling(n_anchors=16, seed=0).fit(x0, x1)
    i0, i1 = c.sample(10_000)
    assert (c.plan[c.cells0[i0], c.cells1[i1]] > 0).all()


def test_state_dict_round_trip_reproduces_the_plan(toy_2048: tuple[torch.Tensor, torch.Tensor]) -> None:
    x0, x1 = toy_2048
    c = QuantizedCoupling(n_anchors=32, seed=5).fit(x0, x1)
    other = QuantizedCoupling(n_anchors=32, seed=99)
    other.load_state_dict(c.state_dict(), x0, x1)
    other.reseed(5)
    c.reseed(5)
    for a, b in zip(c.sample(100), other.sample(100), strict=True):
        assert torch.equal(a, b)
    assert other.expected_cost() == pytest.approx(c.expected_cost())
    with pytest.raises(ValueError, match="fitted on 2048 x 2048 points"):
        other.load_state_dict(c.state_dict(), x0[:10], x1)


def test_sample_shapes_and_devices(toy_2048: tuple[torch.Tensor, torch.Tensor]) -> None:
    x0, x1 = toy_2048
    for name in ("qdsb", "minibatch_ot", "independent"):
        c = build_coupling(name, n_anchors=8, ot_batch_size=64).fit(x0, x1)
        i0, i1 = c.sample(100)  # more than one minibatch for minibatch_ot
        assert i0.shape == i1.shape == (100,) and i0.dtype == torch.long
        assert int(i0.max()) < 2048 and int(i1.max()) < 2048


def test_bad_input_raises_clear_errors() -> None:
    x = torch.randn(50, 2)
    nan = x.clone()
    nan[3, 1] = float("nan")
    for c in (QuantizedCoupling(4), MinibatchOTCoupling(8), IndependentCoupling(), ExactOTCoupling()):
        with pytest.raises(ValueError, match="x0 contains NaN or inf"):
            c.fit(nan, x)
        with pytest.raises(ValueError, match="same dimension, got d=2 and d=3"):
            c.fit(x, torch.randn(50, 3))
        with pytest.raises(RuntimeError, match="must be called before sampling"):
            c.sample(4)
    c = QuantizedCoupling(4).fit(x, x)
    with pytest.raises(ValueError, match="batch_size must be a positive int"):
        c.sample(0)
    with pytest.raises(ValueError, match="needs epsilon > 0"):
        QuantizedCoupling(4, ot="sinkhorn")
    with pytest.raises(ValueError, match="ot must be"):
        MinibatchOTCoupling(8, ot="lp")
    with pytest.raises(ValueError, match="above max_pairs"):
        ExactOTCoupling(max_pairs=100).fit(x, x)
    with pytest.raises(ValueError, match="coupling must be one of"):
        build_coupling("hungarian")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_sinkhorn_anchor_plan_matches_cpu() -> None:
    x0, x1 = torch.randn(5000, 8), torch.randn(5000, 8) + 1
    cpu = QuantizedCoupling(64, ot="sinkhorn", epsilon=2.0, seed=0).fit(x0, x1)
    gpu = QuantizedCoupling(64, ot="sinkhorn", epsilon=2.0, seed=0).fit(x0.cuda(), x1.cuda())
    i0, i1 = gpu.sample(1000)
    assert i0.is_cuda and gpu.plan.is_cuda
    assert gpu.expected_cost() == pytest.approx(cpu.expected_cost(), rel=0.05)
