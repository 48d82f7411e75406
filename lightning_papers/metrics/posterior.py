"""Posterior quality on a θ grid and by calibration: KL(exact ‖ q), standardised posterior-mean error, central-
interval coverage, simulation-based-calibration (SBC) ranks; functions plus fixed-state torchmetrics Metrics.

Conventions:

* Log densities on a grid are given as ``[S, G]`` (S sets, G grid points of a regular grid ``[G, p]``); they
  need not be normalised (each row is normalised on the grid, so constants cancel). The KL is the discrete KL
  between the normalised grid masses, which approximates the continuous KL when the grid resolves both densities.
* Calibration uses the posterior CDF at the true parameter, u = F_q(θ*) per coordinate ("continuous SBC rank";
  Talts et al. 2018 use the rank of θ* among L posterior samples, which is ⌊(L + 1)·u⌋ in distribution). For a
  calibrated q, u ~ U(0, 1); the central α-interval contains θ* iff |u − ½| ≤ α/2.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torchmetrics import Metric


def normalize_on_grid(log_p: torch.Tensor) -> torch.Tensor:
    """Log masses on the grid: each row of ``log_p`` [S, G] shifted so its exponentials sum to 1."""
    return torch.log_softmax(log_p.double(), dim=-1)


def kl_on_grid(log_p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """KL(p ‖ q) per set between two log densities on the same grid, [S, G] each -> [S]."""
    if log_p.shape != log_q.shape:
        raise ValueError(f"log_p and log_q must have the same shape, got {tuple(log_p.shape)} and {tuple(log_q.shape)}")
    lp, lq = normalize_on_grid(log_p), normalize_on_grid(log_q)
    return (lp.exp() * (lp - lq)).sum(-1).clamp_min(0.0)


def grid_mean_sd(log_p: torch.Tensor, grid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Posterior mean and sd per coordinate from log densities [S, G] on ``grid`` [G, p] -> ([S, p], [S, p])."""
    w = normalize_on_grid(log_p).exp()
    g = grid.double().to(w.device)
    mean = w @ g
    var = w @ g**2 - mean**2
    return mean, var.clamp_min(0.0).sqrt()


