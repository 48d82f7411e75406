"""Anchor OT solvers against POT: exact plan cost and marginals, log-domain Sinkhorn vs ``ot.sinkhorn``."""

from __future__ import annotations

import numpy as np
import ot
import pytest
import torch

from lightning_papers.methods.qdsb.transport import emd_plan, sinkhorn_plan, solve_plan, sq_cost


def _problem(n: int = 40, m: int = 30, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x, y = torch.randn(n, 2, generator=g, dtype=torch.float64), 2 + torch.randn(m, 2, generator=g, dtype=torch.float64)
    a = torch.rand(n, generator=g, dtype=torch.float64) + 0.1
    b = torch.rand(m, generator=g, dtype=torch.float64) + 0.1
    return a / a.sum(), b / b.sum(), sq_cost(x, y)


def test_sq_cost_matches_cdist() -> None:
    x, y = torch.randn(20, 3, dtype=torch.float64), torch.randn(15, 3, dtype=torch.float64)
    torch.testing.assert_close(sq_cost(x, y), torch.cdist(x, y) ** 2)


def test_emd_plan_is_optimal_with_the_right_marginals() -> None:
    a, b, c = _problem()
    plan = emd_plan(a, b, c)
    torch.testing.assert_close(plan.sum(1), a)
    torch.testing.assert_close(plan.sum(0), b)
    assert float((plan * c).sum()) == pytest.approx(ot.emd2(a.numpy(), b.numpy(), c.numpy()), rel=1e-10)


@pytest.mark.parametrize("epsilon", [1.0, 0.05])
def test_sinkhorn_matches_pot(epsilon: float) -> None:
    a, b, c = _problem()
    plan = sinkhorn_plan(a, b, c, epsilon, tol=1e-10, max_iter=20000)
    ref = ot.sinkhorn(a.numpy(), b.numpy(), c.numpy(), reg=epsilon, method="sinkhorn_log", numItermax=100000,
                      stopThr=1e-12)
    np.testing.assert_allclose(plan.numpy(), ref, atol=1e-7)
    torch.testing.assert_close(plan.sum(1), a, atol=1e-8, rtol=0)


def test_sinkhorn_tends_to_exact_ot_as_epsilon_shrinks() -> None:
    a, b, c = _problem()
    exact = float((emd_plan(a, b, c) * c).sum())
    costs = [float((sinkhorn_plan(a, b, c, eps, tol=1e-9) * c).sum()) for eps in (1.0, 0.1, 0.01)]
    assert costs[0] > costs[1] > costs[2] >= exact - 1e-9
    assert costs[2] == pytest.approx(exact, rel=2e-2)


def test_bad_inputs_raise() -> None:
    a, b, c = _problem()
    with pytest.raises(ValueError, match="cost must have shape"):
        emd_plan(a, b, c[:-1])
    with pytest.raises(ValueError, match="sum to 1"):
        emd_plan(2 * a, b, c)
    bad = c.clone()
    bad[0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN or inf"):
        emd_plan(a, b, bad)
    with pytest.raises(ValueError, match="epsilon must be > 0"):
        sinkhorn_plan(a, b, c, 0.0)
    with pytest.raises(ValueError, match="needs epsilon"):
        solve_plan(a, b, c, "sinkhorn")
    with pytest.raises(ValueError, match="ot must be"):
        solve_plan(a, b, c, "greenkhorn")
