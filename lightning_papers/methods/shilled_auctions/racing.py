"""The race: robust and optimistic branches interleaved, the worse one dropped at doubling checkpoints.

Rounds alternate between the two branches (even rounds: robust, odd rounds: optimistic) while both are alive; each
branch keeps its own statistics and bidding schedule, and learns from every round (a round's outcome is an
observation whichever branch chose the bid: the robust branch counts wins at its own grid bids, the optimistic
branch also feeds its suffix statistics). The bidder observes its realised utility
u_t = (v − b_t)·1{win}, whatever the shill does, so at rounds c, 2c, 4c, … the race compares the branches' mean
realised utilities with Hoeffding intervals (utilities lie in [0, v]) and drops a branch whose upper bound is
below the other's lower bound; from then on the survivor plays every round (arXiv 2605.22438, validation and
racing). Decisions are per replica.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from lightning_papers.methods.shilled_auctions.base import Learner, as_rows
from lightning_papers.methods.shilled_auctions.config import BiddingConfig


class RacingLearner(Learner):
    """Race a robust and an optimistic learner (or any two learners) per replica.

    Args:
        robust: Branch 0 (plays even rounds while both are alive).
        optimistic: Branch 1 (plays odd rounds).
        config: ``race_first_check`` and ``race_delta``.
    """

    def __init__(self, robust: Learner, optimistic: Learner, config: BiddingConfig | None = None) -> None:
        self.config = config or BiddingConfig()
        self.branches = [robust, optimistic]
        self.replicas, self.value, self.device = robust.replicas, robust.value, robust.device
        if optimistic.replicas != self.replicas:
            raise ValueError(f"both branches need the same R, got {robust.replicas} and {optimistic.replicas}")
        self.t, self.checks = 0, 0
        # neither branch is judged before it could sweep its grid a few times (race_warmup × the larger grid)
        grid = max(getattr(robust, "K", 0), getattr(optimistic, "K", 0))
        self.next_check = max(self.config.race_first_check, math.ceil(self.config.race_warmup * grid))
        self.alive = torch.ones(self.replicas, 2, dtype=torch.bool, device=self.device)
        self.utility = torch.zeros(self.replicas, 2, dtype=torch.float64, device=self.device)
        self.rounds = torch.zeros(self.replicas, 2, dtype=torch.float64, device=self.device)

    def block_length(self) -> int:
        return max(1, min(self.next_check - self.t, *(b.block_length() for b in self.branches)))

    def assignment(self, n: int) -> tuple[Tensor, Tensor]:
        """(branch [n, R] of each round, slot [n, R]: its index among that branch's plays in this block)."""
        parity = ((self.t + torch.arange(n, device=self.device)) % 2)[:, None]
        both = self.alive.all(1)[None, :]
        only_opt = (~self.alive[:, 0] & self.alive[:, 1])[None, :]
        branch = torch.where(both, parity, only_opt.long()).expand(n, self.replicas)
        is_opt = branch.to(torch.float64)
        slot = torch.where(branch == 1, torch.cumsum(is_opt, 0) - 1, torch.cumsum(1 - is_opt, 0) - 1).long()
        return branch, slot

    def bids(self, n: int) -> Tensor:
        branch, slot = self.assignment(n)
        b0, b1 = (b.bids(n) for b in self.branches)
        return torch.where(branch == 0, b0.gather(0, slot), b1.gather(0, slot))

    def hide_value(self) -> Learner:
        self.value_known = False
        for b in self.branches:
            b.hide_value()
        return self

    def update(
        self, bids: Tensor, won: Tensor, reports: Tensor, plays: Tensor | None = None, values: Tensor | None = None
    ) -> None:
        if plays is not None:
            raise ValueError("the race plays every round itself; it takes no plays count")
        shown = values
        bids, won, reports = as_rows(bids, won, reports)
        n = bids.shape[0]
        branch, _ = self.assignment(n)
        if self.value_known:
            util = (self.value - bids) * won
        else:  # the realised utility needs v_t only on won rounds, where the auction shows it
            if values is None:
                raise ValueError("the race does not know v (hide_value()): update needs values=")
            v = values.reshape(n, self.replicas).to(torch.float64)
            util = torch.where(won > 0, v - bids, torch.zeros_like(bids))
        for k, learner in enumerate(self.branches):
            mine = (branch == k).to(torch.float64)
            learner.update(bids, won, reports, plays=mine.sum(0), values=shown)  # every round informs both
            self.utility[:, k] += (util * mine).sum(0)
            self.rounds[:, k] += mine.sum(0)
        self.t += n
        if self.t >= self.next_check:
            self.compare()
            self.next_check *= 2

    def compare(self) -> None:
        """Drop, per replica, a branch whose mean realised utility is significantly below the other's."""
        self.checks += 1
        n = self.rounds.clamp_min(1.0)
        mean = self.utility / n
        radius = self.value * torch.sqrt(math.log(4.0 * self.checks**2 / self.config.race_delta) / (2 * n))
        both = self.alive.all(1)
        drop0 = both & (mean[:, 0] + radius[:, 0] < mean[:, 1] - radius[:, 1])
        drop1 = both & (mean[:, 1] + radius[:, 1] < mean[:, 0] - radius[:, 0])
        self.alive[:, 0] &= ~drop0
        self.alive[:, 1] &= ~drop1

    def diagnostics(self) -> dict[str, float]:
        out = {
            "robust_alive": float(self.alive[:, 0].double().mean()),
            "optimistic_alive": float(self.alive[:, 1].double().mean()),
        }
        out.update({f"optimistic_{k}": v for k, v in self.branches[1].diagnostics().items()})
        return out

    def state_dict(self) -> dict[str, Any]:
        return {
            "t": self.t, "checks": self.checks, "next_check": self.next_check,
            "alive": self.alive.cpu().clone(), "utility": self.utility.cpu().clone(),
            "rounds": self.rounds.cpu().clone(), "branches": [b.state_dict() for b in self.branches],
        }  # fmt: skip

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.t, self.checks, self.next_check = int(state["t"]), int(state["checks"]), int(state["next_check"])
        for k in ("alive", "utility", "rounds"):
            setattr(self, k, state[k].to(self.device).clone())
        for b, s in zip(self.branches, state["branches"]):
            b.load_state_dict(s)
