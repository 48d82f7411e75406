"""Generative-model metrics against closed forms, direct formulas, torchmetrics and hand-made cases."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torchmetrics.image.kid import poly_mmd

from lightning_papers.metrics.feature_classifier import (
    FeatureClassifier,
    FeatureClassifierConfig,
    train_feature_classifier,
)
from lightning_papers.metrics.generative import (
    conditional_accuracy,
    fd_eval_metric,
    fd_floor,
    frechet_distance,
    frechet_distance_from_statistics,
    kernel_distance,
    memorisation,
    polynomial_mmd2,
    precision_recall,
)

SMALL = {"widths": (8, 16, 32), "feature_dim": 32}


def coloured_squares(n: int, seed: int, size: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    """Class 0: a reddish square, class 1: a bluish one; random size, position, shade, on a noisy dark background."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 2
    images = 0.15 * torch.rand(n, 3, size, size, generator=g)
    for i in range(n):
        side = int(torch.randint(4, 9, (), generator=g))
        r, c = (int(v) for v in torch.randint(0, size - side + 1, (2,), generator=g))
        colour = torch.tensor([0.9, 0.2, 0.2]) if labels[i] == 0 else torch.tensor([0.2, 0.3, 0.9])
        colour = (colour + 0.1 * torch.randn(3, generator=g)).clamp(0, 1)
        images[i, :, r : r + side, c : c + side] = colour[:, None, None]
    return images, labels


@pytest.fixture(scope="module")
def trained() -> tuple[FeatureClassifier, float]:
    torch.set_num_threads(1)  # module fixtures run before conftest's per-test setting
    images, labels = coloured_squares(160, seed=1)
    return train_feature_classifier(images, labels, 2, steps=30, seed=0, batch_size=32, **SMALL)


def test_classifier_separates_an_easy_case_and_scores_conditional_samples(trained) -> None:
    model, held_out_accuracy = trained
    assert held_out_accuracy >= 0.9
    images, labels = coloured_squares(100, seed=7)  # fresh draws: "conditional samples" of a perfect generator
    assert conditional_accuracy(model, images, labels) >= 0.9
    assert conditional_accuracy(model, images, 1 - labels) <= 0.1
    with pytest.raises(ValueError, match="labels must lie in"):
        conditional_accuracy(model, images, labels + 1)


def test_training_is_deterministic_and_leaves_the_global_rng_alone() -> None:
    images, labels = coloured_squares(60, seed=1)
    before = torch.get_rng_state()
    first, acc1 = train_feature_classifier(images, labels, 2, steps=5, seed=4, batch_size=16, **SMALL)
    assert torch.equal(before, torch.get_rng_state())
    again, acc2 = train_feature_classifier(images, labels, 2, steps=5, seed=4, batch_size=16, **SMALL)
    other, _ = train_feature_classifier(images, labels, 2, steps=5, seed=5, batch_size=16, **SMALL)
    assert acc1 == acc2
    for (name, p), q in zip(first.state_dict().items(), again.state_dict().values()):
        assert torch.equal(p, q), name
    assert not torch.equal(first.head.weight, other.head.weight)
    with pytest.raises(ValueError, match="labels must lie in"):
        train_feature_classifier(images, labels + 2, 2, steps=1)


def test_features_save_load_and_input_forms(trained, tmp_path: Path) -> None:
    model, _ = trained
    images, _ = coloured_squares(20, seed=3)
    feats = model.embed(images)
    assert feats.shape == (20, 32) and feats.dtype == torch.float64
    assert torch.allclose(model.embed(images, batch_size=3), feats, atol=1e-5)  # GroupNorm: no batch dependence
    as_bytes = (images * 255).round().to(torch.uint8)
    assert torch.allclose(model.embed(as_bytes), model.embed(as_bytes.float() / 255), atol=1e-6)
    model.save(tmp_path / "clf.pt")
    loaded = FeatureClassifier.load(tmp_path / "clf.pt")
    assert loaded.config == model.config and not loaded.training
    assert torch.equal(loaded.embed(images), feats)
    default = FeatureClassifier(FeatureClassifierConfig(num_classes=10))
    assert default.embed(torch.rand(2, 3, 32, 32)).shape == (2, 128)
    with pytest.raises(ValueError, match="3 channels"):
        model.embed(torch.rand(2, 1, 16, 16))


