"""Exponential-tilt dual, population-level quadrature and binary metrics against closed forms / references."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torchmetrics.functional.classification import binary_auroc

from lightning_papers.datamodules.source_target import simulate
from lightning_papers.methods.drum.exact import kl_dual_worst_case, population_mse
from lightning_papers.metrics.binary_outcome import auroc, binary_report, brier, calibration_slope_intercept


@pytest.mark.parametrize("rho", [0.05, 0.3, 1.0])
def test_kl_dual_linear_loss_closed_form(rho: float) -> None:
    # sup_{KL(Q||N(0,1)) <= rho} E_Q[a] = sqrt(2 rho) (the tilt is a mean shift); quadrature-exact draws
    nodes, w = np.polynomial.hermite_e.hermegauss(80)
    a = torch.tensor(np.random.default_rng(0).choice(nodes, size=200_000, p=w / w.sum()))
    value, lam = kl_dual_worst_case(a[None], rho)
    assert value == pytest.approx(math.sqrt(2 * rho), rel=0.02)
    assert lam == pytest.approx(1 / math.sqrt(2 * rho), rel=0.05)  # tilt exp(a / lam) shifts the mean by 1/lam


def test_kl_dual_rho_zero_is_mean_and_rejects_negative() -> None:
    ell = torch.rand(5, 7)
    assert kl_dual_worst_case(ell, 0.0)[0] == pytest.approx(float(ell.mean()))
    with pytest.raises(ValueError, match="rho must be >= 0, got -0.1"):
        kl_dual_worst_case(ell, -0.1)


def test_population_quadrature_matches_simulation() -> None:
    # the 1-D design of exact.py, ERM predictor, scenario (s, tau) = (1, 1.5): quadrature vs Monte Carlo
    g = torch.Generator().manual_seed(0)
    x, a, y = simulate(400_000, 1, 1, "continuous", True, 1.0, 1.5, g)
    x1 = x[:, 0]
    f = x1 + 0.8 * x1 + 0.5 * (0.64 * x1**2 + 1)
    mc = float(((y - f) ** 2).mean())
    xs, w = np.polynomial.hermite_e.hermegauss(40)
    quad = population_mse(0.5 + xs + 0.8 * (0.5 + xs) + 0.5 * (0.64 * (0.5 + xs) ** 2 + 1), 0.5 + xs, 1.0, 1.5)
    assert quad == pytest.approx(mc, rel=0.02)


def test_binary_metrics_against_references() -> None:
    g = torch.Generator().manual_seed(0)
    p = torch.rand(500, generator=g)
    y = torch.bernoulli(p, generator=g)
    assert auroc(p, y) == pytest.approx(float(binary_auroc(p, y.long())), abs=1e-6)
    assert brier(p, y) == pytest.approx(float(((p - y) ** 2).mean()), rel=1e-6)
    # integer weights equal replicated rows
    w = torch.randint(1, 4, (500,), generator=g)
    rep = torch.repeat_interleave(torch.arange(500), w)
    r_w, r_rep = binary_report(p, y, w.double()), binary_report(p[rep], y[rep])
    for k in r_w:
        assert r_w[k] == pytest.approx(r_rep[k], rel=1e-6, abs=1e-9)
    # calibrated probabilities: slope ~ 1, intercept ~ 0
    p = torch.sigmoid(torch.randn(40_000, generator=g) * 1.5)
    slope, intercept = calibration_slope_intercept(p, torch.bernoulli(p, generator=g))
    assert slope == pytest.approx(1.0, abs=0.05) and intercept == pytest.approx(0.0, abs=0.05)
