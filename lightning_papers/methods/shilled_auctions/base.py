"""The learner interface, the interval-elimination machinery both branches share, the bidding loop and the
anytime (doubling) wrapper.

A learner plays R replicas at once. ``bid(t)`` returns the bids of round t, ``update(bids, won, reports)``
feeds back what the auction revealed (``reports`` is NaN after a win). Between two decision points the bids of a
learner are fixed in advance, so ``block_length()`` says how many rounds may be bid at once (``bids(n)``), which
is what makes millions of replica-rounds per second possible; round-by-round and block-wise play give identical
results. ``update`` takes an optional ``plays`` [R]: how many of the rounds were the learner's own plays (its sweep
advances by that much); every round is still an observation it may learn from. The race uses it to share all
rounds with both branches while each keeps its own bidding schedule.

Unknown value (``hide_value()``, for an auction with ``value_revealed="on_win"`` or random values): ``update``
then also takes ``values`` (v_t where the auction showed it, NaN elsewhere), the learner keeps the running mean
v̂ of the values it was shown (under ``on_win``: of its won rounds only; v_t is independent of m_t and of the bid,
so these are i.i.d. draws of F_v) and uses E[v] ∈ [v̂ − w, v̂ + w], w = v·√(L/(2·n_v)) (Hoeffding, n_v values
seen; [0, v] before the first one) where a known v entered its utility bounds; ``value`` is then only the cap of
the bids.
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
    #: False after :meth:`hide_value`: v is not known and E[v] is estimated from the values the auction shows.
    value_known: bool = True

    def hide_value(self) -> Learner:
        """Forget v: from now on E[v] is estimated from the ``values`` given to ``update`` (returns ``self``)."""
        self.value_known = False
        self.value_sum = torch.zeros(self.replicas, dtype=torch.float64, device=self.device)
        self.value_count = torch.zeros(self.replicas, dtype=torch.float64, device=self.device)
        return self

    def observe_values(self, values: Tensor | None) -> None:
        """Add the shown values (``[R]`` or ``[n, R]``, NaN where hidden) to the running mean v̂."""
        if self.value_known:
            return
        if values is None:
            raise ValueError(
                "this learner does not know v (hide_value()): update(..., values=...) needs the values the auction "
                "showed (ShilledAuctionEnv.step_with_values)"
            )
        values = values.reshape(-1, self.replicas).to(torch.float64)
        seen = torch.isfinite(values)
        self.value_sum += torch.where(seen, values, torch.zeros_like(values)).sum(0)
        self.value_count += seen.sum(0).to(torch.float64)

    def value_estimate(self) -> Tensor:
        """v̂ per replica ``[R]`` (v itself when known; the cap v before any value was shown)."""
        if self.value_known:
            return torch.full((self.replicas,), self.value, dtype=torch.float64, device=self.device)
        mean = self.value_sum / self.value_count.clamp_min(1.0)
        return torch.where(self.value_count > 0, mean, torch.full_like(mean, self.value))

    def value_state(self) -> dict[str, Any]:
        if self.value_known:
            return {}
        return {"value_sum": self.value_sum.cpu().clone(), "value_count": self.value_count.cpu().clone()}

    def load_value_state(self, state: dict[str, Any]) -> None:
        if not self.value_known:
            self.value_sum = state["value_sum"].to(self.device, torch.float64).clone()
            self.value_count = state["value_count"].to(self.device, torch.float64).clone()

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

    def update(
        self, bids: Tensor, won: Tensor, reports: Tensor, plays: Tensor | None = None, values: Tensor | None = None
    ) -> None:
        """Learn from rounds ([R] or [n, R]); ``plays`` [R] counts the learner's own plays among them (all);
        ``values`` are the values shown (only read after :meth:`hide_value`)."""
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
    learner: Learner,
    env: Any,
    rounds: int,
    m: Tensor | None = None,
    s: Tensor | None = None,
    chunk: int = 1 << 16,
    v: Tensor | None = None,
) -> None:
    """Run ``rounds`` rounds of ``learner`` against ``env`` (a ``ShilledAuctionEnv``), in blocks of at most
    ``chunk`` replica-rounds (cache-sized); ``m``, ``s`` (and ``v``, random values) ([rounds, R]) are the rounds'
    draws if already made. A learner that does not know v gets the values the environment shows."""
    if learner.value_known != env.value_known:
        raise ValueError(
            f"the learner {'knows' if learner.value_known else 'does not know'} v but the auction has "
            f"value_revealed={env.value_revealed!r} and values={env.values!r}: build the learner with "
            f"value_known={env.value_known}"
        )
    done, cap = 0, max(1, chunk // learner.replicas)
    while done < rounds:
        n = min(learner.block_length(), rounds - done, cap)
        bids = learner.bids(n)
        given = (None,) * 2 if m is None or s is None else (m[done : done + n], s[done : done + n])
        if learner.value_known:
            won, reports = env.step(bids, *given)
            learner.update(bids, won, reports)
        else:
            vv = None if v is None or given[0] is None else v[done : done + n]
            won, reports, shown = env.step_with_values(bids, *given, vv)
            learner.update(bids, won, reports, values=shown)
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

    def update(
        self, bids: Tensor, won: Tensor, reports: Tensor, plays: Tensor | None = None, values: Tensor | None = None
    ) -> None:
        self.observe_values(values)
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
        if self.value_known:
            margin = self.value - self.grid
            best_lcb = (margin * lo_f).max(1, keepdim=True).values
            alive = margin * hi_f >= best_lcb
        else:  # E[v] in [v_lo, v_hi]: the utility interval of x_j is that of (E[v] − x_j)·F_m(x_j) over both boxes
            v_lo, v_hi = self.value_bounds()
            m_lo, m_hi = v_lo[:, None] - self.grid, v_hi[:, None] - self.grid
            ucb = torch.where(m_hi >= 0, m_hi * hi_f, m_hi * lo_f)
            lcb = torch.where(m_lo >= 0, m_lo * lo_f, m_lo * hi_f)
            alive = ucb >= lcb.max(1, keepdim=True).values
        k = torch.arange(self.K, device=self.device)
        self.lo = torch.where(alive, k, self.K).min(1).values
        self.hi = torch.where(alive, k, -1).max(1).values

    def value_bounds(self) -> tuple[Tensor, Tensor]:
        """Hoeffding interval of E[v] from the n_v values shown, w = v·√(L/(2·n_v)); [0, v] before any."""
        n = self.value_count.clamp_min(1.0)
        width = torch.where(
            self.value_count > 0, self.value * torch.sqrt(self.log_term / (2 * n)), torch.full_like(n, self.value)
        )
        mean = self.value_estimate()
        return (mean - width).clamp(0, self.value), (mean + width).clamp(0, self.value)

    def sweep(self, j: Tensor) -> Tensor:
        """Grid index of the j-th sweep position of each replica's active interval (j: [n, R])."""
        size = self.hi - self.lo + 1
        return self.lo + torch.remainder(j, size)

    def diagnostics(self) -> dict[str, float]:
        width = (self.hi - self.lo + 1).to(torch.float64) * self.value / self.K
        return {"active_width": float(width.mean())}

    def state_dict(self) -> dict[str, Any]:
        tensors = {k: getattr(self, k).cpu().clone() for k in ("pulls", "wins", "plays", "lo", "hi")}
        return {"t": self.t, "next_check": self.next_check, **tensors, **self.value_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.t, self.next_check = int(state["t"]), int(state["next_check"])
        for k in ("pulls", "wins", "plays", "lo", "hi"):
            setattr(self, k, state[k].to(self.device).clone())
        self.load_value_state(state)


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

    def hide_value(self) -> Learner:
        self.value_known = False
        self.inner.hide_value()
        return self

    def new_phase(self) -> Learner:
        inner = self.factory(self.phase_length)
        return inner if self.value_known else inner.hide_value()

    def update(
        self, bids: Tensor, won: Tensor, reports: Tensor, plays: Tensor | None = None, values: Tensor | None = None
    ) -> None:
        self.inner.update(bids, won, reports, plays, values)
        self.t += bids.reshape(-1, bids.shape[-1]).shape[0]
        if self.t >= self.phase_start + self.phase_length:
            self.phase_start, self.phase_length = self.t, 2 * self.phase_length
            self.inner = self.new_phase()

    def diagnostics(self) -> dict[str, float]:
        return self.inner.diagnostics()

    def state_dict(self) -> dict[str, Any]:
        return {"t": self.t, "phase_start": self.phase_start, "phase_length": self.phase_length,
                "inner": self.inner.state_dict()}  # fmt: skip

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.t, self.phase_start = int(state["t"]), int(state["phase_start"])
        self.phase_length = int(state["phase_length"])
        self.inner = self.new_phase()
        self.inner.load_state_dict(state["inner"])
