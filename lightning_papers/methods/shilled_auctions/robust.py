"""The robust branch: interval elimination on K_r = ⌈T^{1/3}⌉ bids from own-pull win rates only.

It ignores the (possibly shilled) loss reports altogether: the win frequency of bid x estimates F_m(x) without
bias whatever the shill does, as in posted pricing with binary feedback (Kleinberg–Leighton). Bids are swept
round-robin over the active interval; regret Õ(T^{2/3}) (arXiv 2605.22438, robust branch).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from lightning_papers.methods.shilled_auctions.base import GridElimination
from lightning_papers.methods.shilled_auctions.config import BiddingConfig


class RobustLearner(GridElimination):
    """Round-robin interval elimination with Hoeffding intervals of the own-pull win rates.

    Args:
        replicas: R.
        value: v.
        horizon: T (sets the grid K_r = ⌈T^{robust_exponent}⌉ and the log term).
        config: Hyper-parameters.
        device: Where the state lives.
    """

    def __init__(
        self, replicas: int, value: float, horizon: int, config: BiddingConfig | None = None, device: Any = "cpu"
    ) -> None:
        config = config or BiddingConfig()
        super().__init__(replicas, value, horizon, config.grid_size(horizon, config.robust_exponent), config, device)

    def bids(self, n: int) -> Tensor:
        j = self.plays[None, :] + torch.arange(n, device=self.device)[:, None]
        return self.grid[self.sweep(j)]
