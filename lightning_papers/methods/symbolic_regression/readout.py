"""From trained weights to closed-form ODEs: one sympy pass, tidy, split into terms, threshold sweep + AICc.

1. Push the state symbols through the (masked) network in one pass, skipping weights below ``prune_tol`` and
   units nothing downstream reads.
2. Tidy: numbers inside sin/cos/exp arguments and in denominators snap to a simple fraction p/q (q <= 4) within
   ``snap_tol`` relative distance (and to 0 below ``snap_tol``), as ``nsimplify`` with a tolerance would;
   ``expand_trig`` (on arguments of at most 4 terms) and ``expand`` then split sin(w x + b) into sin/cos
   products; a term whose denominator is a polynomial in one state is made monic and divided out
   (partial-fraction form, unique).
3. Split each right-hand side into terms c * basis.
4. For each threshold tau on a log grid: keep the terms whose normalised size |c| rms(basis) / rms(target) is
   >= tau, refit their coefficients by least squares on the data, drop those now below tau, repeat until stable
   (sequential thresholding), and score the result by AICc = n log(RSS / n) + 2k + 2k(k + 1) / (n - k - 1).
   Keep the candidate with the lowest AICc (Mangan et al. 2017; SymANNTEx's log-spaced thresholds).

Nonlinear numbers (frequencies, denominator roots) come from the network (snapped), not from the refit, which
only refits the linear coefficients.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import sympy as sp
import torch

from lightning_papers.methods.symbolic_regression.config import SymbolicConfig
from lightning_papers.methods.symbolic_regression.network import UNIT_KINDS, SymbolicNetwork


def symbolic_forward(net: SymbolicNetwork, symbols: Sequence[sp.Symbol], prune_tol: float = 0.0) -> list[sp.Expr]:
    """The network's right-hand sides as sympy expressions of ``symbols`` (one pass, expanded per layer)."""
    lins = net.linears()
    ws = [lin.effective()[0].detach().double().numpy() for lin in lins]
    bs = [lin.effective()[1].detach().double().numpy() for lin in lins]
    # backward liveness: which units of each layer does the output read?
    need = [np.zeros(layer.n_out, bool) for layer in net.layers]
    live_rows = np.abs(ws[-1]) >= prune_tol
    if need:
        need[-1] = live_rows.any(0)
    for li in range(len(net.layers) - 1, 0, -1):
        rows = _rows_of_units(net.layers[li], need[li])
        need[li - 1] = (np.abs(ws[li][rows]) >= prune_tol).any(0) if rows.any() else need[li - 1]
    h: list[sp.Expr] = [s / sp.Float(float(c)) for s, c in zip(symbols, net.in_scale.double().tolist())]
    for li, layer in enumerate(net.layers):
        rows = _rows_of_units(layer, need[li])
        z = [_affine(ws[li][r], bs[li][r], h, prune_tol) if rows[r] else sp.Integer(0) for r in range(len(rows))]
        h = _units(layer, z)
    out = [
        _affine(ws[-1][r], bs[-1][r], h, prune_tol) * sp.Float(float(s)) for r, s in enumerate(net.out_scale.tolist())
    ]
    return [sp.expand(e) for e in out]


def _rows_of_units(layer, need: np.ndarray) -> np.ndarray:  # noqa: ANN001 (a SymbolicLayer)
    rows, i, j = np.zeros(layer.n_linear, bool), 0, 0
    for kind in UNIT_KINDS:
        n = layer.counts[kind]
        arity = 2 if kind in ("product", "div") else 1
        for u in range(n):
            if need[j + u]:
                rows[i + u] = True
                if arity == 2:
                    rows[i + n + u] = True
        i += arity * n
        j += n
    return rows


def _affine(w: np.ndarray, b: float, h: list[sp.Expr], tol: float) -> sp.Expr:
    terms = [sp.Float(float(wi)) * hi for wi, hi in zip(w, h) if abs(wi) >= tol and hi != 0]
    if abs(b) >= tol:
        terms.append(sp.Float(float(b)))
    return sp.expand(sp.Add(*terms))


def _units(layer, z: list[sp.Expr]) -> list[sp.Expr]:  # noqa: ANN001 (a SymbolicLayer)
    out, i = [], 0
    for kind in UNIT_KINDS:
        n = layer.counts[kind]
        for u in range(n):
            if kind == "product":
                out.append(sp.expand(z[i + u] * z[i + n + u]))
            elif kind == "div":
                num, den = z[i + u], z[i + n + u]
                out.append(sp.Integer(0) if den == 0 or num == 0 else sp.expand(num / den))
            else:
                out.append({"identity": lambda e: e, "sin": sp.sin, "cos": sp.cos, "exp": sp.exp}[kind](z[i + u]))
        i += (2 if kind in ("product", "div") else 1) * n
    return out


