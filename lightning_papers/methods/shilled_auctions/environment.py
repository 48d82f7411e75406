"""Repeated first-price auctions with feedback-only shilling, vectorised over R independent replicas.

Model (arXiv 2605.22438, abstract): in round t the learner of replica r bids b ∈ [0, v] against a competing bid
m ~ F_m (unknown to it) and an independent shill bid s ~ F_s (known to it). It wins iff b >= m and then earns
v − b; a win reveals nothing more. After a loss it observes the report R = max(m, s): the shill changes what is
seen, never who wins. The benchmark is the best fixed bid, U(b) = (v − b)·F_m(b), b* = argmax U, and the
pseudo-regret of replica r after T rounds is Σ_t U(b*) − U(b_t) (computed exactly from F_m, never sampled).

The value may be unknown (``value_revealed="on_win"``): then v_t ~ F_v is drawn i.i.d. per round (``values``; a
fixed v when ``values`` is None) and shown to the learner only when it wins; after a loss the learner sees the
report and nothing about v_t. Since v_t is independent of m_t and of the bid, the benchmark is the expected
utility U(b) = E[(v_t − b)·1{b >= m_t}] = (E[v] − b)·F_m(b): b* and the pseudo-regret are those of a known value
E[v]. ``value_revealed="always"`` with random ``values`` shows v_t after every round.

``transparent=True`` is the fully transparent auction of the baselines (the competing bid is reported on every
round, also after a win); the learners of the method never need it.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from lightning_papers.datamodules.auction_distributions import (
    BidDistribution,
    draw_rounds,
    draw_values,
    exact_mean,
    support_of,
)

ValueRevealed = Literal["always", "on_win"]


def best_bid(competing: BidDistribution, value: float, points: int = 1 << 16) -> tuple[float, float]:
    """(b*, U(b*)): the maximiser of U(b) = (v − b)·F_m(b) on a grid of ``points`` bids, refined by golden section."""
    x = torch.linspace(0.0, value, points + 1, dtype=torch.float64)
    u = (value - x) * competing.cdf(x)
    j = int(torch.argmax(u))
    lo, hi = x[max(j - 1, 0)].item(), x[min(j + 1, points)].item()
    best_x, best_u = x[j].item(), u[j].item()
    g = (5**0.5 - 1) / 2
    for _ in range(60):
        c, d = hi - g * (hi - lo), lo + g * (hi - lo)
        uc, ud = (value - torch.tensor([c, d], dtype=torch.float64)) * competing.cdf(
            torch.tensor([c, d], dtype=torch.float64)
        )
        if uc >= ud:
            hi = d
        else:
            lo = c
        for xx, uu in ((c, float(uc)), (d, float(ud))):
            if uu > best_u:
                best_x, best_u = xx, uu
    return best_x, best_u


class ShilledAuctionEnv:
    """R independent repeated first-price auctions with shilled loss feedback.

    Args:
        competing: F_m, the law of the real competing bid (unknown to the learner).
        shill: The true law of the shill bid s (``PointMass(0)``: no shill).
        value: The bidder's value v > 0 (known to the learner unless ``value_revealed="on_win"``); with random
            ``values`` it is the largest value, and bids lie in [0, v] either way.
        replicas: R >= 1.
        seed: Seed of the counter-based random stream (see ``counter_uniform``).
        first_replica: Id of the first replica: replica ``first_replica + i`` sees the same rounds whether it
            runs alone or among many.
        device: Where the tensors live.
        transparent: Report the competing bid on every round (the fully transparent baseline auction).
        histogram_bins: If > 0, count the bids played in that many equal bins of [0, v] (``bid_histogram``).
        values: F_v, the law of the per-round value v_t (support in [0, v]); None: v_t = v every round.
        value_revealed: ``always`` (v, or v_t after each round, is known) or ``on_win`` (v_t is shown only after a
            win: ``step_with_values`` returns NaN for it after a loss).

    Example::

        env = ShilledAuctionEnv(Uniform(0, 1), Uniform(0, 1), replicas=8)
        won, reports = env.step(torch.full((8,), 0.5))   # reports is NaN where won
        env.regret                                        # [8] cumulative pseudo-regret
    """

    def __init__(
        self,
        competing: BidDistribution,
        shill: BidDistribution,
        value: float = 1.0,
        replicas: int = 1000,
        seed: int = 0,
        first_replica: int = 0,
        device: str | torch.device = "cpu",
        transparent: bool = False,
        histogram_bins: int = 0,
        values: BidDistribution | None = None,
        value_revealed: ValueRevealed = "always",
    ) -> None:
        if not (isinstance(value, (int, float)) and value > 0 and value < float("inf")):
            raise ValueError(f"value v must be a finite number > 0, got {value}")
        if int(replicas) != replicas or replicas < 1:
            raise ValueError(f"replicas R must be an integer >= 1, got {replicas}")
        if first_replica < 0:
            raise ValueError(f"first_replica must be >= 0, got {first_replica}")
        if value_revealed not in ("always", "on_win"):
            raise ValueError(f"value_revealed must be 'always' or 'on_win', got {value_revealed!r}")
        if values is not None:
            low, high = support_of(values)
            if not (0 <= low and high <= value):
                raise ValueError(
                    f"the value law {values!r} must lie in [0, v={value}] (bids are capped at v), got support "
                    f"[{low}, {high}]"
                )
        self.values, self.value_revealed = values, value_revealed
        #: True when the learner knows the (fixed) value v; otherwise it must estimate E[v] from revealed values.
        self.value_known = values is None and value_revealed == "always"
        self.mean_value = float(value) if values is None else exact_mean(values)
        self.competing, self.shill, self.value = competing, shill, float(value)
        self.replicas, self.seed, self.transparent = int(replicas), int(seed), transparent
        self.device = torch.device(device)
        self.replica_ids = torch.arange(first_replica, first_replica + self.replicas, device=self.device)
        self.best_bid, self.best_utility = best_bid(competing, self.mean_value)
        self.t = 0
        self.regret = torch.zeros(self.replicas, dtype=torch.float64, device=self.device)
        self.histogram_bins = int(histogram_bins)
        self.bid_histogram = torch.zeros(max(self.histogram_bins, 1), dtype=torch.float64, device=self.device)

    def utility(self, bids: Tensor) -> Tensor:
        """U(b) = (E[v] − b)·F_m(b), exact (E[v] = v for a fixed value)."""
        bids = bids.to(torch.float64)
        return (self.mean_value - bids) * self.competing.cdf(bids)

    def check_bids(self, bids: Tensor) -> Tensor:
        """Bids must be ``[R]`` or ``[n, R]`` finite numbers in [0, v]; the message names the first bad bid."""
        if bids.ndim not in (1, 2) or bids.shape[-1] != self.replicas:
            raise ValueError(f"bids must have shape [R] or [n, R] with R={self.replicas}, got {tuple(bids.shape)}")
        bad = ~torch.isfinite(bids) | (bids < 0) | (bids > self.value)
        if bool(bad.any()):
            idx = tuple(int(i) for i in torch.nonzero(bad)[0])
            raise ValueError(f"bids must be finite and in [0, v={self.value}], got {float(bids[idx])} at {idx}")
        return bids.reshape(-1, self.replicas).to(torch.float64)

    def draw(self, n: int) -> tuple[Tensor, Tensor]:
        """(m, s) of the next ``n`` rounds, ``[n, R]`` (the same values a datamodule serves for these rounds)."""
        return draw_rounds(self.competing, self.shill, self.seed, self.t, n, self.replica_ids)

    def draw_values(self, n: int) -> Tensor:
        """v_t of the next ``n`` rounds, ``[n, R]`` (v itself when the value is fixed)."""
        if self.values is None:
            return torch.full((n, self.replicas), self.value, dtype=torch.float64, device=self.device)
        return draw_values(self.values, self.seed, self.t, n, self.replica_ids)

    def step(self, bids: Tensor, m: Tensor | None = None, s: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Play one round (``bids`` of shape [R]) or n rounds ([n, R]); returns (won, reports), shaped like ``bids``.

        ``reports`` is NaN wherever the bidder won (a win reveals nothing) and max(m, s) after a loss. ``m`` and
        ``s`` may be given (a datamodule's block of these rounds); otherwise they are drawn for rounds t, t+1, …
        (With an unknown value use :meth:`step_with_values`, which also returns what is shown of v_t.)
        """
        if self.value_known:
            return self._play(bids, m, s)
        won, reports, _ = self.step_with_values(bids, m, s)
        return won, reports

    def step_with_values(
        self, bids: Tensor, m: Tensor | None = None, s: Tensor | None = None, v: Tensor | None = None
    ) -> tuple[Tensor, Tensor, Tensor]:
        """As :meth:`step`, plus the values shown to the learner, shaped like ``bids``: v_t after a win, and after
        a loss too only if ``value_revealed="always"`` (NaN otherwise). ``v`` may be given with ``m`` and ``s``."""
        n = self.check_bids(bids).shape[0]
        if v is None:
            v = self.draw_values(n)
        won, reports = self._play(bids, m, s)
        v = v.reshape(won.shape).to(torch.float64)
        shown = v if self.value_revealed == "always" else torch.where(won, v, torch.full_like(v, float("nan")))
        return won, reports, shown

    def _play(self, bids: Tensor, m: Tensor | None, s: Tensor | None) -> tuple[Tensor, Tensor]:
        flat = self.check_bids(bids)
        n = flat.shape[0]
        if m is None or s is None:
            m, s = self.draw(n)
        m, s = m.reshape(n, self.replicas).to(flat), s.reshape(n, self.replicas).to(flat)
        won = flat >= m
        seen = m if self.transparent else torch.maximum(m, s)
        reports = torch.where(won & (not self.transparent), torch.full_like(seen, float("nan")), seen)
        self.regret += (self.best_utility - self.utility(flat)).sum(0)
        if self.histogram_bins:
            self.bid_histogram += torch.histc(flat, self.histogram_bins, 0.0, self.value)
        self.t += n
        return won.reshape(bids.shape), reports.reshape(bids.shape)

    def state_dict(self) -> dict:
        return {"t": self.t, "regret": self.regret.cpu().clone(), "bid_histogram": self.bid_histogram.cpu().clone()}

    def load_state_dict(self, state: dict) -> None:
        self.t = int(state["t"])
        self.regret = state["regret"].to(self.device, torch.float64).clone()
        self.bid_histogram = state["bid_histogram"].to(self.device, torch.float64).clone()
