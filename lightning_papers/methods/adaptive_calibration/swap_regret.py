"""Swap-regret calibrated forecaster on a finite grid ("BM-FTL") and the non-uniform grid it runs on.

Reconstruction (after Luo, Senapati, Sharan 2025 and Fishelson et al. 2025; see ``docs/adaptive_calibration.md``):
grid point i owns a follow-the-leader learner with weight W_i and label sum Y_i, suggesting x_i = Y_i / W_i. Row i
of a Markov matrix Q is the mean-preserving rounding of x_i onto its two neighbouring grid points; the forecast is
sampled from the stationary distribution π = πQ (Blum–Mansour), and after the outcome every learner gets
W_i += π_i, Y_i += π_i y. New learners start at the anchor (W_i = 1, Y_i = μ̂), not at their own point.

Speed: π is recomputed lazily, after blocks of ``max(1, ⌊lazy · n⌋)`` rounds (n = rounds played by this core), so a
block of b rounds costs O(b) Python float operations plus one small dense solve. Within a block π is fixed, hence
the learner update W += b·π, Y += (Σ y)·π is exactly the per-round one. ``lazy = 0`` recomputes every round.
"""

from __future__ import annotations

import math
from bisect import bisect_right
from typing import Any

import numpy as np

QUANTUM = 1.0 / 4096  # every grid point is a multiple of this, so OnlineCalibrationError(resolution=4096) is exact
# The outermost grid points are QUANTUM and 1 − QUANTUM, not 0 and 1: a forecaster that puts any mass on 0 or 1
# (sampled, or in its distribution) makes the KL / pseudo-KL calibration error infinite as soon as that forecast is
# contradicted once (so the KL variant keeps its grid away from the certain forecasts). Costs at most
# T·QUANTUM in ℓ1 on a stream whose mean is exactly 0 or 1.
EDGE = QUANTUM


def clip_edge(p: float) -> float:
    """Clip a grid value into [EDGE, 1 − EDGE]."""
    return min(1.0 - EDGE, max(EDGE, p))


def dyadic_spacing(length: int) -> float:
    """Fine-zone spacing ε = 2^{-⌈log2 √L⌉} for an epoch of L rounds (dyadic so points recur across epochs)."""
    k = math.ceil(math.log2(math.sqrt(max(length, 1))))
    return max(2.0 ** (-k), QUANTUM)


def _snap(p: float, step: float) -> float:
    q = 2.0 ** math.floor(math.log2(max(step, QUANTUM)))  # snap to a power-of-two lattice no finer than the step
    q = max(q, QUANTUM)
    return min(1.0, max(0.0, round(p / q) * q))


def fine_points(anchor: float, radius: float, eps: float) -> list[float]:
    """Dyadic points k·ε on [anchor − radius, anchor + radius], always including the two around the anchor."""
    lo = max(0.0, anchor - radius)
    hi = min(1.0, anchor + radius)
    k_lo = min(math.ceil(lo / eps), math.floor(anchor / eps))
    k_hi = max(math.floor(hi / eps), math.ceil(anchor / eps))
    return sorted({clip_edge(k * eps) for k in range(k_lo, k_hi + 1)})


def build_grid(anchor: float, radius: float, eps: float, gamma: float) -> list[float]:
    """Non-uniform partition of [0, 1]: spacing ε within ``radius`` of the anchor, ≈ max(ε, γ·distance) outside.

    Always contains the edges EDGE and 1 − EDGE (never 0 or 1). Coarse points are snapped to power-of-two lattices
    so consecutive epochs share them.
    """
    pts = set(fine_points(anchor, radius, eps))
    p = max(pts)
    while p < 1.0:
        step = max(eps, gamma * (p - anchor))
        nxt = _snap(p + step, step / 2)
        p = nxt if nxt > p else min(1.0, p + step)
        pts.add(p)
    p = min(pts)
    while p > 0.0:
        step = max(eps, gamma * (anchor - p))
        nxt = _snap(p - step, step / 2)
        p = nxt if nxt < p else max(0.0, p - step)
        pts.add(p)
    return sorted({clip_edge(p) for p in pts})


def stationary_distribution(x: np.ndarray, grid: np.ndarray, prev: np.ndarray | None) -> np.ndarray:
    """Stationary π of the rounding chain: row i moves to the two grid points around x_i, keeping the mean x_i.

    A vanishing teleport (1e-9, towards ``prev`` or uniform) makes π unique when the chain has several closed
    classes; masses below 1e-7 (its traces on transient points) are then set to 0.
    """
    n = grid.size
    if n == 1:
        return np.ones(1)
    j = np.clip(np.searchsorted(grid, x, side="right") - 1, 0, n - 2)
    w = np.clip((x - grid[j]) / (grid[j + 1] - grid[j]), 0.0, 1.0)
    q = np.zeros((n, n))
    rows = np.arange(n)
    q[rows, j] = 1.0 - w
    q[rows, j + 1] += w
    eta = 1e-9
    base = prev if prev is not None and prev.size == n else np.full(n, 1.0 / n)
    # π (I − (1−η)Q) = η·base  ⇔  (I − (1−η)Q)^T π^T = η·base^T
    a = np.eye(n) - (1.0 - eta) * q
    pi = np.linalg.solve(a.T, eta * base)
    pi[pi < 1e-7] = 0.0  # drop the teleport's traces on transient points (they would make pseudo-KL infinite at 0/1)
    return pi / pi.sum()


