"""The DRUM game against ground truth: KL closed form, exact KL dual, dual ascent, rho = 0, linear mu, correction."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch

from lightning_papers.methods.drum.baselines import MultipleImputation
from lightning_papers.methods.drum.config import DRUMConfig
from lightning_papers.methods.drum.exact import kl_dual_worst_case
from lightning_papers.methods.drum.game import DRUMGame, GameData, expected_loss, gaussian_kl, project_kl
from lightning_papers.methods.drum.nuisances import ExactNuisances


def design(n: int, quadratic: bool, seed: int = 0) -> tuple[GameData, ExactNuisances]:
    """1-D X (source N(0,1), target N(0.5,1)), A | X ~ N(0.8x, 1), mu = x + a (+ 0.5 a^2), noise sd 0.5."""
    g = torch.Generator().manual_seed(seed)

    def mu(x: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        return x[:, 0] + a[:, 0] + (0.5 * a[:, 0] ** 2 if quadratic else 0.0)

    def base(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return 0.8 * x[:, :1], torch.ones_like(x[:, :1])

    x_s = torch.randn(n, 1, generator=g)
    a_s = 0.8 * x_s + torch.randn(n, 1, generator=g)
    y_s = mu(x_s, a_s) + 0.5 * torch.randn(n, generator=g)
    x_t = 0.5 + torch.randn(n, 1, generator=g)
    nu = ExactNuisances(mu, base, lambda x: torch.exp(0.5 * x[:, 0] - 0.125), 0.25)
    return GameData(x_s, a_s, y_s, x_t), nu


def small(**kw: object) -> DRUMConfig:
    return replace(DRUMConfig(hidden=32, batch_size=256, n_draws=4, warm_start_steps=0, bias_correction=False), **kw)


def test_gaussian_kl_matches_monte_carlo() -> None:
    g = torch.Generator().manual_seed(0)
    mq, sq = torch.tensor([0.3, -1.0]), torch.tensor([1.5, 0.7])
    mp, sp = torch.tensor([0.0, 0.2]), torch.tensor([1.0, 1.2])
    a = mq + sq * torch.randn(400_000, 2, generator=g)

    def logn(a: torch.Tensor, m: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        return (-0.5 * ((a - m) / s) ** 2 - s.log()).sum(-1)

    mc = float((logn(a, mq, sq) - logn(a, mp, sp)).mean())
    assert float(gaussian_kl(mq, sq, mp, sp)) == pytest.approx(mc, abs=0.01)


def test_projection_keeps_each_x_inside_its_ball() -> None:
    g = torch.Generator().manual_seed(0)
    dm, dl = 2 * torch.randn(100, 2, generator=g), torch.randn(100, 2, generator=g)
    t = project_kl(dm, dl, 0.3)
    kl = gaussian_kl(t[:, None] * dm, torch.exp(t[:, None] * dl), torch.zeros(2), torch.ones(2))
    assert (kl <= 0.3 + 1e-5).all()
    assert torch.allclose(kl[t < 1], torch.full_like(kl[t < 1], 0.3), atol=1e-4)  # projected rows on the boundary


def test_adversary_matches_exponential_tilt_dual_and_dual_ascent_reaches_rho() -> None:
    # linear mu and squared loss: m_f is quadratic in a, so the KL-worst case (an exponential tilt of a Gaussian)
    # is Gaussian and the Gaussian generator can reach it; f is frozen (lr_f = 0 leaves Adam's parameters alone)
    data, nu = design(2000, quadratic=False)
    rho = 0.1
    cfg = small(rho=rho, constraint="dual", lr_f=1e-12, k_g=1, lr_g=0.05, lr_dual=2.0, lambda_init=10.0)
    game = DRUMGame(nu, 1, 1, cfg)
    with torch.no_grad():
        game.f[-1].weight.mul_(0.0)
        game.f[-1].bias.fill_(1.0)  # f(x) = 1, so the loss (x + a - 1)^2 moves with x
    opt_f, opt_g = game.optimizers()
    for _ in range(1500):
        game.step(data, opt_f, opt_g)
    res = game.evaluate(data, n_draws=64)
    assert res["div"] == pytest.approx(rho, rel=0.1)  # dual ascent drives D to rho
    g = torch.Generator().manual_seed(1)
    a = 0.8 * data.x_t + torch.randn(len(data.x_t), 4000, generator=g)
    ell = expected_loss(game.predict(data.x_t).detach()[:, None], data.x_t + a, 0.25, "squared")
    exact, lam = kl_dual_worst_case(ell, rho)
    assert lam > 2.5  # the tilt is finite (needs lambda > 2 for a quadratic loss with unit variance)
    assert res["worst_risk"] == pytest.approx(exact, rel=0.05)


def test_rho_zero_is_multiple_imputation() -> None:
    data, nu = design(2000, quadratic=True)
    game = DRUMGame(nu, 1, 1, small(rho=0.0, lr_f=3e-3)).fit(data, 800)
    mi = MultipleImputation(nu, n_draws=256)(data.x_t)
    f = game.predict(data.x_t).detach()
    assert float(((f - mi) ** 2).mean()) < 0.02 * float(mi.var())
    assert all(float(p.abs().sum()) == 0 for p in game.gen.net[-1].parameters())  # the generator never moved


def test_linear_mu_minimax_predictor_equals_erm() -> None:
    data, nu = design(2000, quadratic=False)
    game = DRUMGame(nu, 1, 1, small(rho=0.3, lr_f=3e-3, warm_start_steps=200)).fit(data, 600)
    erm = 1.8 * data.x_t[:, 0]  # E_S[Y | x] = x + 0.8 x
    f = game.predict(data.x_t).detach()
    assert float(((f - erm) ** 2).mean()) < 0.02 * float(erm.var())
    assert game.evaluate(data)["div"] == pytest.approx(0.3, rel=0.05)  # the adversary did use its budget


def test_bias_corrected_objective_is_first_order_insensitive_to_mu() -> None:
    data, nu = design(40_000, quadratic=True)
    cfg = small(rho=0.3, bias_correction=True, weight_clip=1e6)
    game = DRUMGame(nu, 1, 1, cfg)
    with torch.no_grad():  # a fixed shifted, wider adversary and a fixed predictor
        game.gen.net[-1].bias.copy_(torch.tensor([0.4, 0.2]))
        game.f[-1].bias.fill_(1.0)
    game.gen.radius = None
    mu0 = nu._mu

    def objective(t: float, corrected: bool) -> float:
        nu._mu = lambda x, a: mu0(x, a) + t * (1 + x[:, 0] - a[:, 0])  # perturbation direction h(x, a)
        g = torch.Generator().manual_seed(3)
        eps = torch.randn(len(data.x_t), 16, 1, generator=g)
        batch = {"x_t": data.x_t, "eps": eps, "idx_s": torch.arange(len(data.x_s))}
        with torch.no_grad():
            out = game.risk(data, batch, correct=corrected)
        return float(out["risk"] + (out["correction"] if corrected else 0.0))

    h = 0.05
    d_plain = (objective(h, False) - objective(-h, False)) / (2 * h)
    d_corr = (objective(h, True) - objective(-h, True)) / (2 * h)
    nu._mu = mu0
    assert abs(d_plain) > 1.0
    assert abs(d_corr) < 0.1 * abs(d_plain)


def test_config_rejects_bad_values() -> None:
    with pytest.raises(ValueError, match="rho must be >= 0, got -0.5"):
        DRUMConfig(rho=-0.5)
    with pytest.raises(ValueError, match="transport"):
        DRUMConfig(divergence="transport", bias_correction=True)
    with pytest.raises(ValueError, match="n_folds must be >= 2"):
        DRUMConfig(n_folds=1)
    assert math.isfinite(DRUMConfig(divergence="transport", bias_correction=False).rho)
