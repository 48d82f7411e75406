"""Discrete optimal transport between weighted point sets: exact (POT network simplex) and log-domain Sinkhorn.

The QDSB paper describes its anchor plan as *entropic* OT, while every released run of the reference code uses
``ot_method="exact"`` (``ot.emd``); both are offered and callers log which one ran.
``ot.emd`` runs on the CPU only (POT has no GPU exact solver); the Sinkhorn solver below is plain
torch, runs on the cost's device, and uses epsilon-scaling so that small regularisers (the [SF]2M choice
epsilon = 2 sigma^2 on raw toy costs of ~100) converge in a few hundred iterations instead of thousands.
"""

from __future__ import annotations

import math

import torch


def sq_cost(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Squared Euclidean cost matrix ``(n, m)`` (not normalised: scaling the cost rescales the effective epsilon)."""
    c = (x**2).sum(1, keepdim=True) + (y**2).sum(1)[None, :] - 2.0 * x @ y.T
    return c.clamp_min(0.0)


def _check_weights(a: torch.Tensor, b: torch.Tensor, cost: torch.Tensor) -> None:
    if cost.ndim != 2 or cost.shape != (a.shape[0], b.shape[0]):
        raise ValueError(f"cost must have shape ({a.shape[0]}, {b.shape[0]}), got {tuple(cost.shape)}")
    for name, w in (("a", a), ("b", b)):
        if (w < 0).any() or not torch.isfinite(w).all() or abs(float(w.sum()) - 1.0) > 1e-6:
            raise ValueError(f"weights {name} must be finite, non-negative and sum to 1 (sum={float(w.sum()):.6g})")
    if not torch.isfinite(cost).all():
        raise ValueError("cost matrix contains NaN or inf")


def emd_plan(a: torch.Tensor, b: torch.Tensor, cost: torch.Tensor, max_iter: int = 1_000_000) -> torch.Tensor:
    """Exact OT plan by POT's network simplex (``ot.emd``), in float64 on the CPU, returned on ``cost``'s device."""
    import ot

    _check_weights(a, b, cost)
    a64, b64 = a.detach().double().cpu(), b.detach().double().cpu()
    a64, b64 = a64 / a64.sum(), b64 / b64.sum()
    plan = ot.emd(a64.numpy(), b64.numpy(), cost.detach().double().cpu().numpy(), numItermax=max_iter)
    plan = torch.as_tensor(plan)
    if not torch.isfinite(plan).all() or float(plan.sum()) <= 0:
        raise RuntimeError("ot.emd returned a non-finite or zero-mass plan; try a larger max_iter")
    return plan.to(cost.device)


def sinkhorn_plan(
    a: torch.Tensor,
    b: torch.Tensor,
    cost: torch.Tensor,
    epsilon: float,
    tol: float = 1e-6,
    max_iter: int = 5000,
    scaling: float = 0.7,
) -> torch.Tensor:
    """Entropic OT plan minimising <P, C> + epsilon * KL(P | a b^T), by log-domain Sinkhorn with epsilon-scaling.

    Same plan as POT's ``ot.sinkhorn(a, b, C, reg=epsilon)`` (the two objectives differ by a constant). Runs in
    float64 on ``cost``'s device. Epsilon starts at the largest cost and shrinks by ``scaling`` per block of 10
    iterations until it reaches ``epsilon``; then iterations run until the row-marginal L1 error is below ``tol``.

    Args:
        a: Source weights ``(n,)`` summing to 1.
        b: Target weights ``(m,)`` summing to 1.
        cost: Cost matrix ``(n, m)``.
        epsilon: Regularisation strength (> 0); [SF]2M uses 2 sigma^2.
        tol: Stop when ``|P 1 - a|_1 < tol``.
        max_iter: Iteration cap at the final epsilon (a warning-free best effort is returned at the cap).
        scaling: Factor (0 < s < 1) by which epsilon shrinks during the warm start.
    """
    if not epsilon > 0:
        raise ValueError(f"epsilon must be > 0 for Sinkhorn, got {epsilon}")
    if not 0 < scaling < 1:
        raise ValueError(f"scaling must be in (0, 1), got {scaling}")
    _check_weights(a, b, cost)
    c = cost.detach().double()
    loga = torch.log(a.detach().double().to(c.device))
    logb = torch.log(b.detach().double().to(c.device))
    f = torch.zeros_like(loga)
    g = torch.zeros_like(logb)
    eps_start = max(float(c.max()), epsilon)
    n_stages = max(0, math.ceil(math.log(epsilon / eps_start) / math.log(scaling)))
    schedule = [eps_start * scaling**i for i in range(n_stages)] + [epsilon]

    def step(eps: float) -> tuple[torch.Tensor, torch.Tensor]:
        fn = -eps * torch.logsumexp(logb[None, :] + (g[None, :] - c) / eps, dim=1)
        gn = -eps * torch.logsumexp(loga[:, None] + (fn[:, None] - c) / eps, dim=0)
        return fn, gn

    for eps in schedule[:-1]:
        for _ in range(10):
            f, g = step(eps)
    for it in range(max_iter):
        f, g = step(epsilon)
        if it % 10 == 0 or it == max_iter - 1:
            logp = loga[:, None] + logb[None, :] + (f[:, None] + g[None, :] - c) / epsilon
            err = float((logp.exp().sum(1) - a.double().to(c.device)).abs().sum())
            if err < tol:
                break
    plan = torch.exp(loga[:, None] + logb[None, :] + (f[:, None] + g[None, :] - c) / epsilon)
    if not torch.isfinite(plan).all() or float(plan.sum()) <= 0:
        raise RuntimeError(f"Sinkhorn returned a non-finite or zero-mass plan at epsilon={epsilon}")
    return plan / plan.sum()


def solve_plan(
    a: torch.Tensor, b: torch.Tensor, cost: torch.Tensor, method: str, epsilon: float | None = None
) -> torch.Tensor:
    """Dispatch to :func:`emd_plan` (``method="exact"``) or :func:`sinkhorn_plan` (``"sinkhorn"``, needs epsilon)."""
    if method == "exact":
        return emd_plan(a, b, cost)
    if method == "sinkhorn":
        if epsilon is None:
            raise ValueError("ot='sinkhorn' needs epsilon (the [SF]2M choice is 2 * sigma**2)")
        return sinkhorn_plan(a, b, cost, epsilon)
    raise ValueError(f"ot must be 'exact' or 'sinkhorn', got {method!r}")
