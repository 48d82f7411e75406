"""Stage-2 flow matching: the time shift, x <-> v conversions, the loss and the Euler sampler against closed forms."""

from __future__ import annotations

import math

import pytest
import torch

from lightning_papers.methods.rae.dit import DiTOutput
from lightning_papers.methods.rae.transport import (
    TransportConfig,
    euler_sample,
    resolve_alpha,
    shift_time,
    shifted_grid,
    to_velocity,
    training_loss,
    velocity_to_x,
    x_to_velocity,
)


def test_shift_identity_at_alpha_one_and_endpoints_fixed() -> None:
    t = torch.linspace(0, 1, 101, dtype=torch.float64)
    torch.testing.assert_close(shift_time(t, 1.0), t)
    for alpha in (0.5, 1.73, 8.0):
        out = shift_time(t, alpha)
        assert out[0].item() == 0.0 and out[-1].item() == pytest.approx(1.0, abs=1e-15)


@pytest.mark.parametrize("alpha", [1.5, 6.93, 8.0])
def test_shift_is_monotone_and_moves_towards_noise(alpha: float) -> None:
    t = torch.linspace(0, 1, 1001, dtype=torch.float64)
    out = shift_time(t, alpha)
    assert (out.diff() > 0).all()
    assert (out >= t - 1e-15).all() and (out[1:-1] > t[1:-1]).all()
    # the inverse shift is the shift by 1 / alpha
    torch.testing.assert_close(shift_time(out, 1.0 / alpha), t)


def test_shift_refuses_non_positive_alpha() -> None:
    with pytest.raises(ValueError, match="-2"):
        shift_time(torch.rand(3), -2.0)
    with pytest.raises(ValueError, match="alpha must be > 0, got 0"):
        TransportConfig(shift="fixed", alpha=0.0)


def test_alpha_from_latent_dimension() -> None:
    cfg = TransportConfig()
    assert resolve_alpha(cfg, (1024, 16, 16)) == pytest.approx(8.0)  # RAEv2 DINOv3-L latents
    assert resolve_alpha(cfg, (768, 16, 16)) == pytest.approx(math.sqrt(48))  # RAE v1 DINOv2-B, ~6.93
    assert resolve_alpha(cfg, (4, 2, 2)) == 1.0  # clamped by default
    assert resolve_alpha(TransportConfig(clamp_alpha_at_one=False), (4, 2, 2)) == pytest.approx(0.0625)
    assert resolve_alpha(TransportConfig(shift="none"), (1024, 16, 16)) == 1.0
    assert resolve_alpha(TransportConfig(shift="fixed", alpha=3.0), (4, 2, 2)) == 3.0


def test_shifted_grid_endpoints_and_order() -> None:
    grid = shifted_grid(50, 8.0)
    assert grid.shape == (51,) and grid[0].item() == pytest.approx(1.0) and grid[-1].item() == 0.0
    assert (grid.diff() < 0).all()
    torch.testing.assert_close(shifted_grid(10, 1.0), torch.linspace(1, 0, 11, dtype=torch.float64))


def test_x_and_velocity_conversions_invert_each_other() -> None:
    g = torch.Generator().manual_seed(0)
    x_t, x_hat = torch.randn(6, 4, 2, 2, generator=g), torch.randn(6, 4, 2, 2, generator=g)
    t = torch.tensor([0.0, 0.01, 0.05, 0.3, 0.9, 1.0])
    v = x_to_velocity(x_hat, x_t, t, 0.05)
    torch.testing.assert_close(velocity_to_x(v, x_t, t, 0.05), x_hat)
    torch.testing.assert_close(x_to_velocity(velocity_to_x(v, x_t, t, 0.05), x_t, t, 0.05), v)
    # on the path x_t = (1 - t) x + t eps, the true x maps to v = eps - x wherever t >= t_clamp
    x, eps = torch.randn(6, 4, 2, 2, generator=g), torch.randn(6, 4, 2, 2, generator=g)
    tt = t.view(-1, 1, 1, 1)
    v_true = x_to_velocity(x, (1 - tt) * x + tt * eps, t, 0.05)
    torch.testing.assert_close(v_true[2:], (eps - x)[2:])
    torch.testing.assert_close(to_velocity(v, x_t, t, "v", 0.05), v)


