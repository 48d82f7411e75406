"""The learner interface, the interval-elimination machinery both branches share, the bidding loop and the
anytime (doubling) wrapper.

A learner plays R replicas at once. ``bid(t)`` returns the bids of round t, ``update(bids, won, reports)``
feeds back what the auction revealed (``reports`` is NaN after a win). Between two decision points the bids of a
learner are fixed in advance, so ``block_length()`` says how many rounds may be bid at once (``bids(n)``), which
is what makes millions of replica-rounds per second possible; round-by-round and block-wise play give identical
results. ``update`` takes an optional ``plays`` [R]: how many of the rounds were the learner's own plays (its sweep
advances by that much); every round is still an observation it may learn from. The race uses it to share all
rounds with both branches while each keeps its own bidding schedule.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from lightning_papers.methods.shilled_auctions.config import BiddingConfig


class Learner:
    """Base class: R replicas, a value v, a clock ``t`` (rounds seen, the same for all replicas)."""

    replicas: int
    value: float
    t: int
    device: torch.device

    def block_length(self) -> int:
        """Rounds that can be bid before the next decision point (>= 1)."""
        return 1

    def bids(self, n: int) -> Tensor:
        """Bids of the next ``n`` own plays, ``[n, R]``."""
        raise NotImplementedError

    def bid(self, t: int | None = None) -> Tensor:
        """Bids ``[R]`` of round ``t`` (the learner's next round; given to catch a loop that lost count)."""
        if t is not None and t != self.t:
            raise ValueError(f"the learner is at round {self.t}; asked to bid for round {t}")
        return self.bids(1)[0]

    def update(self, bids: Tensor, won: Tensor, reports: Tensor, plays: Tensor | None = None) -> None:
        """Learn from rounds ([R] or [n, R]); ``plays`` [R] counts the learner's own plays among them (all)."""
        raise NotImplementedError

    def diagnostics(self) -> dict[str, float]:
        """Scalars worth logging (mean over replicas)."""
        return {}

    def state_dict(self) -> dict[str, Any]:
        raise NotImplementedError

    def load_state_dict(self, state: dict[str, Any]) -> None:
        raise NotImplementedError


def as_rows(bids: Tensor, won: Tensor, reports: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Reshape one round ([R]) or a block ([n, R]) to [n, R] float64."""
    return tuple(x.reshape(-1, x.shape[-1]).to(torch.float64) for x in (bids, won, reports))


def report_bin(x: Tensor, grid: Tensor, value: float) -> Tensor:
    """Index of the smallest grid bid x_k = v·(k+1)/K with x_k >= x (K when x is above the grid), O(1) per value."""
    K = grid.numel()
    k = (torch.ceil(x * (K / value)) - 1).clamp(0, K).long()
    k = k + (grid[k.clamp_max(K - 1)] < x).long()  # repair rounding at a grid point
    k = k - ((k > 0) & (grid[(k - 1).clamp(0, K - 1)] >= x)).long()
    return k.clamp(0, K)


def play(
    learner: Learner, env: Any, rounds: int, m: Tensor | None = None, s: Tensor | None = None, chunk: int = 1 << 16
) -> None:
    """Run ``rounds`` rounds of ``learner`` against ``env`` (a ``ShilledAuctionEnv``), in blocks of at most
    ``chunk`` replica-rounds (cache-sized); ``m``, ``s`` ([rounds, R]) are the rounds' draws if already made."""
    done, cap = 0, max(1, chunk // learner.replicas)
    while done < rounds:
        n = min(learner.block_length(), rounds - done, cap)
        bids = learner.bids(n)
        if m is None or s is None:
            won, reports = env.step(bids)
        else:
            won, reports = env.step(bids, m[done : done + n], s[done : done + n])
        learner.update(bids, won, reports)
        done += n


class GridElimination(Learner):
    """Interval elimination on the grid x_j = v·j/K, j = 1..K, with own-pull statistics.

    Subclasses give the confidence interval of F_m at every grid bid (:meth:`cdf_bounds`) and the order in
    which the active interval is swept (:meth:`bids`). At each check the utility interval of bid x_j is
    (v − x_j)·[lo_j, hi_j]; bids whose upper end is below the best lower end are eliminated and the active set
    becomes the smallest interval of grid indices holding the survivors (recomputed from all statistics at each
    check, so a bid eliminated on evidence later withdrawn comes back). Intervals are also made monotone, since
    F_m is non-decreasing.
    """

    def __init__(
        self, replicas: int, value: float, horizon: int, grid: int, config: BiddingConfig, device: Any = "cpu"
    ) -> None:
        if int(replicas) != replicas or replicas < 1:
            raise ValueError(f"replicas R must be an integer >= 1, got {replicas}")
        if not (value > 0 and math.isfinite(value)):
            raise ValueError(f"value v must be a finite number > 0, got {value}")
        if int(horizon) != horizon or horizon < 1:
            raise ValueError(f"horizon T must be an integer >= 1, got {horizon}")
        self.replicas, self.value, self.horizon, self.config = int(replicas), float(value), int(horizon), config
        self.device = torch.device(device)
        self.K = int(grid)
        self.grid = value * torch.arange(1, self.K + 1, dtype=torch.float64, device=self.device) / self.K
        self.log_term = config.log_term(self.K, self.horizon)
        self.t = 0
        self.next_check = self.K
        shape = (self.replicas, self.K)
        self.pulls = torch.zeros(shape, dtype=torch.float64, device=self.device)
        self.wins = torch.zeros(shape, dtype=torch.float64, device=self.device)
        self.plays = torch.zeros(self.replicas, dtype=torch.int64, device=self.device)
        self.lo = torch.zeros(self.replicas, dtype=torch.int64, device=self.device)
        self.hi = torch.full((self.replicas,), self.K - 1, dtype=torch.int64, device=self.device)

    def block_length(self) -> int:
        return max(1, self.next_check - self.t)

    def own_bounds(self) -> tuple[Tensor, Tensor]:
        """Hoeffding interval of F_m(x_j) from the win frequency of bid x_j itself; [0, 1] if never played."""
        n = self.pulls.clamp_min(1.0)
        rate = self.wins / n
        width = torch.where(self.pulls > 0, torch.sqrt(self.log_term / (2 * n)), torch.ones_like(n))
        return (rate - width).clamp(0, 1), (rate + width).clamp(0, 1)

    def cdf_bounds(self) -> tuple[Tensor, Tensor]:
        return self.own_bounds()

    def record(self, k: Tensor, bids: Tensor, won: Tensor, reports: Tensor) -> None:
        """Extra statistics of a subclass; ``k`` is the bin of each bid (smallest grid bid >= it, K above)."""

    def update(self, bids: Tensor, won: Tensor, reports: Tensor, plays: Tensor | None = None) -> None:
        bids, won, reports = as_rows(bids, won, reports)
        k = report_bin(bids, self.grid, self.value)
        kc = k.clamp_max(self.K - 1)
        exact = ((self.grid[kc] - bids).abs() <= 1e-12 * self.value).to(torch.float64)  # own-pull stats: grid bids
        kc_t = kc.T.contiguous()  # [R, n]: scatter along the grid axis of the [R, K] statistics
        self.pulls.scatter_add_(1, kc_t, exact.T.contiguous())
        self.wins.scatter_add_(1, kc_t, (won * exact).T.contiguous())
        self.record(k, bids, won, reports)
        self.plays += bids.shape[0] if plays is None else plays.to(self.plays)
        self.t += bids.shape[0]
        if self.t >= self.next_check:
            self.eliminate()
            self.next_check = self.t + max(self.K, math.ceil(self.config.check_fraction * self.t))

    def eliminate(self) -> None:
        lo_f, hi_f = self.cdf_bounds()
        lo_f = torch.cummax(lo_f, 1).values  # F_m is non-decreasing
        hi_f = torch.flip(torch.cummin(torch.flip(hi_f, [1]), 1).values, [1])
        margin = self.value - self.grid
        best_lcb = (margin * lo_f).max(1, keepdim=True).values
        alive = margin * hi_f >= best_lcb
        k = torch.arange(self.K, device=self.device)
        self.lo = torch.where(alive, k, self.K).min(1).values
        self.hi = torch.where(alive, k, -1).max(1).values

    def sweep(self, j: Tensor) -> Tensor:
        """Grid index of the j-th sweep position of each replica's active interval (j: [n, R])."""
        size = self.hi - self.lo + 1
        return self.lo + torch.remainder(j, size)

    def diagnostics(self) -> dict[str, float]:
        width = (self.hi - self.lo + 1).to(torch.float64) * self.value / self.K
        return {"active_width": float(width.mean())}

    def state_dict(self) -> dict[str, Any]:
        tensors = {k: getattr(self, k).cpu().clone() for k in ("pulls", "wins", "plays", "lo", "hi")}
        return {"t": self.t, "next_check": self.next_check, **tensors}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.t, self.next_check = int(state["t"]), int(state["next_check"])
        for k in ("pulls", "wins", "plays", "lo", "hi"):
            setattr(self, k, state[k].to(self.device).clone())


class AnytimeLearner(Learner):
    """The doubling trick: phase k lasts ``first_horizon``·2^k rounds and runs a fresh learner tuned for it.

    Args:
        factory: Builds the learner of one phase from its horizon.
        first_horizon: Length of phase 0.
    """

    def __init__(self, factory: Callable[[int], Learner], first_horizon: int) -> None:
        self.factory, self.first_horizon = factory, int(first_horizon)
        self.phase_start, self.phase_length, self.t = 0, self.first_horizon, 0
        self.inner = factory(self.phase_length)
        self.replicas, self.value, self.device = self.inner.replicas, self.inner.value, self.inner.device

    def block_length(self) -> int:
        return max(1, min(self.inner.block_length(), self.phase_start + self.phase_length - self.t))

    def bids(self, n: int) -> Tensor:
        return self.inner.bids(n)

    def update(self, bids: Tensor, won: Tensor, reports: Tensor, plays: Tensor | None = None) -> None:
        self.inner.update(bids, won, reports, plays)
        self.t += bids.reshape(-1, bids.shape[-1]).shape[0]
        if self.t >= self.phase_start + self.phase_length:
            self.phase_start, self.phase_length = self.t, 2 * self.phase_length
            self.inner = self.factory(self.phase_length)

    def diagnostics(self) -> dict[str, float]:
        return self.inner.diagnostics()

    def state_dict(self) -> dict[str, Any]:
        return {"t": self.t, "phase_start": self.phase_start, "phase_length": self.phase_length,
                "inner": self.inner.state_dict()}  # fmt: skip

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.t, self.phase_start = int(state["t"]), int(state["phase_start"])
        self.phase_length = int(state["phase_length"])
        self.inner = self.factory(self.phase_length)
        self.inner.load_state_dict(state["inner"])