def snap_number(v: float, tol: float) -> sp.Expr:
    """``v`` as 0 (|v| < tol), as p/q with q <= 4 (within relative ``tol``), or as a Float."""
    if abs(v) < tol:
        return sp.Integer(0)
    for q in (1, 2, 3, 4):
        p = round(v * q)
        if p != 0 and abs(v - p / q) <= tol * abs(p / q):
            return sp.Rational(p, q)
    return sp.Float(v)


def _snap_floats(e: sp.Expr, tol: float) -> sp.Expr:
    return e.xreplace({f: snap_number(float(f), tol) for f in e.atoms(sp.Float)})


def tidy(expr: sp.Expr, symbols: Sequence[sp.Symbol], snap_tol: float) -> sp.Expr:
    """Snap numbers inside functions and denominators, expand trig, and put rational terms in partial fractions."""
    funcs = (sp.sin, sp.cos, sp.exp)
    expr = expr.replace(lambda e: isinstance(e, funcs), lambda e: e.func(_snap_floats(sp.expand(e.args[0]), snap_tol)))
    short = lambda e: isinstance(e, (sp.sin, sp.cos)) and len(sp.Add.make_args(e.args[0])) <= 4  # noqa: E731
    expr = sp.expand(expr.replace(short, sp.expand_trig))  # sin of a long sum stays one term (2^k otherwise)
    terms = []
    for term in sp.Add.make_args(expr):
        num, den = sp.fraction(sp.together(term))
        free = den.free_symbols & set(symbols)
        if len(free) == 1 and den.is_polynomial(*free):
            (s,) = free
            lead = sp.Poly(den, s).LC()
            den = _snap_floats(sp.expand(den / lead), snap_tol)
            num = sp.expand(num / lead)
            if num.is_polynomial(s):
                q, r = sp.div(num, den, s)
                terms.append(sp.expand(q) + sp.expand(r) / den)
                continue
            terms.append(num / den)
        else:
            terms.append(term)
    return sp.expand(sp.Add(*terms))


def split_terms(expr: sp.Expr) -> dict[sp.Expr, float]:
    """``{basis: coefficient}`` of an expanded expression (the constant term has basis 1)."""
    out: dict[sp.Expr, float] = {}
    for term in sp.Add.make_args(sp.expand(expr)):
        if term == 0:
            continue
        c, basis = term.as_coeff_Mul()
        out[basis] = out.get(basis, 0.0) + float(c)
    return {b: c for b, c in out.items() if c != 0}


def aicc(rss: float, n: int, k: int) -> float:
    """Corrected Akaike information criterion of a least-squares fit with ``k`` coefficients on ``n`` points."""
    if n - k - 1 <= 0:
        return math.inf
    return n * math.log(max(rss, 1e-300) / n) + 2 * k + 2 * k * (k + 1) / (n - k - 1)


def evaluate_bases(bases: Sequence[sp.Expr], symbols: Sequence[sp.Symbol], x: np.ndarray) -> np.ndarray:
    """Columns basis_j(x_i) (n, m); a column that is not finite everywhere is NaN."""
    cols = []
    for b in bases:
        v = np.asarray(sp.lambdify(symbols, b, "numpy")(*x.T), dtype=float)
        v = np.broadcast_to(v, (len(x),)).astype(float)
        cols.append(v if np.isfinite(v).all() else np.full(len(x), np.nan))
    return np.stack(cols, 1) if cols else np.zeros((len(x), 0))


def threshold_sweep(
    theta: np.ndarray, y: np.ndarray, coef0: np.ndarray, thresholds: np.ndarray, max_iter: int = 20
) -> tuple[np.ndarray, float, list[dict]]:
    """Sequentially thresholded least squares at each threshold, scored by AICc; returns (coef, aicc, candidates)."""
    n, m = theta.shape
    ok = np.isfinite(theta).all(0)
    rms = np.sqrt((np.where(ok, theta, 0) ** 2).mean(0))
    y_rms = max(float(np.sqrt((y**2).mean())), 1e-300)
    best = (np.zeros(m), aicc(float((y**2).sum()), n, 0))
    cands, seen = [{"threshold": 0.0, "k": 0, "aicc": best[1]}], set()
    for tau in thresholds:
        active = ok & (np.abs(coef0) * rms / y_rms >= tau)
        coef = np.zeros(m)
        for _ in range(max_iter):
            coef = np.zeros(m)
            if not active.any():
                break
            coef[active] = np.linalg.lstsq(theta[:, active], y, rcond=None)[0]
            new = active & (np.abs(coef) * rms / y_rms >= tau)
            if (new == active).all():
                break
            active = new
        key = tuple(np.flatnonzero(coef))
        if key in seen:
            continue
        seen.add(key)
        k = len(key)
        score = aicc(
            float(((theta[:, list(key)] @ coef[list(key)] - y) ** 2).sum()) if k else float((y**2).sum()), n, k
        )
        cands.append({"threshold": float(tau), "k": k, "aicc": score})
        if score < best[1]:
            best = (coef, score)
    return best[0], best[1], cands


