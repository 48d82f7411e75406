"""The one dataclass of the bidding learners' hyper-parameters."""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass
class BiddingConfig:
    """Hyper-parameters shared by the learners, the module and the benchmark (arXiv 2605.22438).

    The grid sizes T^{1/3} and √T are the tunings behind the abstract's Õ(T^{2/3}) and Õ(√T) rates; the other
    defaults are this reconstruction's choices ([design], see docs/shilled_auctions.md).

    Args:
        delta: Failure probability of all confidence intervals of one learner together; the log term of every
            interval is L = log(2·K·T/δ) (union over K grid bids and T rounds).
        robust_exponent: The robust branch bids on K_r = ⌈T^{robust_exponent}⌉ grid points (paper: 1/3, the
            dynamic-pricing tuning).
        optimistic_exponent: The optimistic branch bids on K_o = ⌈T^{optimistic_exponent}⌉ points (paper: 1/2).
        check_fraction: Eliminations are re-evaluated every max(K, ⌈check_fraction·t⌉) rounds (between two
            checks a learner's bids are fixed in advance, which lets the bidding loop run rounds in blocks).
        validate: The optimistic branch drops its debiased suffix statistics in a replica as soon as one of their
            intervals is disjoint from the own-pull interval at the same bid (the paper's validation step).
        race_first_check: First racing checkpoint c; the race compares its branches at rounds c, 2c, 4c, …
        race_warmup: The first checkpoint is at least race_warmup × the larger branch grid (8·⌈√T⌉ rounds for the
            optimistic branch): a branch is not judged on its first sweeps, where the optimistic branch pays most
            (without it the race dropped the optimistic branch at the first check on S0 at large T).
        race_delta: Failure probability of the race's Hoeffding comparisons.
        exp3_exponent: EXP3-IX bids on ⌈T^{exp3_exponent}⌉ grid points.
        first_horizon: Length of the first phase of the anytime (doubling) versions; phase k lasts
            first_horizon·2^k rounds with a fresh learner tuned for that length.
    """

    delta: float = 0.05
    robust_exponent: float = 1.0 / 3.0
    optimistic_exponent: float = 0.5
    check_fraction: float = 1.0 / 16.0
    validate: bool = True
    race_first_check: int = 1024
    race_warmup: float = 8.0
    race_delta: float = 0.05
    exp3_exponent: float = 1.0 / 3.0
    first_horizon: int = 1024

    def __post_init__(self) -> None:
        for name in ("delta", "race_delta"):
            value = getattr(self, name)
            if not 0 < value < 1:
                raise ValueError(f"{name} must be in (0, 1), got {value}")
        for name in ("robust_exponent", "optimistic_exponent", "exp3_exponent"):
            value = getattr(self, name)
            if not 0 < value <= 1:
                raise ValueError(f"{name} must be in (0, 1], got {value}")
        if not self.race_warmup >= 0:
            raise ValueError(f"race_warmup must be >= 0, got {self.race_warmup}")
        if not 0 < self.check_fraction <= 1:
            raise ValueError(f"check_fraction must be in (0, 1], got {self.check_fraction}")
        for name in ("race_first_check", "first_horizon"):
            value = getattr(self, name)
            if int(value) != value or value < 2:
                raise ValueError(f"{name} must be an integer >= 2, got {value}")

    def grid_size(self, horizon: int, exponent: float) -> int:
        """K = ⌈T^exponent⌉ (at least 2)."""
        return max(2, math.ceil(horizon**exponent - 1e-9))

    def log_term(self, grid: int, horizon: int) -> float:
        """L = log(2·K·T/δ)."""
        return math.log(2.0 * grid * max(horizon, 2) / self.delta)
