"""Sample distances and Gaussian KL against independent references (scipy, closed forms)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats

from lightning_papers.metrics.distributions import (
    GaussianKL,
    SampleDistance,
    energy_distance,
    gaussian_kl,
    median_gamma,
    mmd_rbf,
    wasserstein,
)


def test_w1_matches_scipy_in_one_dimension() -> None:
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(300, 1, generator=g), 1.5 + 2 * torch.randn(200, 1, generator=g)
    ref = stats.wasserstein_distance(x[:, 0].numpy(), y[:, 0].numpy())
    assert wasserstein(x, y, 1) == pytest.approx(ref, rel=1e-6)


def test_w2_of_a_translation_is_the_shift() -> None:
    x = torch.randn(256, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    shift = torch.tensor([3.0, 0.0, 4.0], dtype=torch.float64)
    assert wasserstein(x, x + shift, 2) == pytest.approx(5.0, rel=1e-9)
    assert wasserstein(x, x + shift, 1) == pytest.approx(5.0, rel=1e-9)


def test_w2_between_sorted_1d_samples_is_the_quantile_formula() -> None:
    g = torch.Generator().manual_seed(2)
    x, y = torch.randn(400, 1, generator=g, dtype=torch.float64), torch.rand(400, 1, generator=g, dtype=torch.float64)
    ref = math.sqrt(float(((x[:, 0].sort().values - y[:, 0].sort().values) ** 2).mean()))
    assert wasserstein(x, y, 2) == pytest.approx(ref, rel=1e-8)


def test_energy_distance_matches_scipy_u_statistic() -> None:
    g = torch.Generator().manual_seed(3)
    x, y = torch.randn(150, 1, generator=g, dtype=torch.float64), 0.5 + torch.randn(120, 1, generator=g)
    n, m = 150, 120
    xs, ys = x[:, 0].numpy(), y[:, 0].double().numpy()
    # scipy returns the square root of the V-statistic (diagonals included); ours uses U-statistics within sets
    v = stats.energy_distance(xs, ys) ** 2
    exy = np.abs(xs[:, None] - ys[None, :]).mean()
    exx = np.abs(xs[:, None] - xs[None, :]).mean()
    eyy = np.abs(ys[:, None] - ys[None, :]).mean()
    assert v == pytest.approx(2 * exy - exx - eyy, rel=1e-9)
    ref = 2 * exy - exx * n / (n - 1) - eyy * m / (m - 1)
    assert energy_distance(x, y) == pytest.approx(ref, rel=1e-9)


def test_mmd_separates_different_distributions_only() -> None:
    g = torch.Generator().manual_seed(4)
    x, x2, y = (torch.randn(400, 2, generator=g) for _ in range(3))
    y = y + torch.tensor([1.0, 0.0])
    assert mmd_rbf(x, x2) < 0.05
    assert mmd_rbf(x, y) > 0.2
    # explicit gamma: brute-force unbiased MMD^2
    gamma = 0.3
    k = lambda a, b: torch.exp(-gamma * torch.cdist(a.double(), b.double()) ** 2)  # noqa: E731
    kxx, kyy, kxy = k(x, x), k(y, y), k(x, y)
    mmd2 = (kxx.sum() - kxx.trace()) / (400 * 399) + (kyy.sum() - kyy.trace()) / (400 * 399) - 2 * kxy.mean()
    assert mmd_rbf(x, y, gamma=gamma) == pytest.approx(float(mmd2) ** 0.5, rel=1e-9)
    assert median_gamma(x, y) > 0


def test_gaussian_kl_closed_form_and_zero() -> None:
    m0, m1 = torch.tensor([0.0]), torch.tensor([1.0])
    c0, c1 = torch.tensor([[1.0]]), torch.tensor([[4.0]])
    ref = math.log(2.0) + (1.0 + 1.0) / (2 * 4.0) - 0.5  # log(s1/s0) + (s0^2 + dm^2) / (2 s1^2) - 1/2
    assert gaussian_kl(m0, c0, m1, c1) == pytest.approx(ref, rel=1e-12)
    a = torch.tensor([[2.0, 0.3], [0.3, 1.0]])
    assert gaussian_kl(torch.ones(2), a, torch.ones(2), a) == pytest.approx(0.0, abs=1e-12)
    with pytest.raises(ValueError, match="shapes must be"):
        gaussian_kl(m0, c0, torch.zeros(2), torch.eye(2))


def test_gaussian_kl_metric_streams_and_matches_the_function() -> None:
    g = torch.Generator().manual_seed(5)
    mix = torch.tensor([[1.0, 0.5], [0.0, 1.0]], dtype=torch.float64)
    x = torch.randn(3000, 2, generator=g, dtype=torch.float64) @ mix
    target_mean, target_cov = torch.tensor([0.1, -0.2]), torch.tensor([[1.2, 0.4], [0.4, 1.1]])
    metric = GaussianKL(target_mean, target_cov)
    for chunk in x.split(700):
        metric.update(chunk)
    ref = gaussian_kl(x.mean(0), torch.cov(x.T), target_mean, target_cov)
    assert float(metric.compute()) == pytest.approx(ref, rel=1e-9)
    with pytest.raises(ValueError, match="samples must have shape"):
        metric.update(torch.zeros(4, 3))


@pytest.mark.parametrize("kind", ["w1", "w2", "mmd", "energy"])
def test_sample_distance_metric_equals_the_functions(kind: str) -> None:
    g = torch.Generator().manual_seed(6)
    x, y = torch.randn(200, 2, generator=g), 1 + torch.randn(180, 2, generator=g)
    fn = {"w1": lambda a, b: wasserstein(a, b, 1), "w2": lambda a, b: wasserstein(a, b, 2),
          "mmd": mmd_rbf, "energy": energy_distance}[kind]
    metric = SampleDistance(kind)
    metric.update(x[:100], y[:90])
    metric.update(x[100:], y[90:])
    assert float(metric.compute()) == pytest.approx(fn(x, y), rel=1e-9)


def test_bad_samples_raise() -> None:
    x = torch.randn(10, 2)
    nan = x.clone()
    nan[0, 0] = float("nan")
    for fn in (lambda a, b: wasserstein(a, b, 1), mmd_rbf, energy_distance):
        with pytest.raises(ValueError, match="x contains NaN"):
            fn(nan, x)
        with pytest.raises(ValueError, match="same dimension, got 2 and 3"):
            fn(x, torch.randn(10, 3))
    with pytest.raises(ValueError, match="p must be 1 or 2"):
        wasserstein(x, x, 3)
    with pytest.raises(ValueError, match="kind must be"):
        SampleDistance("kl")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="median pairwise distance is 0"):
        mmd_rbf(torch.zeros(5, 2), torch.zeros(5, 2))
