"""``CalibrationEpochsForecaster``: epochs, a grid fine near the estimated mean, change detection, doubling for C.

Liu, Luo, Ratliff (2026), "Adaptive Calibration in Non-Stationary Environments" (arXiv 2605.11490). Only the abstract
is public, so the outer loop is a reconstruction; ``docs/adaptive_calibration.md`` ("What the paper claims")
writes it out in full and marks what was added here [design]:

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

The hyper-parameters live in :class:`~lightning_papers.methods.adaptive_calibration.config.CalibrationEpochsConfig`.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from lightning_papers.methods.adaptive_calibration.base import Forecaster, UniformStream
from lightning_papers.methods.adaptive_calibration.config import WINDOW_BLOCK, CalibrationEpochsConfig
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


class CalibrationEpochsForecaster(Forecaster):
    """Adaptive calibrated forecaster for non-stationary binary streams (``predict`` / ``update`` / ``run``).

    Args:
        config: The hyper-parameters (:class:`CalibrationEpochsConfig`; ``None`` takes its defaults).
        seed: Seed of the forecaster's own randomness (sampling from its distribution).

    Example::

        f = CalibrationEpochsForecaster(CalibrationEpochsConfig(measure="l2"), seed=0)
        p = f.run(y)  # y: 0/1 outcomes in time order; p: the forecasts made before each outcome
    """

    def __init__(self, config: CalibrationEpochsConfig | None = None, seed: int = 0) -> None:
        config = CalibrationEpochsConfig() if config is None else config
        if not isinstance(config, CalibrationEpochsConfig):
            raise TypeError(f"config must be a CalibrationEpochsConfig, got {type(config).__name__}")
        self.config, self.seed = config, seed
        # read on every round: plain attributes are faster than going through the frozen dataclass
        self.variant, self.measure, self.first_epoch = config.variant, config.measure, config.first_epoch
        self.radius_scale, self.detect_scale = config.radius_scale, config.detect_scale
        self.budget_block, self.lazy, self.horizon = config.budget_block, config.lazy, config.horizon
        self.detect_window = config.detect_window
        self.max_blocks = 2 ** int(math.log2(self.detect_window // WINDOW_BLOCK)) if self.detect_window else 0
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

    def observe(self, y: float) -> None:
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
        """Growth rate of the coarse bins for the current guess Ĉ (the tuning in the module docstring)."""
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
        """Windowed change test [design]: the epoch-mean test dilutes a change that happens n rounds
        into an epoch, so its delay grows like n. Here, every 16 rounds, the means of the most recent w = 16·2^j
        rounds (up to ``detect_window``) are compared with the anchor. The threshold is Hoeffding's with a union
        bound over the J window lengths and the T rounds, √(a/2w) + √(a/2L_{m−1}) with a = log T + log J, so an
        unchanged mean fires with probability below about 1/8 over the whole stream (``detect_scale`` only scales
        the epoch-mean test). A window that fires re-anchors the restart on itself: it holds mostly
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
            "config": self.config.to_dict(),
            "core": self.core.state_dict(),
            "rng": self.rng.state_dict(),
            "pseudo": pseudo_to_state(self.pseudo),
        }

    def _load(self, state: dict[str, Any]) -> None:
        if dict(state["config"]) != self.config.to_dict():
            raise ValueError(f"state was saved with settings {state['config']}, this forecaster has {self.config}")
        for k in _SCALARS:
            v = state[k]
            setattr(self, k, list(v) if isinstance(v, (list, tuple)) else v)
        self.pseudo = pseudo_from_state(state["pseudo"])
        self.core = SwapRegretCore.from_state(state["core"], self.pseudo)
        self.rng.load_state_dict(state["rng"])
