"""Baselines: EXP3-IX on a grid (bandit feedback only), the transparent-auction learner and the oracle.

The naive learner, which trusts a report as if it were the competing bid, is the optimistic learner with
F_s ≡ 1 and no validation (``build_learner("naive", ...)``).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from lightning_papers.datamodules.auction_distributions import counter_uniform
from lightning_papers.methods.shilled_auctions.base import Learner, as_rows, report_bin
from lightning_papers.methods.shilled_auctions.config import BiddingConfig


class _GridLearner(Learner):
    def __init__(self, replicas: int, value: float, grid: int, device: Any) -> None:
        if int(replicas) != replicas or replicas < 1:
            raise ValueError(f"replicas R must be an integer >= 1, got {replicas}")
        if not (value > 0 and math.isfinite(value)):
            raise ValueError(f"value v must be a finite number > 0, got {value}")
        self.replicas, self.value, self.device, self.K = int(replicas), float(value), torch.device(device), grid
        self.grid = value * torch.arange(1, grid + 1, dtype=torch.float64, device=self.device) / grid
        self.t = 0


class Exp3Learner(_GridLearner):
    """EXP3-IX (Neu 2015) on K = ⌈T^{1/3}⌉ grid bids with loss 1 − u_t/v; sees only its own utility.

    Args:
        replicas: R.
        value: v.
        horizon: T (sets K and the learning rate η = √(2 log K / (K·T)), implicit exploration γ = η/2).
        config: ``exp3_exponent``.
        seed: Seed of the sampling (a counter-based stream: replica r's draws do not depend on R).
        first_replica: Id of replica 0 (replica ids index the random stream).
        device: Where the state lives.
    """

    def __init__(self, replicas: int, value: float, horizon: int, config: BiddingConfig | None = None,
                 seed: int = 0, first_replica: int = 0, device: Any = "cpu") -> None:  # fmt: skip
        config = config or BiddingConfig()
        super().__init__(replicas, value, config.grid_size(horizon, config.exp3_exponent), device)
        self.eta = math.sqrt(2 * math.log(self.K) / (self.K * max(horizon, 1)))
        self.gamma, self.seed = self.eta / 2, int(seed)
        self.ids = torch.arange(first_replica, first_replica + self.replicas, device=self.device)
        self.loss = torch.zeros(self.replicas, self.K, dtype=torch.float64, device=self.device)
        self._last: tuple[Tensor, Tensor] | None = None

    def probabilities(self) -> Tensor:
        return torch.softmax(-self.eta * (self.loss - self.loss.min(1, keepdim=True).values), 1)

    def bids(self, n: int) -> Tensor:
        if n != 1:
            raise ValueError(f"EXP3-IX updates every round; it bids one round at a time, asked for {n}")
        p = self.probabilities()
        u = counter_uniform(self.seed, 2, self.ids, torch.tensor([self.t], device=self.device))[0]
        j = torch.searchsorted(torch.cumsum(p, 1), u[:, None]).clamp_max(self.K - 1)[:, 0]
        self._last = (j, p.gather(1, j[:, None])[:, 0])
        return self.grid[j][None, :]

    def update(
        self, bids: Tensor, won: Tensor, reports: Tensor, plays: Tensor | None = None, values: Tensor | None = None
    ) -> None:
        bids, won, _ = as_rows(bids, won, reports)
        if bids.shape[0] != 1 or self._last is None:
            raise ValueError("EXP3-IX is updated once per round, right after bids(1)")
        j, p = self._last
        if self.value_known:
            loss = 1.0 - (self.value - bids[0]) * won[0] / self.value
        else:  # realised utility (v_t − b)·1{win} ∈ [−v, v] (v_t is shown on a win), mapped to a loss in [0, 1]
            if values is None:
                raise ValueError("EXP3-IX does not know v (hide_value()): update needs values=")
            v = values.reshape(1, self.replicas).to(torch.float64)[0]
            loss = 0.5 - torch.where(won[0] > 0, v - bids[0], torch.zeros_like(v)) / (2 * self.value)
        self.loss.scatter_add_(1, j[:, None], (loss / (p + self.gamma))[:, None])
        self._last = None
        self.t += 1

    def state_dict(self) -> dict[str, Any]:
        return {"t": self.t, "loss": self.loss.cpu().clone()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.t, self.loss = int(state["t"]), state["loss"].to(self.device).clone()


class TransparentLearner(_GridLearner):
    """Follow the leader on √T grid bids with the empirical CDF of competing bids seen on *every* round.

    Needs a transparent auction (``ShilledAuctionEnv(..., transparent=True)``: the competing bid is reported
    after wins too); the best case of the baselines. The leader is recomputed every max(K, t/16) rounds.
    """

    def __init__(self, replicas: int, value: float, horizon: int, config: BiddingConfig | None = None,
                 device: Any = "cpu") -> None:  # fmt: skip
        config = config or BiddingConfig()
        super().__init__(replicas, value, config.grid_size(horizon, config.optimistic_exponent), device)
        self.config, self.next_check = config, 1
        self.counts = torch.zeros(self.replicas, self.K + 1, dtype=torch.float64, device=self.device)
        self.choice = torch.full((self.replicas,), self.K // 2, dtype=torch.int64, device=self.device)

    def block_length(self) -> int:
        return max(1, self.next_check - self.t)

    def bids(self, n: int) -> Tensor:
        return self.grid[self.choice][None, :].expand(n, self.replicas)

    def update(
        self, bids: Tensor, won: Tensor, reports: Tensor, plays: Tensor | None = None, values: Tensor | None = None
    ) -> None:
        self.observe_values(values)
        bids, _, reports = as_rows(bids, won, reports)
        if bool(torch.isnan(reports).any()):
            raise ValueError("the transparent learner needs the competing bid on every round (transparent=True)")
        k = report_bin(reports, self.grid, self.value)
        self.counts.scatter_add_(1, k.T, torch.ones_like(reports).T)
        self.t += bids.shape[0]
        if self.t >= self.next_check:
            cdf = torch.cumsum(self.counts[:, : self.K], 1) / self.counts.sum(1, keepdim=True).clamp_min(1.0)
            self.choice = torch.argmax((self.value_estimate()[:, None] - self.grid) * cdf, 1)
            self.next_check = self.t + max(self.K, math.ceil(self.config.check_fraction * self.t))

    def state_dict(self) -> dict[str, Any]:
        return {"t": self.t, "next_check": self.next_check, "counts": self.counts.cpu().clone(),
                "choice": self.choice.cpu().clone(), **self.value_state()}  # fmt: skip

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.t, self.next_check = int(state["t"]), int(state["next_check"])
        self.counts, self.choice = state["counts"].to(self.device).clone(), state["choice"].to(self.device).clone()
        self.load_value_state(state)


class FixedBidLearner(Learner):
    """Bids one fixed bid every round (the oracle when the bid is b*)."""

    def __init__(self, replicas: int, value: float, bid: float, device: Any = "cpu") -> None:
        if not 0 <= bid <= value:
            raise ValueError(f"the fixed bid must lie in [0, v={value}], got {bid}")
        self.replicas, self.value, self.fixed, self.t = int(replicas), float(value), float(bid), 0
        self.device = torch.device(device)

    def block_length(self) -> int:
        return 1 << 30

    def bids(self, n: int) -> Tensor:
        return torch.full((n, self.replicas), self.fixed, dtype=torch.float64, device=self.device)

    def update(
        self, bids: Tensor, won: Tensor, reports: Tensor, plays: Tensor | None = None, values: Tensor | None = None
    ) -> None:
        self.t += bids.reshape(-1, self.replicas).shape[0]

    def state_dict(self) -> dict[str, Any]:
        return {"t": self.t}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.t = int(state["t"])