@dataclass
class Equations:
    """Discovered right-hand sides, one sympy expression per state, with their scores and exports."""

    names: list[str]
    exprs: list[sp.Expr]
    aicc: list[float] = field(default_factory=list)

    @property
    def symbols(self) -> list[sp.Symbol]:
        return [sp.Symbol(n) for n in self.names]

    def terms(self) -> list[dict[sp.Expr, float]]:
        return [split_terms(e) for e in self.exprs]

    def text(self, digits: int = 4) -> list[str]:
        return [f"d{n}/dt = {sp.N(e, digits)}" for n, e in zip(self.names, self.exprs)]

    def latex(self, digits: int = 4) -> list[str]:
        return [
            rf"\frac{{d{sp.latex(s)}}}{{dt}} = {sp.latex(sp.N(e, digits))}" for s, e in zip(self.symbols, self.exprs)
        ]

    def to_json(self) -> str:
        return json.dumps(
            {"states": self.names, "equations": [str(e) for e in self.exprs], "latex": self.latex(), "aicc": self.aicc},
            indent=2,
        )

    def rhs(self) -> Callable[[float, np.ndarray], np.ndarray]:
        """``f(t, x) -> dx/dt`` (numpy), as ``scipy.integrate.solve_ivp`` wants it."""
        f = sp.lambdify(self.symbols, self.exprs, "numpy")
        return lambda t, x: np.array([float(v) for v in f(*x)])


def frequency_neighbours(bases: Sequence[sp.Expr]) -> list[sp.Expr]:
    """sin/cos(round(w) x) for every sin/cos(w x) among ``bases`` whose frequency w is not an integer.

    Gradient descent can settle on a nearby frequency plus a polynomial correction (sin(5x/4) - 0.3 x for sin x);
    offering the integer frequency lets the least-squares sweep and AICc decide between them.
    """
    out = []
    for b in bases:
        for f in b.atoms(sp.sin, sp.cos):
            c, rest = f.args[0].as_coeff_Mul()
            if isinstance(rest, sp.Symbol) and not c.is_integer and round(float(c)) != 0:
                out.append(f.func(int(round(float(c))) * rest))
    return out


def fit_equations(
    candidates: Sequence[sp.Expr],
    names: Sequence[str],
    x: np.ndarray,
    dxdt: np.ndarray,
    cfg: SymbolicConfig,
    extra_bases: Sequence[sp.Expr] = (),
) -> Equations:
    """Tidy and split the candidate right-hand sides, then threshold-sweep each state against the data.

    The library of every state is the union of the terms of all states' candidates (the output layer is linear
    in the shared last hidden layer, so any of its terms is reachable from every output), plus ``extra_bases``
    (:func:`read_out` passes 1 and the states when the network has identity units, which can carry any affine
    function of the states to the output) and the integer-frequency neighbours of its sin/cos terms
    (:func:`frequency_neighbours`). Two sweeps per state,
    one starting from the network's own coefficients and one from the least-squares fit on the whole library;
    the candidate with the lowest AICc wins.
    """
    syms = [sp.Symbol(n) for n in names]
    thresholds = np.logspace(math.log10(cfg.threshold_min), math.log10(cfg.threshold_max), cfg.n_thresholds)
    per_state = [split_terms(tidy(c, syms, cfg.snap_tol)) for c in candidates]
    found = [b for terms in per_state for b in terms]
    bases = list(dict.fromkeys(found + list(extra_bases) + frequency_neighbours(found)))
    theta = evaluate_bases(bases, syms, x)
    ok = np.isfinite(theta).all(0)
    exprs, scores = [], []
    for i, terms in enumerate(per_state):
        y = dxdt[:, i]
        starts = [np.array([terms.get(b, 0.0) for b in bases])]
        if ok.any():
            full = np.zeros(len(bases))
            full[ok] = np.linalg.lstsq(theta[:, ok], y, rcond=None)[0]
            starts.append(full)
        best = min((threshold_sweep(theta, y, c0, thresholds)[:2] for c0 in starts), key=lambda r: r[1])
        exprs.append(sp.Add(*[sp.Float(c) * b for c, b in zip(best[0], bases) if c != 0]))
        scores.append(best[1])
    return Equations(list(names), exprs, scores)


@torch.no_grad()
def read_out(
    net: SymbolicNetwork,
    names: Sequence[str],
    x: np.ndarray,
    dxdt: np.ndarray,
    cfg: SymbolicConfig,
    prune_tol: float | None = None,
) -> Equations:
    """The whole readout: one symbolic pass through ``net`` then :func:`fit_equations` on ``(x, dxdt)``.

    ``prune_tol`` (default ``cfg.prune_tol``) skips smaller weights in the symbolic pass; the module passes
    ``cfg.mask_threshold`` before the mask step, so an early readout of a dense network stays small.
    """
    syms = [sp.Symbol(n) for n in names]
    extra = [sp.Integer(1), *syms] if cfg.n_identity > 0 else []
    tol = cfg.prune_tol if prune_tol is None else prune_tol
    return fit_equations(symbolic_forward(net, syms, tol), names, x, dxdt, cfg, extra)