class _Oracle(torch.nn.Module):
    """Returns the clean data it was given (x-prediction), or zeros: losses with closed forms."""

    latent_shape = (2, 2, 2)
    null_class = 3
    prediction = "x"

    def __init__(self, x: torch.Tensor | None) -> None:
        super().__init__()
        self.x = x

    def check_labels(self, y: torch.Tensor) -> None:
        pass

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> DiTOutput:
        out = self.x if self.x is not None else torch.zeros_like(x_t)
        return DiTOutput(out, torch.zeros_like(x_t))


def test_loss_closed_forms_for_x_prediction() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(32, 2, 2, 2, generator=g)
    cfg = TransportConfig(ig_weight=0.5)
    out = training_loss(_Oracle(x), x, torch.zeros(32, dtype=torch.long), cfg, torch.Generator().manual_seed(1))
    assert out["loss_full"].item() == 0.0
    # the base head predicts zeros: loss = mean ||x||^2 / max(t, 0.05)^2 with the same draws
    t = out["t"].clamp_min(0.05).view(-1, 1, 1, 1)
    expected = (x.pow(2) / t.pow(2)).mean()
    torch.testing.assert_close(out["loss_base"], expected)
    torch.testing.assert_close(out["loss"], 0.5 * expected)


def test_training_loss_is_reproducible_and_validates() -> None:
    x = torch.randn(8, 2, 2, 2)
    y = torch.zeros(8, dtype=torch.long)
    model = _Oracle(None)
    a = training_loss(model, x, y, TransportConfig(), torch.Generator().manual_seed(3))
    b = training_loss(model, x, y, TransportConfig(), torch.Generator().manual_seed(3))
    assert torch.equal(a["t"], b["t"]) and torch.equal(a["loss"], b["loss"])
    with pytest.raises(ValueError, match="'x' but TransportConfig.prediction='v'"):
        training_loss(model, x, y, TransportConfig(prediction="v"))
    with pytest.raises(ValueError, match=r"got \(8, 2, 3, 2\)"):
        training_loss(model, torch.randn(8, 2, 3, 2), y, TransportConfig())
    with pytest.raises(ValueError, match="t_clamp"):
        TransportConfig(t_clamp=0.0)


def test_euler_integrates_constant_field_exactly() -> None:
    c = torch.tensor([0.5, -2.0, 3.0])
    noise = torch.randn(4, 3)
    for alpha in (1.0, 6.0):
        out = euler_sample(lambda x, t: c.expand_as(x), noise, shifted_grid(7, alpha))
        torch.testing.assert_close(out, noise - c, rtol=0, atol=1e-6)


@pytest.mark.parametrize("alpha", [1.0, 4.0])
def test_euler_linear_field_converges_to_closed_form(alpha: float) -> None:
    # v(x, t) = a x  =>  x(t) = x(1) exp(a (t - 1)), so x(0) = x(1) exp(-a); Euler's error is O(max step)
    a = 0.8
    noise = torch.randn(5, 3, dtype=torch.float64)
    exact = noise * math.exp(-a)
    errors = []
    for steps in (10, 40, 160):
        grid = shifted_grid(steps, alpha)
        out = euler_sample(lambda x, t: a * x, noise, grid)
        err = (out - exact).abs().max().item()
        bound = 2.0 * a * a * grid.diff().abs().max().item() * noise.abs().max().item()
        assert err <= bound, (steps, err, bound)
        errors.append(err)
    assert errors[2] < errors[1] < errors[0]
    assert errors[0] / errors[2] > 8  # first order: 16x more steps -> roughly 16x smaller error
