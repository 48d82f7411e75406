"""``AdaptiveCalibrator``: epochs, a grid fine near the estimated mean, change detection and a doubling guess for C.

Reconstruction of Liu, Luo, Ratliff (2026), "Adaptive Calibration in Non-Stationary Environments"; only the abstract
is public, so the outer loop follows ``shared/research/online.md`` §A4 [design]:

* **Epochs** of doubling length L_m = L_0·2^m (abstract: "epoch-based scheduling").
* **Anchor** μ̂ = mean outcome of the previous epoch; confidence radius r = c·√(log T / L_{m−1}).
* **Grid** (abstract: "non-uniform partition ... finer resolution near the underlying ground truth"): dyadic
  spacing ε = 2^{−⌈log2 √L_m⌉} within r of μ̂, width ≈ max(ε, γ·|p − μ̂|) outside, with γ = min{1, (L/Ĉ²)^{1/3}} for
  ℓ1 and γ = min{1, Ĉ^{−1/3}} for ℓ2 (the tuning that reproduces the rates √T + (TC)^{1/3} and (1+C)^{1/3}).
* **Inner forecaster**: BM-FTL on that grid (:mod:`.swap_regret`).
* **K segments**: after n ≥ 16 rounds of an epoch, restart if |ȳ_n − μ̂| > κ(√(log T/n) + √(log T/L_{m−1})); the
  epoch length resets to L_0 and the new anchor is the mean of the most recent half of the epoch. Added [design]:
  the same test on the most recent 16·2^j rounds (Hoeffding threshold, union bound over window lengths), because
  the epoch mean dilutes a change that happens late in a long epoch (delay ∝ n); this window re-anchors the restart.
* **Unknown C**: Ĉ starts at 1; every B rounds add B·max(0, |ȳ_block − μ̂| − √(2 log T / B)) to an observed
  deviation; when it exceeds Ĉ, double Ĉ until it does not, and rebuild the grid with the new γ.
* **Variants**: ``"restart"`` (faithful to the analysis) starts a fresh inner forecaster every epoch; ``"refine"``
  (practical) keeps old grid points and their learners and adds the new fine points around the anchor; only a
  detected change resets it.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import numpy as np

from lightning_papers.methods.adaptive_calibration.base import Forecaster, UniformStream
from lightning_papers.methods.adaptive_calibration.swap_regret import (
    SwapRegretCore,
    build_grid,
    dyadic_spacing,
    fine_points,
    pseudo_from_state,
    pseudo_to_state,
)

_SCALARS = (
    "t", "m", "L", "n", "s", "anchor", "prev_len", "lg", "anchor_width", "ck_next", "ck_prev", "ck_cur",
    "bn", "bs", "c_hat", "c_obs", "changes", "wn", "ws", "wsums",
)  # fmt: skip
WINDOW_BLOCK = 16  # the change test's smallest window (notes §A4: test after n >= 16 rounds)


class AdaptiveCalibrator(Forecaster):
    """Adaptive calibrated forecaster for non-stationary binary streams (``predict`` / ``update`` / ``run``).

    Args:
        variant: ``"refine"`` (keep and refine the grid across epochs; better constants) or ``"restart"`` (fresh
            inner forecaster each epoch, as in the analysis).
        measure: Which rate the grid is tuned for: ``"l1"`` (γ = min{1, (L/Ĉ²)^{1/3}}) or ``"l2"``
            (γ = min{1, Ĉ^{-1/3}}).
        first_epoch: L_0, the length of the first epoch (16–32 per the notes §A4).
        radius_scale: c in the fine-zone radius c·√(log T / L_{m−1}); smaller means fewer bins (notes: 0.5–1).
        detect_scale: κ of the change test; ``0`` switches change detection off.
        detect_window: Longest recent window of the windowed change test (rounded down to 16·2^j); ``0`` keeps
            only the notes' epoch-mean test.
        budget_block: B, block length of the deviation estimate for the doubling guess of C; ``0`` switches it off.
        lazy: Recompute the inner forecaster's distribution after ``max(1, ⌊lazy·n⌋)`` rounds (0: every round).
        horizon: T for the log T factors if known; ``None`` uses the anytime value log(max(16, t + L_m)).
        seed: Seed of the forecaster's own randomness (sampling from its distribution).
    """

    def __init__(
        self,
        variant: Literal["refine", "restart"] = "refine",
        measure: Literal["l1", "l2"] = "l1",
        first_epoch: int = 32,
        radius_scale: float = 0.5,
        detect_scale: float = 0.6,
        detect_window: int = 1024,
        budget_block: int = 256,
        lazy: float = 0.0625,
        horizon: int | None = None,
        seed: int = 0,
    ) -> None:
        if variant not in ("refine", "restart"):
            raise ValueError(f"variant must be 'refine' or 'restart', got {variant!r}")
        if measure not in ("l1", "l2"):
            raise ValueError(f"measure must be 'l1' or 'l2', got {measure!r}")
        if first_epoch < 2:
            raise ValueError(f"first_epoch must be an integer >= 2, got {first_epoch}")
        if radius_scale <= 0 or detect_scale < 0 or budget_block < 0 or not 0 <= lazy < 1:
            raise ValueError(
                "expected radius_scale > 0, detect_scale >= 0, budget_block >= 0 and 0 <= lazy < 1, got "
                f"{radius_scale}, {detect_scale}, {budget_block}, {lazy}"
            )
        if detect_window != 0 and detect_window < WINDOW_BLOCK:
            raise ValueError(f"detect_window must be 0 or >= {WINDOW_BLOCK}, got {detect_window}")
        if horizon is not None and horizon < 1:
            raise ValueError(f"horizon must be a positive integer or None, got {horizon}")
        self.variant, self.measure, self.first_epoch = variant, measure, first_epoch
        self.radius_scale, self.detect_scale, self.budget_block = radius_scale, detect_scale, budget_block
        self.lazy, self.horizon, self.seed = lazy, horizon, seed
        self.detect_window = detect_window
        self.max_blocks = 2 ** int(math.log2(detect_window // WINDOW_BLOCK)) if detect_window else 0
        self.wn, self.ws, self.wsums = 0, 0.0, []
        self.rng = UniformStream(seed)
        self.pseudo: dict[float, list[float]] = {}
        self.t, self.changes, self.c_hat, self.c_obs = 0, 0, 1.0, 0.0
        self._new_epoch(anchor=0.5, prev_len=0, epoch=0, full=True)

    # ----------------------------------------------------------------- per round
    def predict(self) -> float:
        return self.core.sample(self.rng.next())

    def expected_forecast(self) -> float:
        return self.core.mean

    def _update(self, y: float) -> None:
        self.t += 1
        self.n += 1
        self.s += y
        self.core.observe(y)
        n = self.n
        if n == self.ck_next:  # prefix sums at powers of two: the recent half-epoch for re-anchoring
            self.ck_prev, self.ck_cur, self.ck_next = self.ck_cur, [n, self.s], 2 * n
        if self.prev_len:
            if self.budget_block:
                self.bn += 1
                self.bs += y
                if self.bn == self.budget_block:
                    self._budget_check()
            if self.max_blocks and self.detect_scale:
                self.wn += 1
                self.ws += y
                if self.wn == WINDOW_BLOCK and self._window_check():
                    return
            if self.detect_scale and n >= 16:
                if abs(self.s / n - self.anchor) > self.detect_scale * (math.sqrt(self.lg / n) + self.anchor_width):
                    self._change_detected()
                    return
        if n >= self.L:
            self._new_epoch(anchor=self.s / n, prev_len=n, epoch=self.m + 1, full=self.variant == "restart")

    # ----------------------------------------------------------------- outer loop
    def gamma(self) -> float:
        """Growth rate of the coarse bins for the current guess Ĉ (notes §A4, "Tuning")."""
        if self.measure == "l1":
            return min(1.0, (self.L / self.c_hat**2) ** (1.0 / 3.0))
        return min(1.0, self.c_hat ** (-1.0 / 3.0))

    def _new_epoch(self, anchor: float, prev_len: int, epoch: int, full: bool) -> None:
        self.m, self.L = epoch, self.first_epoch * 2**epoch
        self.anchor, self.prev_len = anchor, prev_len
        self.n, self.s, self.bn, self.bs = 0, 0.0, 0, 0.0
        self.ck_next, self.ck_prev, self.ck_cur = 1, [0, 0.0], [0, 0.0]
        self.lg = math.log(max(16, self.horizon or (self.t + self.L)))
        self.anchor_width = math.sqrt(self.lg / prev_len) if prev_len else 1.0
        self._rebuild(full)

    def _rebuild(self, full: bool) -> None:
        eps = dyadic_spacing(self.L)
        radius = self.radius_scale * self.anchor_width if self.prev_len else 1.0
        if full or not hasattr(self, "core"):
            if hasattr(self, "core"):
                self.core.flush()  # move its pending block into the pseudo counts
            grid = build_grid(self.anchor, radius, eps, self.gamma())
            self.core = SwapRegretCore(grid, self.anchor, self.lazy, pseudo=self.pseudo)
        else:
            self.core.extend(fine_points(self.anchor, radius, eps), self.anchor)

    def _change_detected(self) -> None:
        n0, s0 = self.ck_prev if self.ck_prev[0] > 0 else (0, 0.0)
        window = self.n - n0
        self._restart(anchor=(self.s - s0) / window, window=window)

    def _restart(self, anchor: float, window: int) -> None:
        """A detected change: fresh first epoch anchored on the ``window`` most recent rounds (mean ``anchor``)."""
        self.changes += 1
        self.wn, self.ws, self.wsums = 0, 0.0, []
        self._new_epoch(anchor=anchor, prev_len=window, epoch=0, full=True)

    def _window_check(self) -> bool:
        """Windowed change test [design]: the epoch-mean test of the notes dilutes a change that happens n rounds
        into an epoch, so its delay grows like n. Here, every 16 rounds, the means of the most recent w = 16·2^j
        rounds (up to ``detect_window``) are compared with the anchor. The threshold is Hoeffding's with a union
        bound over the J window lengths and the T rounds, √(a/2w) + √(a/2L_{m−1}) with a = log T + log J, so an
        unchanged mean fires with probability below about 1/8 over the whole stream (``detect_scale`` only scales
        the notes' epoch-mean test). A window that fires re-anchors the restart on itself: it holds mostly
        post-change rounds."""
        self.wsums.append(self.ws)
        self.wn, self.ws = 0, 0.0
        if len(self.wsums) > self.max_blocks:
            del self.wsums[0]
        a = self.lg + math.log(1 + math.log2(self.max_blocks))
        slack = math.sqrt(a / (2.0 * self.prev_len))
        total, blocks, j = 0.0, 0, 1
        for b in reversed(self.wsums):
            total += b
            blocks += 1
            if blocks == j:
                w = blocks * WINDOW_BLOCK
                if abs(total / w - self.anchor) > math.sqrt(a / (2.0 * w)) + slack:
                    self._restart(anchor=total / w, window=w)
                    return True
                j *= 2
        return False

    def _budget_check(self) -> None:
        b = self.budget_block
        excess = abs(self.bs / b - self.anchor) - math.sqrt(2.0 * self.lg / b)
        self.bn, self.bs = 0, 0.0
        if excess > 0:
            self.c_obs += b * excess
            if self.c_obs > self.c_hat:
                while self.c_hat < self.c_obs:
                    self.c_hat *= 2.0
                self._rebuild(full=True)

    # ----------------------------------------------------------------- inspection and state
    def distribution(self) -> tuple[np.ndarray, np.ndarray]:
        """Current grid and the distribution the next forecast is sampled from."""
        return np.asarray(self.core.grid), self.core.pi.copy()

    def pseudo_stats(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(grid values, Σ_t P_t(p), Σ_t P_t(p) y_t) over all rounds so far, for the pseudo-KL error."""
        acc = {k: list(v) for k, v in self.pseudo.items()}
        if self.core.block_n:
            for g, p in zip(self.core.grid, self.core.pi.tolist()):
                if p > 0:
                    a = acc.setdefault(g, [0.0, 0.0])
                    a[0] += self.core.block_n * p
                    a[1] += self.core.block_s * p
        keys = sorted(acc)
        return np.array(keys), np.array([acc[k][0] for k in keys]), np.array([acc[k][1] for k in keys])

    def _state(self) -> dict[str, Any]:
        return {
            **{k: getattr(self, k) for k in _SCALARS},
            "config": [self.variant, self.measure, self.first_epoch, self.radius_scale, self.detect_scale,
                       self.detect_window, self.budget_block, self.lazy, self.horizon],  # fmt: skip
            "core": self.core.state_dict(),
            "rng": self.rng.state_dict(),
            "pseudo": pseudo_to_state(self.pseudo),
        }

    def _load(self, state: dict[str, Any]) -> None:
        config = [self.variant, self.measure, self.first_epoch, self.radius_scale, self.detect_scale,
                  self.detect_window, self.budget_block, self.lazy, self.horizon]  # fmt: skip
        if list(state["config"]) != config:
            raise ValueError(f"state was saved with settings {state['config']}, this calibrator has {config}")
        for k in _SCALARS:
            v = state[k]
            setattr(self, k, list(v) if isinstance(v, (list, tuple)) else v)
        self.pseudo = pseudo_from_state(state["pseudo"])
        self.core = SwapRegretCore.from_state(state["core"], self.pseudo)
        self.rng.load_state_dict(state["rng"])
