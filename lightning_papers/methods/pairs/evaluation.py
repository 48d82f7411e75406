"""Score posterior estimates on simulated sets: KL(exact ‖ q) on a grid, standardised mean error, coverage, SBC.

Every estimate is reduced to log densities on the simulator's θ grid, ``[S, G]``, so learned heads and the
naive factorised baseline (which only exists on a grid) are scored by the same code: :class:`PosteriorScores`,
used by the LightningModule's validation and by the benchmark.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from lightning_papers.datamodules.set_simulators import SetSimulator
from lightning_papers.methods.pairs.encoder import DeepSetEncoder, embed_sets
from lightning_papers.methods.pairs.heads import PosteriorHead
from lightning_papers.metrics.posterior import (
    GridKL,
    PosteriorCoverage,
    SBCRanks,
    StandardizedMeanError,
    grid_marginal_cdf,
    grid_mean_sd,
)


@torch.no_grad()
def head_log_q_grid(
    encoder: DeepSetEncoder,
    head: PosteriorHead,
    grid: torch.Tensor,
    x: torch.Tensor,
    chunk_elements: int = 2**17,
    log_n: float | None = None,
) -> torch.Tensor:
    """log q(θ_g | x_s) for every grid point and set, [S, G]; ``log_n`` overrides the log N given to the head."""
    device = next(head.parameters()).device
    z = embed_sets(encoder, x.to(device), chunk_elements)
    ln = math.log(x.shape[1]) if log_n is None else log_n
    return head.log_prob_grid(grid.float().to(device), z, ln).double().cpu()


class PosteriorScores(nn.Module):
    """One set of posterior metrics (for one method at one N); feed :meth:`update` with grid log densities.

    The metrics are torchmetrics ``Metric`` sub-modules with summed states, so they follow the module's device and
    are reduced over DDP ranks in :meth:`compute`.

    Args:
        theta_dim: p.
        levels: Central-interval probabilities of the coverage.
        sbc_bins: Bins of the SBC histogram.
    """

    def __init__(self, theta_dim: int, levels: tuple[float, ...] = (0.5, 0.9), sbc_bins: int = 10) -> None:
        super().__init__()
        self.coverage = PosteriorCoverage(levels, theta_dim)
        self.sbc = SBCRanks(sbc_bins, theta_dim)
        self.kl = GridKL()
        self.mean_error = StandardizedMeanError()
        self.levels = levels

    @property
    def updated(self) -> bool:
        """Whether any set was added since the last :meth:`reset`."""
        return self.coverage.update_count > 0

    def update(
        self, log_q: torch.Tensor, grid: torch.Tensor, theta: torch.Tensor, log_p: torch.Tensor | None = None
    ) -> None:
        """Add sets: ``log_q`` [S, G] on ``grid`` [G, p], true ``theta`` [S, p], optional exact ``log_p`` [S, G]."""
        device = self.coverage.hits.device
        cdf = grid_marginal_cdf(log_q, grid, theta.cpu()).to(device)
        self.coverage.update(cdf)
        self.sbc.update(cdf)
        if log_p is not None:
            self.kl.update(log_p.to(device), log_q.to(device))
            mean_p, sd_p = grid_mean_sd(log_p, grid)
            mean_q, _ = grid_mean_sd(log_q, grid)
            self.mean_error.update(mean_q.to(device), mean_p.to(device), sd_p.to(device))

    def compute(self) -> dict[str, float]:
        """Coverage per level (averaged over coordinates), SBC max deviation, and KL / mean error if exact."""
        cov = self.coverage.compute().mean(-1)
        out = {f"coverage{round(100 * a)}": float(c) for a, c in zip(self.levels, cov)}
        out["sbc_max_dev"] = float(self.sbc.max_deviation().max())
        if self.kl.update_count > 0:
            out["kl"] = float(self.kl.compute())
            out["mean_err_sd"] = float(self.mean_error.compute())
        return out

    def reset(self) -> None:
        """Forget every set added so far."""
        for metric in (self.coverage, self.sbc, self.kl, self.mean_error):
            metric.reset()


def score(
    log_q: torch.Tensor, simulator: SetSimulator, grid: torch.Tensor, theta: torch.Tensor, x: torch.Tensor
) -> dict[str, float]:
    """All metrics of ``log_q`` [S, G] against the truth (and the exact posterior when the simulator has one)."""
    scores = PosteriorScores(simulator.theta_dim)
    log_p = simulator.log_posterior(grid, x) if simulator.has_posterior else None
    scores.update(log_q, grid, theta, log_p)
    return scores.compute()
