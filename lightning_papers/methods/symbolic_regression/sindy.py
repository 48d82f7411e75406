"""SINDy baseline through PySINDy (Brunton, Proctor, Kutz 2016; de Silva et al. 2020), scored like the network.

A fixed library (``poly``: monomials up to ``degree``; ``poly_trig``: those plus sin/cos of each state) and
PySINDy's STLSQ at every threshold of a log grid, fitted to the *same* derivative estimates the network uses. For
each state the threshold with the lowest AICc (:func:`~lightning_papers.methods.symbolic_regression.readout.aicc`,
the same function and data as the network's readout) is kept. PySINDy is an optional dependency
(``pip install pysindy``), imported when a fit runs.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
import sympy as sp

from lightning_papers.methods.symbolic_regression.readout import Equations, aicc

Library = Literal["poly", "poly_trig"]


def build_library(name: Library, degree: int = 3):  # noqa: ANN201 (a pysindy library)
    """PySINDy feature library: ``poly`` (degree ``degree``) or ``poly_trig`` (+ sin, cos of each state)."""
    import pysindy as ps

    if name == "poly":
        return ps.PolynomialLibrary(degree=degree)
    if name == "poly_trig":
        return ps.PolynomialLibrary(degree=degree) + ps.FourierLibrary(n_frequencies=1)
    raise ValueError(f"unknown SINDy library {name!r}; expected 'poly' or 'poly_trig'")


def _expr(feature: str, syms: dict[str, sp.Symbol]) -> sp.Expr:
    return sp.sympify(feature.replace("^", "**").replace(" ", "*"), locals=syms)


def fit_sindy(
    x: np.ndarray,
    dxdt: np.ndarray,
    names: Sequence[str],
    library: Library = "poly",
    degree: int = 3,
    thresholds: np.ndarray | None = None,
) -> Equations:
    """STLSQ at each threshold (default ``logspace(-3, 1.5, 30)``), per-state AICc choice; returns the equations."""
    import pysindy as ps

    if thresholds is None:
        thresholds = np.logspace(-3, 1.5, 30)
    syms = {n: sp.Symbol(n) for n in names}
    n, d = dxdt.shape
    best = [(np.inf, None)] * d
    feats: list[sp.Expr] = []
    for tau in thresholds:
        model = ps.SINDy(optimizer=ps.STLSQ(threshold=float(tau)), feature_library=build_library(library, degree))
        model.fit(x, t=1.0, x_dot=dxdt, feature_names=list(names))
        if not feats:
            feats = [_expr(f, syms) for f in model.get_feature_names()]
        coef = model.coefficients()
        pred = model.predict(x)
        for i in range(d):
            k = int(np.count_nonzero(coef[i]))
            score = aicc(float(((pred[:, i] - dxdt[:, i]) ** 2).sum()), n, k)
            if score < best[i][0]:
                best[i] = (score, coef[i].copy())
    exprs = [
        sp.expand(sp.Add(*[sp.Float(c) * f for c, f in zip(coef, feats) if c != 0]))
        if coef is not None
        else sp.Integer(0)
        for _, coef in best
    ]
    return Equations(list(names), exprs, [s for s, _ in best])
