"""[SF]2M pieces: the flow target is the path's time derivative, the score target zeroes the loss, samplers."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lightning_papers.methods.qdsb.bridge import MLP, bridge_targets, sample_ode, sample_sde, sf2m_loss


def test_flow_target_is_the_time_derivative_of_the_bridge_path() -> None:
    g = torch.Generator().manual_seed(0)
    x0, x1, eps = (torch.randn(64, 3, generator=g, dtype=torch.float64) for _ in range(3))
    t = 0.05 + 0.9 * torch.rand(64, generator=g, dtype=torch.float64)
    sigma, h = 0.7, 1e-6
    xp, _, _ = bridge_targets(x0, x1, t + h, eps, sigma)
    xm, _, _ = bridge_targets(x0, x1, t - h, eps, sigma)
    _, ut, _ = bridge_targets(x0, x1, t, eps, sigma)
    torch.testing.assert_close(ut, (xp - xm) / (2 * h), atol=1e-6, rtol=1e-6)


class _ExactScore(nn.Module):
    """(sigma^2 / 2) grad log N(x; mu_t, sigma_t^2 I) of the conditional bridge, for fixed x0, x1."""

    def __init__(self, x0: torch.Tensor, x1: torch.Tensor, sigma: float) -> None:
        super().__init__()
        self.x0, self.x1, self.sigma = x0, x1, sigma

    def forward(self, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        tt = t.reshape(-1, 1)
        mu = (1 - tt) * self.x0 + tt * self.x1
        var = self.sigma**2 * tt * (1 - tt)
        return 0.5 * self.sigma**2 * (-(x - mu) / var)


class _ExactFlow(_ExactScore):
    def forward(self, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        tt = t.reshape(-1, 1)
        mu = (1 - tt) * self.x0 + tt * self.x1
        return (1 - 2 * tt) / (2 * tt * (1 - tt)) * (x - mu) + (self.x1 - self.x0)


def test_losses_vanish_at_the_conditional_targets() -> None:
    g = torch.Generator().manual_seed(1)
    x0, x1 = torch.randn(128, 2, generator=g), torch.randn(128, 2, generator=g) + 2
    sigma = 0.5
    flow_loss, score_loss = sf2m_loss(_ExactFlow(x0, x1, sigma), _ExactScore(x0, x1, sigma), x0, x1, sigma)
    assert float(flow_loss) < 1e-6 and float(score_loss) < 1e-6
    mlp = MLP(2, 8)  # a zero network: positive losses, score loss = E|eps|^2 = d
    with torch.no_grad():
        for p in mlp.parameters():
            p.zero_()
    f, s = sf2m_loss(mlp, mlp, x0, x1, sigma)
    assert float(f.detach()) > 1.0 and float(s.detach()) == pytest.approx(2.0, rel=0.2)


def test_mlp_gradients_reach_every_parameter() -> None:
    flow, score = MLP(3, 16), MLP(3, 16)
    x0, x1 = torch.randn(32, 3), torch.randn(32, 3)
    f, s = sf2m_loss(flow, score, x0, x1, 0.25)
    (f + s).backward()
    for p in list(flow.parameters()) + list(score.parameters()):
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0


class _Const(nn.Module):
    def __init__(self, value: torch.Tensor) -> None:
        super().__init__()
        self.value = value

    def forward(self, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return self.value.expand_as(x)


def test_samplers_integrate_drift_and_diffusion() -> None:
    v, zero = _Const(torch.tensor([1.0, -2.0])), _Const(torch.zeros(2))
    x0 = torch.zeros(20000, 2)
    torch.testing.assert_close(sample_ode(v, x0, n_steps=10), torch.tensor([1.0, -2.0]).expand(20000, 2))
    path = sample_ode(v, x0, n_steps=10, return_path=True)
    assert path.shape == (11, 20000, 2)
    out = sample_sde(v, zero, x0, sigma=0.5, n_steps=50, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(out.mean(0), torch.tensor([1.0, -2.0]), atol=0.02, rtol=0)
    torch.testing.assert_close(out.var(0), torch.full((2,), 0.25), atol=0.02, rtol=0)


def test_bad_arguments_raise() -> None:
    x = torch.randn(8, 2)
    with pytest.raises(ValueError, match="sigma must be > 0"):
        sf2m_loss(MLP(2), MLP(2), x, x, 0.0)
    with pytest.raises(ValueError, match="same shape"):
        sf2m_loss(MLP(2), MLP(2), x, torch.randn(8, 3), 0.5)
    with pytest.raises(ValueError, match="dim and width"):
        MLP(0)
