"""Sample-quality metrics of a class-conditional image generator in the features of an in-process classifier.

RAE (arXiv 2510.11690) and RAEv2 (arXiv 2605.18324) report gFID (FD in Inception features) and FD_DINOv2. Without
downloadable weights the features here are the penultimate activations of the CNN in
``lightning_papers/metrics/feature_classifier.py`` (FD_eval), or those of any other frozen map (for example the
encoder's own space). Features are ``[N, D]`` tensors or arrays; the functions compute in float64 on the CPU.

The classifier's features are what it needs to tell the classes apart: variation it ignores (within-class detail it
was never asked about) barely moves FD_eval, as with Inception features. Report the floor next to every FD.

* :func:`frechet_distance`: FD = ‖μ₁ − μ₂‖² + Tr(Σ₁ + Σ₂ − 2(Σ₁Σ₂)^½) of the moment-fitted Gaussians (float64,
  covariances with ``ddof=1``, ``scipy.linalg.sqrtm`` of Σ₁Σ₂ as in pytorch-fid and the ADM evaluator).
  :func:`fd_eval_metric` is the streaming form: torchmetrics' own ``FrechetInceptionDistance`` with the classifier as
  its ``feature`` module. It fits as is: its states are fixed-size float64 sums (Σf, Σffᵀ, n per side,
  ``dist_reduce_fx="sum"``), a module with ``num_features`` is not probed with a 299² image, and with a custom module
  images reach it unchanged (float in [0, 1] or uint8). It computes Tr((Σ₁Σ₂)^½) from the eigenvalues of Σ₁Σ₂, an
  independent route to the same number (the tests compare the two).
* :func:`fd_floor`: FD between two disjoint random subsets of the real features of the same size n as the
  generated set: the value a perfect generator would get at that n (FD is biased upwards at finite n).
* :func:`kernel_distance` (KID, Bińkowski et al. 2018, arXiv 1801.01401): unbiased MMD² with the kernel
  (xᵀy / D + 1)³, over random subsets (mean, std); :func:`polynomial_mmd2` is the full-set estimator. Unbiased: its
  expectation is 0 for two samples of one distribution, whatever n.
* :func:`conditional_accuracy`: how often the classifier assigns a conditional sample to the class it was asked for.
* :func:`precision_recall`: k-NN precision and recall (Kynkäänniemi et al. 2019, arXiv 1904.06991): a sample lies on
  a set's manifold if it is within the distance from some member of that set to the member's k-th nearest neighbour.
* :func:`memorisation`: whether generated samples sit closer to the training images than fresh draws would.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

from lightning_papers.metrics.feature_classifier import ClassifierFeatures, FeatureClassifier

if TYPE_CHECKING:
    from torchmetrics.image.fid import FrechetInceptionDistance


def _features(x: torch.Tensor | np.ndarray, name: str, min_rows: int = 2) -> torch.Tensor:
    """Validated float64 CPU ``[N, D]`` tensor (extra trailing dims are flattened)."""
    t = torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x).detach().cpu().double()
    if t.ndim < 2 or t.shape[0] < min_rows:
        raise ValueError(f"{name} must have shape [N, D] with N >= {min_rows}, got {tuple(t.shape)}")
    t = t.reshape(t.shape[0], -1)
    if not torch.isfinite(t).all():
        raise ValueError(f"{name} contains NaN or inf values")
    return t


def _pair(a, b, min_rows: int = 2, names: tuple[str, str] = ("features_a", "features_b")):
    x, y = _features(a, names[0], min_rows), _features(b, names[1], min_rows)
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"{names[0]} and {names[1]} differ in dimension: {x.shape[1]} and {y.shape[1]}")
    return x, y


def gaussian_statistics(features: torch.Tensor | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean ``(D,)`` and covariance ``(D, D)`` (``ddof=1``) in float64."""
    f = _features(features, "features").numpy()
    return f.mean(0), np.cov(f, rowvar=False).reshape(f.shape[1], f.shape[1])


def frechet_distance_from_statistics(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """FD between N(mu1, sigma1) and N(mu2, sigma2), clipped at 0 (it is a squared distance)."""
    from scipy import linalg

    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    s1, s2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    d = mu1.shape[0]
    if mu2.shape != (d,) or s1.shape != (d, d) or s2.shape != (d, d):
        raise ValueError(f"shapes must be (D,), (D, D): got {mu1.shape}, {s1.shape}, {mu2.shape}, {s2.shape}")
    covmean = linalg.sqrtm(s1 @ s2)
    if not np.isfinite(covmean).all():  # singular product: regularise as pytorch-fid does
        offset = np.eye(d) * 1e-6
        covmean = linalg.sqrtm((s1 + offset) @ (s2 + offset))
    value = float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2.0 * np.trace(covmean).real)
    return max(value, 0.0)


def frechet_distance(features_a: torch.Tensor | np.ndarray, features_b: torch.Tensor | np.ndarray) -> float:
    """Fréchet distance between the moment-fitted Gaussians of two feature sets ``[N, D]`` and ``[M, D]``."""
    a, b = _pair(features_a, features_b)
    return frechet_distance_from_statistics(*gaussian_statistics(a), *gaussian_statistics(b))


