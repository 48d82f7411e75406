"""Scoring discovered equations: ground truth from strings, term-set comparison, held-out simulation."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import sympy as sp

from lightning_papers.methods.symbolic_regression.readout import Equations, tidy


def parse_equations(names: Sequence[str], equations: Sequence[str]) -> Equations:
    """Ground-truth strings (e.g. a datamodule's ``true_equations``) as :class:`Equations`."""
    syms = {n: sp.Symbol(n) for n in names}
    return Equations(list(names), [tidy(sp.sympify(e, locals=syms), list(syms.values()), 0.0) for e in equations])


def compare(found: Equations, truth: Equations) -> tuple[bool, float]:
    """(exact term set in every equation, max relative coefficient error over the true terms)."""
    exact, err = True, 0.0
    for f, t in zip(found.terms(), truth.terms()):
        exact &= set(f) == set(t)
        for b, c in t.items():
            err = max(err, abs(f.get(b, 0.0) - c) / abs(c))
    return exact, err


def simulate_equations(eq: Equations, t: np.ndarray, x0: np.ndarray) -> np.ndarray | None:
    """States (len(t), d) of the discovered ODE from ``x0`` on times ``t`` (LSODA); None if it fails or diverges."""
    from scipy.integrate import solve_ivp

    rhs, scale = eq.rhs(), 1e3 * (np.abs(x0).max() + 1)

    def blowup(t_: float, x: np.ndarray) -> float:
        return scale - np.abs(x).max()

    blowup.terminal = True  # type: ignore[attr-defined]
    try:
        with np.errstate(all="ignore"):
            sol = solve_ivp(rhs, (t[0], t[-1]), x0, t_eval=t, rtol=1e-8, atol=1e-8, events=blowup, method="LSODA")
    except (ValueError, OverflowError, ZeroDivisionError, FloatingPointError):
        return None
    if sol.y.shape[1] != len(t) or not np.isfinite(sol.y).all():
        return None
    return sol.y.T


def simulate_error(eq: Equations, t: np.ndarray, x_true: np.ndarray) -> float:
    """Relative RMS error of the discovered ODE simulated from ``x_true[0]`` on times ``t`` (inf if it diverges)."""
    sim = simulate_equations(eq, t, x_true[0])
    if sim is None:
        return math.inf
    return float(np.sqrt(((sim - x_true) ** 2).mean() / ((x_true - x_true.mean(0)) ** 2).mean()))