def _gaussian(n: int, mean, cov, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    chol = torch.linalg.cholesky(torch.as_tensor(cov, dtype=torch.float64))
    return (
        torch.as_tensor(mean, dtype=torch.float64)
        + torch.randn(n, len(mean), generator=g, dtype=torch.float64) @ chol.T
    )


def test_fd_matches_the_closed_form_between_two_gaussians() -> None:
    m1, s1 = np.array([0.0, 0.0]), np.array([[2.0, 0.6], [0.6, 1.0]])
    m2, s2 = np.array([1.0, -0.5]), np.array([[1.0, -0.3], [-0.3, 0.5]])
    # 2x2: Tr((S1 S2)^1/2) = sqrt(tr(S1 S2) + 2 sqrt(det S1 det S2)) (the eigenvalues of S1 S2 are real, >= 0)
    tr_sqrt = math.sqrt(np.trace(s1 @ s2) + 2 * math.sqrt(np.linalg.det(s1) * np.linalg.det(s2)))
    exact = float(((m1 - m2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * tr_sqrt)
    assert frechet_distance_from_statistics(m1, s1, m2, s2) == pytest.approx(exact, rel=1e-10)
    x, y = _gaussian(200_000, m1, s1, seed=0), _gaussian(200_000, m2, s2, seed=1)
    assert frechet_distance(x, y) == pytest.approx(exact, abs=0.03)


def test_fd_matches_a_direct_symmetric_computation_on_the_same_features() -> None:
    g = torch.Generator().manual_seed(5)
    x = torch.randn(400, 12, generator=g, dtype=torch.float64) @ torch.randn(12, 12, generator=g, dtype=torch.float64)
    y = 0.3 + torch.randn(300, 12, generator=g, dtype=torch.float64) * torch.linspace(0.5, 2, 12, dtype=torch.float64)
    a, b = x.numpy(), y.numpy()
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    w, v = np.linalg.eigh(s1)
    root1 = (v * np.sqrt(np.clip(w, 0, None))) @ v.T  # Tr((S1 S2)^1/2) = Tr((S1^1/2 S2 S1^1/2)^1/2)
    tr_sqrt = np.sqrt(np.clip(np.linalg.eigvalsh(root1 @ s2 @ root1), 0, None)).sum()
    ref = ((a.mean(0) - b.mean(0)) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * tr_sqrt
    assert frechet_distance(x, y) == pytest.approx(ref, rel=1e-8)
    assert frechet_distance(x, x) == pytest.approx(0.0, abs=1e-8)
    shift = torch.tensor([3.0, 4.0] + [0.0] * 10, dtype=torch.float64)
    assert frechet_distance(x, x + shift) == pytest.approx(25.0, rel=1e-8)


def test_fd_eval_metric_streams_to_the_functional_value(trained) -> None:
    model, _ = trained
    real, _ = coloured_squares(60, seed=11)
    fake, _ = coloured_squares(50, seed=12)
    fake = fake[:, [1, 2, 0]]  # a "generator" with the wrong colours
    metric = fd_eval_metric(model)
    for i in range(0, 60, 25):
        metric.update(real[i : i + 25], real=True)
    metric.update(fake[:30], real=False)
    metric.update(fake[30:], real=False)
    ref = frechet_distance(model.embed(real), model.embed(fake))
    assert float(metric.compute()) == pytest.approx(ref, rel=1e-6)
    metric.reset()  # keeps the real statistics by default
    metric.update(fake, real=False)
    assert float(metric.compute()) == pytest.approx(ref, rel=1e-6)


def test_fd_floor_is_the_real_vs_real_distance_and_shrinks_with_n() -> None:
    real = _gaussian(4000, [0.0] * 8, np.eye(8), seed=2)
    small, large = fd_floor(real, 50), fd_floor(real, 2000)
    assert 0 < large < small
    assert small < frechet_distance(real[:50], real[:50] + 1.0)  # a unit shift in 8 dims: FD >= 8
    assert fd_floor(real, 50, seed=3) != small
    with pytest.raises(ValueError, match="n must be in"):
        fd_floor(real, 2001)


def test_polynomial_mmd2_matches_the_direct_double_sum() -> None:
    g = torch.Generator().manual_seed(6)
    a = torch.randn(12, 5, generator=g, dtype=torch.float64)
    b = 0.5 + torch.randn(9, 5, generator=g, dtype=torch.float64)

    def k(u, v):
        return (float(np.dot(u, v)) / 5 + 1.0) ** 3

    an, bn = a.numpy(), b.numpy()
    kaa = sum(k(an[i], an[j]) for i in range(12) for j in range(12) if i != j) / (12 * 11)
    kbb = sum(k(bn[i], bn[j]) for i in range(9) for j in range(9) if i != j) / (9 * 8)
    kab = sum(k(an[i], bn[j]) for i in range(12) for j in range(9)) / (12 * 9)
    assert polynomial_mmd2(a, b) == pytest.approx(kaa + kbb - 2 * kab, rel=1e-10)
    # torchmetrics' KID kernel (equal sizes) as a second reference; one full subset is the same estimate
    b12 = torch.cat([b, a[:3] - 1])
    assert polynomial_mmd2(a, b12) == pytest.approx(float(poly_mmd(a, b12)), rel=1e-10)
    assert kernel_distance(a, b12, subsets=1, subset_size=12) == pytest.approx((polynomial_mmd2(a, b12), 0.0))


def test_kid_is_unbiased_for_two_samples_of_one_distribution() -> None:
    g = torch.Generator().manual_seed(8)
    unbiased, biased = [], []
    for _ in range(400):
        a, b = torch.randn(2, 15, 4, generator=g, dtype=torch.float64)
        unbiased.append(polynomial_mmd2(a, b))
        kaa, kbb, kab = ((u @ v.T / 4 + 1) ** 3 for u, v in ((a, a), (b, b), (a, b)))
        biased.append(float(kaa.mean() + kbb.mean() - 2 * kab.mean()))  # V-statistic: diagonal included
    se = np.std(unbiased) / math.sqrt(len(unbiased))
    assert abs(np.mean(unbiased)) < 3 * se
    assert np.mean(biased) > 10 * se  # the test can tell a biased estimator apart
    a, b = torch.randn(2, 300, 4, generator=g, dtype=torch.float64)
    mean_same, std_same = kernel_distance(a, b, subsets=20, subset_size=100)
    mean_diff, _ = kernel_distance(a, b + 1.0, subsets=20, subset_size=100)
    assert abs(mean_same) < 3 * std_same < mean_diff


def test_precision_recall_on_hand_made_cases() -> None:
    g = torch.Generator().manual_seed(9)
    x = torch.randn(300, 2, generator=g, dtype=torch.float64)
    assert precision_recall(x, x) == (1.0, 1.0)
    assert precision_recall(x, x + 100.0) == (0.0, 0.0)
    angles = torch.arange(10, dtype=torch.float64) * 2 * math.pi / 10
    centres = 50.0 * torch.stack([angles.cos(), angles.sin()], 1)  # ten well-separated unit-variance modes
    real = centres.repeat_interleave(100, 0) + torch.randn(1000, 2, generator=g, dtype=torch.float64)
    half = centres[:5].repeat_interleave(200, 0) + torch.randn(1000, 2, generator=g, dtype=torch.float64)
    precision, recall = precision_recall(real, half, k=3)
    assert precision >= 0.9  # a few samples in the tails fall outside the real k-NN balls
    assert 0.4 <= recall <= 0.5
    with pytest.raises(ValueError, match="k and chunk"):
        precision_recall(x, x, k=0)


def test_memorisation_flags_copies_but_not_fresh_draws() -> None:
    g = torch.Generator().manual_seed(10)
    train, held, fresh = (torch.randn(n, 16, generator=g, dtype=torch.float64) for n in (400, 200, 300))
    copies = train[torch.randperm(400, generator=g)[:300]] + 1e-3 * torch.randn(300, 16, generator=g)
    flagged = memorisation(copies, train, held)
    assert flagged.train_nearest_fraction == 1.0
    assert flagged.expected_fraction == pytest.approx(400 / 600)
    assert flagged.z_score > 5 and flagged.copy_fraction == 1.0 and flagged.median_distance_ratio < 0.01
    clean = memorisation(fresh, train, held)
    assert abs(clean.z_score) < 3 and clean.copy_fraction < 0.05
    assert 0.5 < clean.median_distance_ratio < 1.0  # the larger train set has slightly closer neighbours
    with pytest.raises(ValueError, match="row sizes differ"):
        memorisation(fresh[:, :3], train, held)