def fd_floor(real_features: torch.Tensor | np.ndarray, n: int, seed: int = 0) -> float:
    """FD between two disjoint random subsets of ``n`` real features each (needs ``2 n <= N``): the real-vs-real
    floor at sample size ``n``. Compare a generator's FD on ``n`` samples with this, never with 0."""
    f = _features(real_features, "real_features")
    if n < 2 or 2 * n > f.shape[0]:
        raise ValueError(f"n must be in [2, N // 2] = [2, {f.shape[0] // 2}] for {f.shape[0]} real features, got {n}")
    perm = torch.randperm(f.shape[0], generator=torch.Generator().manual_seed(seed))
    return frechet_distance(f[perm[:n]], f[perm[n : 2 * n]])


def fd_eval_metric(classifier: FeatureClassifier, reset_real_features: bool = False) -> FrechetInceptionDistance:
    """torchmetrics ``FrechetInceptionDistance`` in the classifier's features (FD_eval), streamed and DDP-exact.

    Call ``update(images, real=True/False)`` with float images in [0, 1] (or uint8) and ``compute()``; avoid
    ``forward`` (it computes an FD per batch). With ``reset_real_features=False`` (default) the real statistics
    survive ``reset()``, so the real set is fed once. The classifier becomes a submodule of the metric.
    """
    from torchmetrics.image.fid import FrechetInceptionDistance

    return FrechetInceptionDistance(feature=ClassifierFeatures(classifier), reset_real_features=reset_real_features)


def polynomial_mmd2(
    features_a: torch.Tensor | np.ndarray,
    features_b: torch.Tensor | np.ndarray,
    degree: int = 3,
    gamma: float | None = None,
    coef0: float = 1.0,
) -> float:
    """Unbiased MMD² with kernel k(x, y) = (gamma xᵀy + coef0)^degree, gamma = 1 / D by default (KID's kernel).

    MMD²_u = Σ_{i≠j} k(aᵢ, aⱼ) / (n(n−1)) + Σ_{i≠j} k(bᵢ, bⱼ) / (m(m−1)) − 2 Σ_{i,j} k(aᵢ, bⱼ) / (nm); may be < 0.
    """
    a, b = _pair(features_a, features_b)
    g = 1.0 / a.shape[1] if gamma is None else float(gamma)
    n, m = a.shape[0], b.shape[0]
    kaa, kbb, kab = ((g * (u @ v.T) + coef0) ** degree for u, v in ((a, a), (b, b), (a, b)))
    within_a = (kaa.sum() - kaa.diagonal().sum()) / (n * (n - 1))
    within_b = (kbb.sum() - kbb.diagonal().sum()) / (m * (m - 1))
    return float(within_a + within_b - 2.0 * kab.mean())


def kernel_distance(
    features_a: torch.Tensor | np.ndarray,
    features_b: torch.Tensor | np.ndarray,
    subsets: int = 100,
    subset_size: int = 1000,
    seed: int = 0,
    degree: int = 3,
    gamma: float | None = None,
    coef0: float = 1.0,
) -> tuple[float, float]:
    """KID: mean and standard deviation of :func:`polynomial_mmd2` over ``subsets`` random subsets.

    Each subset draws ``min(subset_size, N, M)`` rows of each set without replacement (``torch.Generator`` seeded
    with ``seed``, so the result is deterministic and the global RNG untouched). The std is the sample std
    (ddof=1) over subsets, 0 for one subset.
    """
    a, b = _pair(features_a, features_b)
    if subsets < 1 or subset_size < 2:
        raise ValueError(f"subsets must be >= 1 and subset_size >= 2, got {subsets}, {subset_size}")
    size = min(subset_size, a.shape[0], b.shape[0])
    gen = torch.Generator().manual_seed(seed)
    values = []
    for _ in range(subsets):
        ia = torch.randperm(a.shape[0], generator=gen)[:size]
        ib = torch.randperm(b.shape[0], generator=gen)[:size]
        values.append(polynomial_mmd2(a[ia], b[ib], degree, gamma, coef0))
    v = np.asarray(values)
    return float(v.mean()), float(v.std(ddof=1)) if v.size > 1 else 0.0


def conditional_accuracy(
    classifier: FeatureClassifier, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 256
) -> float:
    """Fraction of conditional samples ``images`` that the classifier assigns to their requested class ``labels``."""
    y = torch.as_tensor(labels).reshape(-1).long().cpu()
    if y.numel() != images.shape[0] or y.numel() == 0:
        raise ValueError(f"labels must have one entry per image, got {y.numel()} labels for {images.shape[0]} images")
    k = classifier.config.num_classes
    if int(y.min()) < 0 or int(y.max()) >= k:
        raise ValueError(f"labels must lie in [0, {k}), got range [{int(y.min())}, {int(y.max())}]")
    return float((classifier.predict(images, batch_size) == y).double().mean())