def grid_marginal_cdf(log_p: torch.Tensor, grid: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """Marginal CDF of each coordinate at ``theta`` [S, p] from log densities [S, G] on a regular ``grid`` [G, p].

    Each grid point's mass is spread uniformly over its cell (width = grid spacing), so the CDF is piecewise
    linear and exact for a piecewise-constant density. Returns [S, p] in [0, 1].
    """
    w = normalize_on_grid(log_p).exp()
    g = grid.double().to(w.device)
    out = []
    for j in range(g.shape[1]):
        values, inverse = torch.unique(g[:, j], return_inverse=True)
        marg = torch.zeros(w.shape[0], values.numel(), dtype=w.dtype, device=w.device)
        marg.index_add_(1, inverse, w)
        h = (values[1] - values[0]) if values.numel() > 1 else torch.tensor(1.0, dtype=w.dtype)
        frac = ((theta[:, j : j + 1].double() - (values[None] - h / 2)) / h).clamp(0.0, 1.0)
        out.append((marg * frac).sum(-1))
    return torch.stack(out, dim=-1).clamp(0.0, 1.0)


def central_coverage(cdf_at_truth: torch.Tensor, level: float) -> torch.Tensor:
    """Whether the central ``level`` interval holds the truth, from u = F_q(θ*) (same shape, bool)."""
    if not 0.0 < level < 1.0:
        raise ValueError(f"coverage level must be in (0, 1), got {level}")
    return (cdf_at_truth - 0.5).abs() <= level / 2


def standardized_error(mean_q: torch.Tensor, mean_exact: torch.Tensor, sd_exact: torch.Tensor) -> torch.Tensor:
    """(posterior mean of q − exact posterior mean) / exact posterior sd, elementwise."""
    return (mean_q.double() - mean_exact.double()) / sd_exact.double().clamp_min(1e-12)


class PosteriorCoverage(Metric):
    """Fraction of sets whose central α-interval (per coordinate) holds the true parameter, for several α.

    ``update(cdf_at_truth [S, p])``; ``compute() -> [len(levels), p]``. Fixed-size sum states (DDP-exact).

    Args:
        levels: Interval probabilities α (the PAIRS benchmark uses 0.5 and 0.9).
        theta_dim: p.
    """

    full_state_update = False
    higher_is_better = None
    is_differentiable = False

    def __init__(self, levels: Sequence[float] = (0.5, 0.9), theta_dim: int = 1) -> None:
        super().__init__()
        for a in levels:
            if not 0.0 < a < 1.0:
                raise ValueError(f"coverage levels must be in (0, 1), got {a}")
        self.levels = tuple(float(a) for a in levels)
        self.theta_dim = theta_dim
        self.add_state("hits", torch.zeros(len(self.levels), theta_dim, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("total", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, cdf_at_truth: torch.Tensor) -> None:
        if cdf_at_truth.ndim != 2 or cdf_at_truth.shape[1] != self.theta_dim:
            raise ValueError(f"expected CDF values [S, {self.theta_dim}], got {tuple(cdf_at_truth.shape)}")
        for i, a in enumerate(self.levels):
            self.hits[i] += central_coverage(cdf_at_truth, a).double().sum(0)
        self.total += cdf_at_truth.shape[0]

    def compute(self) -> torch.Tensor:
        return self.hits / self.total.clamp_min(1.0)


class SBCRanks(Metric):
    """Histogram of u = F_q(θ*) over ``num_bins`` equal bins per coordinate (uniform when q is calibrated).

    ``compute()`` returns the normalised histogram [p, num_bins]; :meth:`max_deviation` the largest |ECDF − u|
    at bin edges (a binned Kolmogorov–Smirnov distance to uniform).
    """

    full_state_update = False
    higher_is_better = None
    is_differentiable = False

    def __init__(self, num_bins: int = 10, theta_dim: int = 1) -> None:
        super().__init__()
        if num_bins < 2:
            raise ValueError(f"num_bins must be >= 2, got {num_bins}")
        self.num_bins, self.theta_dim = num_bins, theta_dim
        self.add_state("counts", torch.zeros(theta_dim, num_bins, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, cdf_at_truth: torch.Tensor) -> None:
        if cdf_at_truth.ndim != 2 or cdf_at_truth.shape[1] != self.theta_dim:
            raise ValueError(f"expected CDF values [S, {self.theta_dim}], got {tuple(cdf_at_truth.shape)}")
        idx = (cdf_at_truth.double() * self.num_bins).long().clamp(0, self.num_bins - 1)
        for j in range(self.theta_dim):
            self.counts[j] += torch.bincount(idx[:, j], minlength=self.num_bins).to(self.counts)

    def compute(self) -> torch.Tensor:
        return self.counts / self.counts.sum(-1, keepdim=True).clamp_min(1.0)

    def max_deviation(self) -> torch.Tensor:
        """max over bin edges of |empirical CDF of u − edge|, per coordinate [p]."""
        ecdf = self.compute().cumsum(-1)
        edges = torch.arange(1, self.num_bins + 1, dtype=ecdf.dtype, device=ecdf.device) / self.num_bins
        return (ecdf - edges).abs().amax(-1)


class GridKL(Metric):
    """Mean over sets of KL(exact ‖ q) on a grid. ``update(log_p_exact [S, G], log_q [S, G])``."""

    full_state_update = False
    higher_is_better = False
    is_differentiable = False

    def __init__(self) -> None:
        super().__init__()
        self.add_state("kl_sum", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("total", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, log_p: torch.Tensor, log_q: torch.Tensor) -> None:
        self.kl_sum += kl_on_grid(log_p, log_q).sum()
        self.total += log_p.shape[0]

    def compute(self) -> torch.Tensor:
        return self.kl_sum / self.total.clamp_min(1.0)


class StandardizedMeanError(Metric):
    """Root-mean-square over sets and coordinates of (mean_q − mean_exact) / sd_exact."""

    full_state_update = False
    higher_is_better = False
    is_differentiable = False

    def __init__(self) -> None:
        super().__init__()
        self.add_state("sq_sum", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("total", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, mean_q: torch.Tensor, mean_exact: torch.Tensor, sd_exact: torch.Tensor) -> None:
        err = standardized_error(mean_q, mean_exact, sd_exact)
        self.sq_sum += (err**2).sum()
        self.total += err.numel()

    def compute(self) -> torch.Tensor:
        return (self.sq_sum / self.total.clamp_min(1.0)).sqrt()