class SwapRegretCore:
    """BM-FTL on a sorted grid, with lazy π updates and optional shared pseudo-count accumulators.

    Args:
        grid: Sorted grid values in [0, 1] (multiples of ``QUANTUM``).
        anchor: Where fresh learners point (Y_i = anchor · prior).
        lazy: Recompute π after ``max(1, ⌊lazy·n⌋)`` rounds; 0 = every round.
        prior: Pseudo-count of a fresh learner (W_i).
        pseudo: ``{grid value: [Σ_t P_t(p), Σ_t P_t(p) y_t]}`` to add this core's distributions to (pseudo-KL).
    """

    def __init__(
        self, grid: list[float], anchor: float, lazy: float, prior: float = 1.0, pseudo: dict | None = None
    ) -> None:
        self.grid = list(grid)
        self.w = np.full(len(grid), prior)
        self.y = np.full(len(grid), prior * anchor)
        self.lazy = lazy
        self.prior = prior
        self.pseudo = pseudo
        self.rounds = 0
        self.block_n = 0
        self.block_s = 0.0
        self.block_len = 1
        self.pi = np.zeros(0)
        self._refresh()

    def _refresh(self) -> None:
        g = np.asarray(self.grid)
        self.pi = stationary_distribution(self.y / self.w, g, self.pi if self.pi.size == g.size else None)
        cum = np.cumsum(self.pi)
        cum[-1] = 1.0
        self.cum = cum.tolist()
        self.mean = float(self.pi @ g)

    def sample(self, u: float) -> float:
        i = bisect_right(self.cum, u)
        return self.grid[i if i < len(self.grid) else -1]

    def observe(self, y: float) -> None:
        self.block_n += 1
        self.block_s += y
        if self.block_n >= self.block_len:
            self.flush()

    def flush(self) -> None:
        """Apply the pending block to the learners (and pseudo counts) and recompute π."""
        n, s = self.block_n, self.block_s
        if n == 0:
            return
        self.w += n * self.pi
        self.y += s * self.pi
        if self.pseudo is not None:
            for g, p in zip(self.grid, self.pi.tolist()):
                if p > 0.0:
                    acc = self.pseudo.setdefault(g, [0.0, 0.0])
                    acc[0] += n * p
                    acc[1] += s * p
        self.rounds += n
        self.block_n, self.block_s = 0, 0.0
        self.block_len = max(1, int(self.lazy * self.rounds))
        self._refresh()

    def extend(self, points: list[float], anchor: float) -> None:
        """Add grid points (fresh learners pointing at ``anchor``); existing learners keep their history."""
        self.flush()
        new = sorted(set(points) - set(self.grid))
        if not new:
            return
        old = dict(zip(self.grid, zip(self.w.tolist(), self.y.tolist())))
        self.grid = sorted(set(self.grid) | set(new))
        fresh = (self.prior, self.prior * anchor)
        self.w = np.array([old.get(g, fresh)[0] for g in self.grid])
        self.y = np.array([old.get(g, fresh)[1] for g in self.grid])
        self.pi = np.zeros(0)
        self._refresh()

    def state_dict(self) -> dict[str, Any]:
        return {
            "grid": list(self.grid),
            "w": self.w.tolist(),
            "y": self.y.tolist(),
            "pi": self.pi.tolist(),
            "lazy": self.lazy,
            "prior": self.prior,
            "rounds": self.rounds,
            "block_n": self.block_n,
            "block_s": self.block_s,
            "block_len": self.block_len,
        }

    @classmethod
    def from_state(cls, state: dict[str, Any], pseudo: dict | None) -> SwapRegretCore:
        core = cls.__new__(cls)
        core.grid = list(state["grid"])
        core.w = np.asarray(state["w"], dtype=np.float64)
        core.y = np.asarray(state["y"], dtype=np.float64)
        core.pi = np.asarray(state["pi"], dtype=np.float64)
        core.lazy, core.prior, core.pseudo = float(state["lazy"]), float(state["prior"]), pseudo
        core.rounds, core.block_n = int(state["rounds"]), int(state["block_n"])
        core.block_s, core.block_len = float(state["block_s"]), int(state["block_len"])
        cum = np.cumsum(core.pi)
        cum[-1] = 1.0
        core.cum = cum.tolist()
        core.mean = float(core.pi @ np.asarray(core.grid))
        return core


def pseudo_to_state(pseudo: dict) -> dict[str, list[float]]:
    keys = sorted(pseudo)
    return {"values": keys, "n": [pseudo[k][0] for k in keys], "s": [pseudo[k][1] for k in keys]}


def pseudo_from_state(state: dict[str, list[float]]) -> dict:
    return {v: [n, s] for v, n, s in zip(state["values"], state["n"], state["s"])}