def _min_and_kth(x: torch.Tensor, y: torch.Tensor, k: int, chunk: int, exclude_self: bool) -> torch.Tensor:
    """Per row of ``x``: the distance to its k-th nearest row of ``y`` (k=1: the nearest), in chunks of rows.

    With ``exclude_self`` (x is y) the zero self-distance is skipped, so k counts the *other* rows.
    """
    out = []
    kk = k + 1 if exclude_self else k
    for i in range(0, x.shape[0], chunk):
        d = torch.cdist(x[i : i + chunk], y)
        out.append(torch.topk(d, kk, dim=1, largest=False).values[:, kk - 1])
    return torch.cat(out)


def _covered(points: torch.Tensor, centres: torch.Tensor, radii: torch.Tensor, chunk: int) -> torch.Tensor:
    """Whether each point lies in some ball (centre, radius); a boolean ``[len(points)]``."""
    hits = [(torch.cdist(points[i : i + chunk], centres) <= radii[None]).any(1) for i in range(0, len(points), chunk)]
    return torch.cat(hits)


def precision_recall(
    real_features: torch.Tensor | np.ndarray,
    fake_features: torch.Tensor | np.ndarray,
    k: int = 3,
    chunk: int = 1024,
) -> tuple[float, float]:
    """Improved precision and recall (Kynkäänniemi et al. 2019) with Euclidean k-NN balls.

    precision = fraction of fake samples inside some real ball B(r, d_k(r; real));
    recall = fraction of real samples inside some fake ball B(g, d_k(g; fake)), d_k being the distance to the k-th
    nearest other member of the same set (the paper uses k = 3).
    """
    if k < 1 or chunk < 1:
        raise ValueError(f"k and chunk must be >= 1, got {k}, {chunk}")
    real, fake = _pair(real_features, fake_features, k + 1, ("real_features", "fake_features"))
    r_real = _min_and_kth(real, real, k, chunk, exclude_self=True)
    r_fake = _min_and_kth(fake, fake, k, chunk, exclude_self=True)
    precision = _covered(fake, real, r_real, chunk).double().mean()
    recall = _covered(real, fake, r_fake, chunk).double().mean()
    return float(precision), float(recall)


@dataclass(frozen=True)
class MemorisationReport:
    """Nearest-neighbour memorisation check of generated samples (see :func:`memorisation`).

    Attributes:
        train_nearest_fraction: Fraction of samples whose nearest neighbour in train ∪ held-out is a training one.
        expected_fraction: The same for fresh draws from the data distribution: N_train / (N_train + N_held).
        z_score: (fraction − expected) / √(expected (1 − expected) / n_generated); ≫ 3 flags memorisation.
        median_distance_ratio: Median over samples of d(train) / d(held-out) (≈ 0 for copies; for fresh draws
            below 1 when the train set is the larger one, since a larger set has closer neighbours).
        copy_fraction: Fraction of samples whose d(train) is below ``copy_ratio`` × d(held-out).
    """

    train_nearest_fraction: float
    expected_fraction: float
    z_score: float
    median_distance_ratio: float
    copy_fraction: float


def memorisation(
    generated: torch.Tensor | np.ndarray,
    train: torch.Tensor | np.ndarray,
    held_out: torch.Tensor | np.ndarray,
    copy_ratio: float = 1.0 / 3.0,
    chunk: int = 1024,
) -> MemorisationReport:
    """Compare each generated sample's nearest training and nearest held-out neighbour (Euclidean, flattened).

    Held-out images are fresh draws the model never saw, so a generator that does not memorise is as likely to land
    next to a held-out image as next to a training one, in proportion to the set sizes (``expected_fraction``).
    Pass images (pixel-space copies) or features (semantic copies); the three sets must share a shape per row.
    """
    g = _features(generated, "generated", 1)
    tr, ho = _features(train, "train", 1), _features(held_out, "held_out", 1)
    if not g.shape[1] == tr.shape[1] == ho.shape[1]:
        raise ValueError(f"row sizes differ: generated {g.shape[1]}, train {tr.shape[1]}, held_out {ho.shape[1]}")
    if not copy_ratio > 0:
        raise ValueError(f"copy_ratio must be > 0, got {copy_ratio}")
    d_train = _min_and_kth(g, tr, 1, chunk, exclude_self=False)
    d_held = _min_and_kth(g, ho, 1, chunk, exclude_self=False)
    closer = (d_train < d_held).double() + 0.5 * (d_train == d_held).double()
    frac = float(closer.mean())
    p0 = tr.shape[0] / (tr.shape[0] + ho.shape[0])
    z = (frac - p0) / np.sqrt(p0 * (1 - p0) / g.shape[0])
    ratio = d_train / d_held.clamp_min(1e-300)
    return MemorisationReport(
        train_nearest_fraction=frac,
        expected_fraction=p0,
        z_score=float(z),
        median_distance_ratio=float(ratio.median()),
        copy_fraction=float((d_train < copy_ratio * d_held).double().mean()),
    )
