"""Baselines for the calibration-epochs forecaster: a non-adaptive uniform-grid calibrated forecaster (the
classical Õ(T^{2/3}) method the paper improves on), the raw and the rounded running mean, and an oracle that
predicts the true mean. ``docs/adaptive_calibration.md`` compares them in the benchmark.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from lightning_papers.methods.adaptive_calibration.base import Forecaster, UniformStream
from lightning_papers.methods.adaptive_calibration.swap_regret import (
    QUANTUM,
    SwapRegretCore,
    clip_edge,
    pseudo_from_state,
    pseudo_to_state,
)
from lightning_papers.metrics.calibration import ArrayLike, as_numpy, check_labels, check_probabilities


class UniformGridCalibrator(Forecaster):
    """BM-FTL on a uniform grid of N ≈ T^{1/3} intervals: the non-adaptive Õ(T^{2/3}) ℓ1 / Õ(T^{1/3}) ℓ2 method.

    Args:
        horizon: T, the number of rounds the grid is tuned for (N = ⌈T^{1/3}⌉ intervals).
        n_intervals: Override N.
        lazy: See :class:`~lightning_papers.methods.adaptive_calibration.swap_regret.SwapRegretCore`.
        seed: Seed of the sampling.
    """

    def __init__(self, horizon: int, n_intervals: int | None = None, lazy: float = 0.0625, seed: int = 0) -> None:
        if horizon < 1:
            raise ValueError(f"horizon must be a positive integer, got {horizon}")
        n = n_intervals if n_intervals is not None else math.ceil(horizon ** (1.0 / 3.0))
        if n < 1:
            raise ValueError(f"n_intervals must be >= 1, got {n}")
        # grid points snapped to multiples of 1/4096 so the fixed-state metric is exact on them; the end points are
        # EDGE and 1 − EDGE rather than 0 and 1 (as in the adaptive grid) so the pseudo-KL error stays finite
        grid = sorted({clip_edge(round(k / n / QUANTUM) * QUANTUM) for k in range(n + 1)})
        self.horizon, self.n_intervals, self.seed = horizon, n, seed
        self.rng = UniformStream(seed)
        self.pseudo: dict[float, list[float]] = {}
        self.core = SwapRegretCore(grid, 0.5, lazy, pseudo=self.pseudo)

    def predict(self) -> float:
        return self.core.sample(self.rng.next())

    def expected_forecast(self) -> float:
        return self.core.mean

    def observe(self, y: float) -> None:
        self.core.observe(y)

    def pseudo_stats(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        self.core.flush()
        keys = sorted(self.pseudo)
        return np.array(keys), np.array([self.pseudo[k][0] for k in keys]), np.array([self.pseudo[k][1] for k in keys])

    def _state(self) -> dict[str, Any]:
        return {"core": self.core.state_dict(), "rng": self.rng.state_dict(), "pseudo": pseudo_to_state(self.pseudo)}

    def _load(self, state: dict[str, Any]) -> None:
        self.pseudo = pseudo_from_state(state["pseudo"])
        self.core = SwapRegretCore.from_state(state["core"], self.pseudo)
        self.rng.load_state_dict(state["rng"])


class RunningMean(Forecaster):
    """Predict the mean of the outcomes so far (``prior`` before the first one); optionally rounded to ``step``.

    Args:
        step: Round the forecast to a multiple of ``step`` (0 = raw running mean; the benchmark uses 0.01).
        prior: Forecast of the first round.
    """

    def __init__(self, step: float = 0.0, prior: float = 0.5) -> None:
        if not 0.0 <= step < 1.0:
            raise ValueError(f"step must be in [0, 1), got {step}")
        check_probabilities(np.asarray([prior]), "prior")
        self.step, self.prior = step, prior
        self.n, self.s = 0, 0.0

    def predict(self) -> float:
        p = self.s / self.n if self.n else self.prior
        return min(1.0, round(p / self.step) * self.step) if self.step else p

    def observe(self, y: float) -> None:
        self.n += 1
        self.s += y

    def _state(self) -> dict[str, Any]:
        return {"n": self.n, "s": self.s}

    def _load(self, state: dict[str, Any]) -> None:
        self.n, self.s = int(state["n"]), float(state["s"])


class RoundedRunningMean(RunningMean):
    """Running mean rounded to a 0.01 grid (converges to the grid point nearest μ; lags after a change).

    Args:
        step: Rounding step.
        prior: Forecast of the first round.
    """

    def __init__(self, step: float = 0.01, prior: float = 0.5) -> None:
        if step <= 0:
            raise ValueError(f"step must be > 0 for the rounded running mean, got {step}")
        super().__init__(step=step, prior=prior)


class OracleForecaster(Forecaster):
    """Predicts the true mean μ_t of each round (given as ``reference``); the unreachable reference point."""

    def __init__(self) -> None:
        self.mean = 0.5

    def set_mean(self, mu: float) -> None:
        self.mean = float(mu)

    def predict(self) -> float:
        return self.mean

    def observe(self, y: float) -> None:
        return None

    def run(self, y: ArrayLike, reference: ArrayLike | None = None) -> np.ndarray:
        if reference is None:
            raise ValueError("OracleForecaster.run needs reference = the true means μ_t of the stream")
        y_arr, mu = as_numpy(y), as_numpy(reference)
        check_labels(y_arr, "y")
        check_probabilities(mu, "reference")
        if mu.shape != y_arr.shape:
            raise ValueError(f"reference must have one mean per outcome, got {mu.size} for {y_arr.size}")
        if mu.size:
            self.mean = float(mu[-1])
        return mu.copy()

    def _state(self) -> dict[str, Any]:
        return {"mean": self.mean}

    def _load(self, state: dict[str, Any]) -> None:
        self.mean = float(state["mean"])
