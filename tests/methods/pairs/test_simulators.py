"""Simulators: the closed-form posterior against numerical integration over the nuisance, the multivariate and
naive variants against their definitions, sampling against the model, and clear errors for bad output shapes."""

from __future__ import annotations

import math

import pytest
import torch

from lightning_papers.datamodules.set_simulators import (
    BumpOnBackground,
    GaussianSharedLocation,
    MultivariateGaussianSharedLocation,
    SetSimulator,
    simulate,
)
from lightning_papers.methods.pairs.baselines import naive_factorized_log_posterior


def brute_force_log_posterior(theta: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """log ∫ p(θ) p(ν) Π_i N(x_i; ν, e^θ) dν by the trapezoid rule on a fine ν grid, for ``x`` [S, N] -> [S, G]."""
    nu = torch.linspace(-8.0, 8.0, 2401, dtype=torch.float64)
    x = x.double()
    out = torch.empty(x.shape[0], theta.numel(), dtype=torch.float64)
    for g, t in enumerate(theta.double()):
        var = t.exp()
        loglik = (-0.5 * (math.log(2 * math.pi) + t) - (x[:, :, None] - nu) ** 2 / (2 * var)).sum(1)  # [S, V]
        log_joint = loglik - 0.5 * (math.log(2 * math.pi) + nu**2)  # times p(ν)
        m = log_joint.amax(-1, keepdim=True)
        integral = torch.trapezoid((log_joint - m).exp(), nu, dim=-1).log() + m[:, 0]
        out[:, g] = integral - 0.5 * (math.log(2 * math.pi) + t**2)  # times p(θ)
    return out


def centred(log_p: torch.Tensor) -> torch.Tensor:
    """Remove the per-set constant (log posteriors are defined up to one)."""
    return log_p - log_p.mean(-1, keepdim=True)


@pytest.mark.parametrize("n", [1, 2, 7, 50])
def test_gaussian_posterior_matches_numerical_integration(n: int) -> None:
    sim = GaussianSharedLocation()
    theta_true, x = sim.sample(4, n, torch.Generator().manual_seed(n))
    grid = torch.linspace(-3.0, 3.0, 41, dtype=torch.float64)[:, None]
    exact = sim.log_posterior(grid, x)
    brute = brute_force_log_posterior(grid[:, 0], x[..., 0])
    assert exact.shape == (4, 41)
    torch.testing.assert_close(centred(exact), centred(brute), atol=1e-8, rtol=0)


def test_multivariate_posterior_is_the_sum_over_dimensions() -> None:
    sim = MultivariateGaussianSharedLocation(dim=2)
    theta, x = sim.sample(3, 5, torch.Generator().manual_seed(0))
    assert theta.shape == (3, 2) and x.shape == (3, 5, 2)
    grid = sim.grid(9)
    joint = sim.log_posterior(grid, x)
    brute = brute_force_log_posterior(grid[:, 0], x[..., 0]) + brute_force_log_posterior(grid[:, 1], x[..., 1])
    torch.testing.assert_close(centred(joint), centred(brute), atol=1e-8, rtol=0)


def test_naive_closed_form_equals_product_of_single_observation_posteriors() -> None:
    sim = GaussianSharedLocation()
    grid = sim.grid(101)
    _, x = sim.sample(5, 8, torch.Generator().manual_seed(1))
    closed = naive_factorized_log_posterior(sim, grid, x)

    class NoShortcut(GaussianSharedLocation):
        def naive_log_posterior(self, theta_grid: torch.Tensor, x: torch.Tensor) -> None:
            return None

    generic = naive_factorized_log_posterior(NoShortcut(), grid, x, chunk_rows=7)
    torch.testing.assert_close(centred(closed), centred(generic), atol=1e-9, rtol=0)
    # with one observation the naive and the exact posterior coincide
    one = x[:, :1]
    torch.testing.assert_close(centred(sim.naive_log_posterior(grid, one)), centred(sim.log_posterior(grid, one)))


def test_gaussian_sampling_follows_the_model() -> None:
    theta, x = GaussianSharedLocation().sample(4000, 50, torch.Generator().manual_seed(2))
    assert theta.mean().abs() < 0.05 and (theta.std() - 1).abs() < 0.05
    within = x[..., 0].var(1)  # sample variance of a set estimates e^θ
    ratio = (within / theta[:, 0].exp()).mean()
    assert (ratio - 1).abs() < 0.02
    assert (x[..., 0].mean(1).std() - 1).abs() < 0.1  # the set mean is ν plus small noise, ν ~ N(0, 1)


def test_bump_simulator_shapes_and_no_closed_form() -> None:
    sim = BumpOnBackground()
    theta, x = simulate(sim, 6, 30, torch.Generator().manual_seed(0))
    assert theta.shape == (6, 2) and x.shape == (6, 30, 1)
    assert (x > 0).all()
    assert not sim.has_posterior and GaussianSharedLocation().has_posterior
    with pytest.raises(NotImplementedError, match="no analytic posterior"):
        sim.log_posterior(sim.grid(5), x)
    with pytest.raises(ValueError, match="width"):
        BumpOnBackground(width=0.0)


class WrongShape(SetSimulator):
    def __init__(self, bad: str) -> None:
        self.bad = bad

    def sample(self, num_sets: int, set_size: int, generator: torch.Generator | None = None):
        theta, x = torch.zeros(num_sets, 1), torch.zeros(num_sets, set_size, 1)
        if self.bad == "theta":
            return theta[:, 0], x
        if self.bad == "x":
            return theta, x[..., 0]
        if self.bad == "size":
            return theta, torch.zeros(num_sets, set_size + 1, 1)
        if self.bad == "nan":
            return theta, x * float("nan")
        return theta.numpy(), x


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ("theta", r"theta of shape \(3,\), expected \[S, p\] = \(3, 1\)"),
        ("x", r"x of shape \(3, 4\), expected \[S, N, d\] = \(3, 4, 1\)"),
        ("size", r"x of shape \(3, 5, 1\), expected \[S, N, d\] = \(3, 4, 1\)"),
        ("nan", "non-finite"),
        ("type", "must return two tensors"),
    ],
)
def test_bad_simulator_output_raises_a_clear_error(bad: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        simulate(WrongShape(bad), 3, 4)


def test_bad_arguments_raise() -> None:
    with pytest.raises(ValueError, match="set_size"):
        simulate(GaussianSharedLocation(), 3, 0)
    with pytest.raises(ValueError, match="dim must be >= 1"):
        MultivariateGaussianSharedLocation(dim=0)
