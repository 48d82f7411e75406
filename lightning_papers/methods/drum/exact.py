"""Exact worst cases for checking the DRUM adversary and the population-level table.

KL duality (exponential tilt): for losses l under P,

    sup_{Q: KL(Q || P) <= rho} E_Q l  =  inf_{lambda > 0}  lambda rho + lambda log E_P exp(l / lambda),

attained by the tilt dQ/dP proportional to exp(l / lambda*). With X's law fixed and the constraint on the
average E_x KL(Q_x || P_x) (the joint KL), the same formula holds with E_x log E_{P_x} exp(l / lambda) inside
(:func:`kl_dual_worst_case`). With one ball per x (KL(Q_x || P_x) <= rho for every x) the worst case is a sup for
each x separately.

Population check (:func:`population_minimax`): the one-dimensional design X_S ~ N(0, 1), X_T ~ N(0.5, 1),
A | X ~ N(0.8 X, 1) in the source, mu = x + a + 0.5 a^2, noise sd 0.5, exact nuisances, an adversary restricted to
Gaussians inside a per-x KL ball and the minimax f(x) solved for each x; target MSE over grids of scenarios
A | X ~ N(0.8 X + s, tau^2). Gauss-Hermite quadrature (40 x 40 nodes) replaces sampling.
"""

from __future__ import annotations

import math

import numpy as np
import torch


def kl_dual_worst_case(losses: torch.Tensor, rho: float) -> tuple[float, float]:
    """``(sup, lambda*)`` over {Q: mean_j KL(Q_j || P_j) <= rho}, with ``losses[j, k]`` = l at draw k ~ P_j.

    One-dimensional convex minimisation over log lambda; rho = 0 returns the plain mean and lambda* = inf.
    """
    from scipy.optimize import minimize_scalar

    if rho < 0:
        raise ValueError(f"rho must be >= 0, got {rho}")
    ell = losses.double()
    if ell.dim() == 1:
        ell = ell[None]
    if rho == 0:
        return float(ell.mean()), math.inf
    log_k = math.log(ell.shape[1])
    scale = float(ell.std().clamp_min(1e-8))

    def dual(log_lam: float) -> float:
        lam = math.exp(log_lam)
        return lam * rho + lam * float((torch.logsumexp(ell / lam, 1) - log_k).mean())

    res = minimize_scalar(dual, bounds=(math.log(scale) - 12, math.log(scale) + 12), method="bounded",
                          options={"xatol": 1e-8})
    return float(res.fun), math.exp(res.x)


_X, _WX = np.polynomial.hermite_e.hermegauss(40)
_WX = _WX / _WX.sum()


def _risk_gauss(x: np.ndarray, f: np.ndarray, m: np.ndarray, v: np.ndarray) -> np.ndarray:
    """E[(x + A + 0.5 A^2 - f)^2] for A ~ N(m, v), broadcasting, by quadrature in A."""
    a = m[..., None] + np.sqrt(v)[..., None] * _X
    return ((x[..., None] + a + 0.5 * a * a - f[..., None]) ** 2 * _WX).sum(-1)


def population_worst(x: float, f: float, rho: float, n_v: int = 200) -> float:
    """sup over Gaussians N(m, v) with KL(N(m, v) || N(0.8 x, 1)) <= rho of E[(mu - f)^2] (boundary search)."""
    v = np.exp(np.linspace(math.log(1e-3), math.log(20.0), n_v))
    r2 = 2 * rho - (v - 1 - np.log(v))
    v, r = v[r2 >= 0], np.sqrt(r2[r2 >= 0])
    m = np.concatenate([0.8 * x + r, 0.8 * x - r])
    vv = np.concatenate([v, v])
    return float(_risk_gauss(np.full_like(m, x), np.full_like(m, f), m, vv).max())


def population_minimax_f(xs: np.ndarray, rho: float) -> np.ndarray:
    """The minimax f(x) for each x (a 1-D minimisation of the per-x worst case, started at the ERM value)."""
    from scipy.optimize import minimize_scalar

    out = np.empty(len(xs))
    for i, x in enumerate(xs):
        f0 = x + 0.8 * x + 0.5 * (0.64 * x * x + 1)
        out[i] = minimize_scalar(lambda f, x=x: population_worst(x, f, rho), bracket=(f0 - 1, f0 + 1)).x
    return out


def population_mse(f_of_x: np.ndarray, xs: np.ndarray, s: float, tau: float, noise_var: float = 0.25) -> float:
    """Target MSE E_T[(Y - f(X))^2] under the scenario A | X ~ N(0.8 X + s, tau^2), X ~ N(0.5, 1) (quadrature)."""
    w = _WX if len(xs) == len(_WX) else np.full(len(xs), 1 / len(xs))
    m = 0.8 * xs + s
    return float((w * _risk_gauss(xs, f_of_x, m, np.full_like(m, tau**2))).sum() + noise_var)


def population_table(rhos: tuple[float, ...] = (0.1, 0.3, 0.6)) -> dict[str, dict[str, float]]:
    """Mean / worst target MSE of ERM, impute-A and DRUM at each rho on the symmetric and variance grids."""
    from lightning_papers.datamodules.source_target import GRIDS

    xs = 0.5 + _X  # X_T ~ N(0.5, 1) quadrature nodes
    preds = {
        "erm": xs + 0.8 * xs + 0.5 * (0.64 * xs**2 + 1),  # E_S[Y | x] = x + 0.8x + 0.5 (0.64 x^2 + 1)
        "impute": xs + 0.8 * xs + 0.5 * (0.8 * xs) ** 2,  # mu(x, E[A | x])
    }
    for rho in rhos:
        preds[f"drum_rho{rho:g}"] = population_minimax_f(xs, rho)
    table = {}
    for name, f in preds.items():
        row = {}
        for grid, cells in GRIDS.items():
            r = [population_mse(f, xs, s, t) for s, t in cells]
            row[f"{grid}_mean"], row[f"{grid}_worst"] = float(np.mean(r)), float(np.max(r))
        row["no_shift"] = population_mse(f, xs, 0.0, 1.0)
        table[name] = row
    return table
