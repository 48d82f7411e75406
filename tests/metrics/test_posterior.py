"""Posterior metrics against closed forms: grid KL vs the Gaussian KL, grid moments and CDF vs the normal ones,
coverage and SBC of a calibrated vs an overconfident posterior, and metric accumulation over batches."""

from __future__ import annotations

import math

import pytest
import torch

from lightning_papers.metrics.posterior import (
    GridKL,
    PosteriorCoverage,
    SBCRanks,
    StandardizedMeanError,
    central_coverage,
    grid_marginal_cdf,
    grid_mean_sd,
    kl_on_grid,
)

GRID = torch.linspace(-16, 16, 6401, dtype=torch.float64)[:, None]


def normal_logpdf(mu: torch.Tensor, sd: torch.Tensor) -> torch.Tensor:
    """[S] means and sds -> [S, G] log densities on GRID."""
    g = GRID[:, 0][None]
    return -0.5 * ((g - mu[:, None]) / sd[:, None]) ** 2 - sd[:, None].log() - 0.5 * math.log(2 * math.pi)


def test_grid_kl_matches_gaussian_closed_form() -> None:
    mu_p, sd_p = torch.tensor([0.0, 1.0, -2.0], dtype=torch.float64), torch.tensor([1.0, 0.3, 2.0], dtype=torch.float64)
    mu_q, sd_q = torch.tensor([0.5, 1.1, -2.0], dtype=torch.float64), torch.tensor([1.2, 0.2, 1.0], dtype=torch.float64)
    exact = (sd_q / sd_p).log() + (sd_p**2 + (mu_p - mu_q) ** 2) / (2 * sd_q**2) - 0.5
    got = kl_on_grid(normal_logpdf(mu_p, sd_p) + 7.0, normal_logpdf(mu_q, sd_q) - 3.0)  # constants cancel
    torch.testing.assert_close(got, exact, atol=1e-6, rtol=1e-6)
    metric = GridKL()
    metric.update(normal_logpdf(mu_p[:2], sd_p[:2]), normal_logpdf(mu_q[:2], sd_q[:2]))
    metric.update(normal_logpdf(mu_p[2:], sd_p[2:]), normal_logpdf(mu_q[2:], sd_q[2:]))
    torch.testing.assert_close(metric.compute(), exact.mean(), atol=1e-6, rtol=1e-6)
    with pytest.raises(ValueError, match="same shape"):
        kl_on_grid(torch.zeros(2, 3), torch.zeros(2, 4))


def test_grid_moments_and_cdf_match_the_normal() -> None:
    mu, sd = torch.tensor([0.3, -1.0], dtype=torch.float64), torch.tensor([0.5, 2.0], dtype=torch.float64)
    log_p = normal_logpdf(mu, sd)
    mean, s = grid_mean_sd(log_p, GRID)
    torch.testing.assert_close(mean[:, 0], mu, atol=1e-6, rtol=0)
    torch.testing.assert_close(s[:, 0], sd, atol=1e-5, rtol=0)
    for z in [-1.5, 0.0, 0.7]:
        theta = (mu + z * sd)[:, None]
        cdf = grid_marginal_cdf(log_p, GRID, theta)
        torch.testing.assert_close(cdf[:, 0], torch.special.ndtr(torch.tensor(z, dtype=torch.float64)).expand(2),
                                   atol=1e-4, rtol=0)  # fmt: skip


def test_marginal_cdf_of_a_2d_grid() -> None:
    """Independent normals on a 2-D grid: each coordinate's CDF is its own normal CDF."""
    axis = torch.linspace(-6, 6, 241, dtype=torch.float64)
    grid = torch.cartesian_prod(axis, axis)
    log_p = (-0.5 * (grid[:, 0] / 1.0) ** 2 - 0.5 * ((grid[:, 1] - 1.0) / 0.5) ** 2)[None]
    cdf = grid_marginal_cdf(log_p, grid, torch.tensor([[1.0, 0.5]], dtype=torch.float64))
    torch.testing.assert_close(cdf[0], torch.special.ndtr(torch.tensor([1.0, -1.0], dtype=torch.float64)),
                               atol=2e-3, rtol=0)  # fmt: skip


def test_coverage_and_sbc_of_calibrated_vs_overconfident_posteriors() -> None:
    """θ* ~ N(m, s²) with the posterior N(m, s²) is calibrated; a posterior with half the sd is not."""
    gen = torch.Generator().manual_seed(0)
    n = 4000
    mu = torch.randn(n, generator=gen, dtype=torch.float64)
    sd = 0.2 + torch.rand(n, generator=gen, dtype=torch.float64)
    theta = (mu + sd * torch.randn(n, generator=gen, dtype=torch.float64))[:, None]
    calibrated = torch.special.ndtr((theta[:, 0] - mu) / sd)[:, None]
    overconfident = torch.special.ndtr((theta[:, 0] - mu) / (0.5 * sd))[:, None]
    cov, sbc = PosteriorCoverage((0.5, 0.9)), SBCRanks(10)
    cov.update(calibrated[:2000])
    cov.update(calibrated[2000:])
    sbc.update(calibrated)
    c = cov.compute()[:, 0]
    assert abs(float(c[0]) - 0.5) < 0.03 and abs(float(c[1]) - 0.9) < 0.02
    assert float(sbc.max_deviation()[0]) < 0.03
    bad_cov, bad_sbc = PosteriorCoverage((0.5, 0.9)), SBCRanks(10)
    bad_cov.update(overconfident)
    bad_sbc.update(overconfident)
    b = bad_cov.compute()[:, 0]
    # N(0, 1) mass within ±0.674/2 and ±1.645/2: 0.26 and 0.59
    assert abs(float(b[0]) - 0.26) < 0.03 and abs(float(b[1]) - 0.59) < 0.03
    assert float(bad_sbc.max_deviation()[0]) > 0.1
    assert bad_sbc.compute().shape == (1, 10)


def test_central_coverage_edges_and_bad_levels() -> None:
    u = torch.tensor([0.05, 0.5, 0.949, 0.96])
    assert central_coverage(u, 0.9).tolist() == [True, True, True, False]
    with pytest.raises(ValueError, match="coverage level must be in"):
        central_coverage(u, 1.0)
    with pytest.raises(ValueError, match=r"coverage levels must be in \(0, 1\), got 0.0"):
        PosteriorCoverage((0.0,))
    with pytest.raises(ValueError, match=r"expected CDF values \[S, 2\]"):
        PosteriorCoverage((0.5,), theta_dim=2).update(torch.zeros(5, 1))
    with pytest.raises(ValueError, match="num_bins"):
        SBCRanks(1)


def test_standardized_mean_error_is_rms_in_sd_units() -> None:
    m = StandardizedMeanError()
    m.update(torch.tensor([[1.0], [0.0]]), torch.tensor([[0.0], [0.0]]), torch.tensor([[0.5], [1.0]]))
    m.update(torch.tensor([[3.0]]), torch.tensor([[1.0]]), torch.tensor([[1.0]]))
    torch.testing.assert_close(m.compute(), torch.tensor(math.sqrt((4 + 0 + 4) / 3), dtype=torch.float64))
