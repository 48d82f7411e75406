"""The optimistic branch: elimination on K_o = ⌈√T⌉ bids with debiased suffix statistics, validated.

For a bid b and any x > b, a loss with report R ≤ x means b < m ≤ x and s ≤ x, so (arXiv 2605.22438)

    P(R ≤ x, loss | b) = (F_m(x) − F_m(b))·F_s(x),   hence   F_m(x) = F_m(b) + P(R ≤ x, loss | b) / F_s(x),

and Z_x = 1{win} + 1{loss}·1{R ≤ x}/F_s(x) is an unbiased estimate of F_m(x) on every round whose bid is at
most x (the "suffix"). Z_x lies in [0, 1/F_s(x)]: its empirical-Bernstein interval
Ẑ ± (√(2·V̂·L/N) + 3L/(F_s(x)·N)) is narrow where low shills are common and wide where they are rare.
A loss report R > b_t counts for every x ≥ R, and a win for every x ≥ b_t, so the suffix sums at all grid points
are cumulative sums of per-bid win counts and a histogram of loss reports (O(1) work per round).

Every other own play bids the lowest active bid (the most suffix information), the others sweep the active
interval round-robin, which keeps own-pull win rates at every active bid. Validation [design]: a replica stops
trusting Z for good when, at some bid, the Z-interval is disjoint from the own-pull interval, or when the pooled
discrepancy Σ_j N_j·(own win rate_j − Ẑ_j) over all bids exceeds what both sets of intervals allow (a systematic
bias shows there long before it shows at one bid). Until then it uses the intersection of both intervals; after,
it sweeps the robust branch's ⌈T^{1/3}⌉-point sub-grid of its active interval with own-pull intervals only.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from lightning_papers.datamodules.auction_distributions import BidDistribution
from lightning_papers.methods.shilled_auctions.base import GridElimination, report_bin
from lightning_papers.methods.shilled_auctions.config import BiddingConfig


class OptimisticLearner(GridElimination):
    """Suffix-debiased elimination on √T bids (validated against own-pull win rates).

    Args:
        replicas: R.
        value: v.
        horizon: T (sets K_o = ⌈T^{optimistic_exponent}⌉ and the log term).
        shill: The shill CDF F_s the learner believes; it must be > 0 at every grid bid (Z_x divides by it).
        config: Hyper-parameters (``validate`` switches the validation step).
        device: Where the state lives.
        validate: Overrides ``config.validate`` (the naive baseline runs without validation).
    """

    def __init__(
        self,
        replicas: int,
        value: float,
        horizon: int,
        shill: BidDistribution,
        config: BiddingConfig | None = None,
        device: Any = "cpu",
        validate: bool | None = None,
    ) -> None:
        config = config or BiddingConfig()
        super().__init__(
            replicas, value, horizon, config.grid_size(horizon, config.optimistic_exponent), config, device
        )
        self.validate = config.validate if validate is None else validate
        self.shill_cdf = shill.cdf(self.grid).to(torch.float64)
        if bool((self.shill_cdf <= 0).any()):
            j = int(torch.nonzero(self.shill_cdf <= 0)[0, 0])
            raise ValueError(
                f"the believed shill CDF is F_s(x)={float(self.shill_cdf[j])} at grid bid x={float(self.grid[j]):.6g}; "
                "the debiased statistic Z_x = 1{win} + 1{loss, R<=x}/F_s(x) needs F_s(x) > 0 on the whole grid "
                f"(0, v={value}]. Use a shill law with mass near 0, or the robust learner, which never divides by F_s"
            )
        self.stride = max(1, round(self.K / config.grid_size(horizon, config.robust_exponent)))
        self.losses = torch.zeros(self.replicas, self.K + 1, dtype=torch.float64, device=self.device)
        self.rounds = torch.zeros_like(self.losses)
        self.suffix_wins = torch.zeros_like(self.losses)
        self.trusted = torch.ones(self.replicas, dtype=torch.bool, device=self.device)

    def bids(self, n: int) -> Tensor:
        j = self.plays[None, :] + torch.arange(n, device=self.device)[:, None]
        trusted = self.trusted[None, :]
        idx = torch.where(trusted & (j % 2 == 0), self.lo[None, :].expand_as(j), self.sweep(j // 2))
        if not bool(self.trusted.all()):  # fallback: sweep the robust branch's coarser sub-grid of the active set
            s = self.stride
            c_lo, c_hi = (self.lo + s) // s - 1, (self.hi + 1) // s - 1
            size = (c_hi - c_lo + 1).clamp_min(1)
            coarse = s * (c_lo + torch.remainder(j, size) + 1) - 1
            fallback = torch.where((c_hi >= c_lo)[None, :], coarse, self.sweep(j))
            idx = torch.where(trusted, idx, fallback)
        return self.grid[idx]

    def record(self, k: Tensor, bids: Tensor, won: Tensor, reports: Tensor) -> None:
        # a round counts for Z_x at every x >= its bid: bin it at the smallest grid bid >= b, likewise its report
        k_t, won_t = k.T.contiguous(), won.T.contiguous()
        self.rounds.scatter_add_(1, k_t, torch.ones_like(won_t))
        self.suffix_wins.scatter_add_(1, k_t, won_t)
        rep = torch.where(won > 0, bids, reports)
        self.losses.scatter_add_(1, report_bin(rep, self.grid, self.value).T.contiguous(), 1.0 - won_t)

    def suffix_bounds(self) -> tuple[Tensor, Tensor]:
        """Empirical-Bernstein interval of F_m(x_j) from Z_{x_j} over all rounds with bid <= x_j."""
        n = torch.cumsum(self.rounds[:, : self.K], 1)
        w = torch.cumsum(self.suffix_wins[:, : self.K], 1)
        c = torch.cumsum(self.losses[:, : self.K], 1)
        fs = self.shill_cdf[None, :]
        nn = n.clamp_min(1.0)
        mean = (w + c / fs) / nn
        second = (w + c / fs**2) / nn
        var = (second - mean**2).clamp_min(0.0)
        width = torch.sqrt(2 * var * self.log_term / nn) + 3 * self.log_term / (fs * nn)
        width = torch.where(n > 0, width, torch.full_like(width, 2.0))
        self._z_mean_width = (mean, width)
        return (mean - width).clamp(0, 1), (mean + width).clamp(0, 1)

    def cdf_bounds(self) -> tuple[Tensor, Tensor]:
        z_lo, z_hi = self.suffix_bounds()
        if not self.validate:
            return z_lo, z_hi
        o_lo, o_hi = self.own_bounds()
        disjoint = ((z_lo > o_hi) | (z_hi < o_lo)).any(1)
        # pooled test: Σ_j N_j·(own rate_j − Ẑ_j) is within √(N·L/2) (Azuma) + Σ_j N_j·(Z half-width_j) if F_s is right
        mean, half = self._z_mean_width
        n = self.pulls
        gap = (self.wins - n * mean).sum(1).abs()
        pooled = gap > torch.sqrt(n.sum(1) * self.log_term / 2) + (n * half).sum(1)
        self.trusted &= ~(disjoint | pooled)
        t = self.trusted[:, None]
        return torch.where(t, torch.maximum(z_lo, o_lo), o_lo), torch.where(t, torch.minimum(z_hi, o_hi), o_hi)

    def diagnostics(self) -> dict[str, float]:
        return {**super().diagnostics(), "z_trusted": float(self.trusted.double().mean())}

    def state_dict(self) -> dict[str, Any]:
        extra = ("losses", "rounds", "suffix_wins", "trusted")
        return {**super().state_dict(), **{k: getattr(self, k).cpu().clone() for k in extra}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        for k in ("losses", "rounds", "suffix_wins", "trusted"):
            setattr(self, k, state[k].to(self.device).clone())
