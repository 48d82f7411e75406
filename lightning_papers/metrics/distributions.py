"""Distances between sample sets and Gaussian KL, as used to score generative transport (QDSB, [SF]2M).

* :func:`wasserstein`: exact W1 (Euclidean cost) or W2 (squared cost, square-rooted) between two empirical
  measures with uniform weights, by POT's network simplex (``ot.emd2``), as QDSB's ``toy_exp/quality.py``.
* :func:`mmd_rbf`: RBF-kernel MMD with the median heuristic gamma = 1 / median squared pairwise distance
  (pooled samples), unbiased MMD^2 then the square root of its positive part (QDSB's definition).
* :func:`energy_distance`: 2 E|X - Y| - E|X - X'| - E|Y - Y'| (Székely), within-set terms without the diagonal.
* :class:`SampleDistance`: any of the four above as a torchmetrics ``Metric`` (streamed, synced across ranks);
  ``SF2MModule`` scores its validation with it.
* :func:`gaussian_kl` and the :class:`GaussianKL` metric: KL(N(fitted) || N(target)) of the samples' moment-fitted
  Gaussian against a known Gaussian, e.g. the closed-form SB marginal ([SF]2M Table 3 scores Gaussians this way).
"""

from __future__ import annotations

from typing import Literal

import torch
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat


def _check_samples(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    for name, z in (("x", x), ("y", y)):
        if z.ndim != 2 or z.shape[0] < 2:
            raise ValueError(f"{name} must have shape (n, d) with n >= 2, got {tuple(z.shape)}")
        if not torch.isfinite(z).all():
            raise ValueError(f"{name} contains NaN or inf values")
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"x and y must have the same dimension, got {x.shape[1]} and {y.shape[1]}")
    return x.detach().double(), y.detach().double().to(x.device)


def wasserstein(x: torch.Tensor, y: torch.Tensor, p: int = 1) -> float:
    """Exact W_p (p = 1 or 2) between the uniform empirical measures on ``x`` and ``y`` (CPU, O(n^3))."""
    import ot

    if p not in (1, 2):
        raise ValueError(f"p must be 1 or 2, got {p}")
    x, y = _check_samples(x, y)
    d = torch.cdist(x, y)
    cost = d if p == 1 else d**2
    a = torch.full((x.shape[0],), 1.0 / x.shape[0], dtype=torch.float64)
    b = torch.full((y.shape[0],), 1.0 / y.shape[0], dtype=torch.float64)
    val = float(ot.emd2(a.numpy(), b.numpy(), cost.cpu().numpy(), numItermax=10_000_000))
    return val if p == 1 else max(val, 0.0) ** 0.5


def median_gamma(x: torch.Tensor, y: torch.Tensor) -> float:
    """1 / median of the pooled pairwise squared distances (off-diagonal)."""
    z = torch.cat([x, y]).double()
    d2 = torch.cdist(z, z) ** 2
    off = d2[~torch.eye(z.shape[0], dtype=torch.bool, device=z.device)]
    med = float(off.median())
    if med <= 0:
        raise ValueError("median pairwise distance is 0 (all samples equal); MMD median heuristic is undefined")
    return 1.0 / med


def mmd_rbf(x: torch.Tensor, y: torch.Tensor, gamma: float | None = None) -> float:
    """sqrt(max(0, unbiased MMD^2)) with kernel exp(-gamma |a - b|^2); ``gamma=None`` uses the median heuristic."""
    x, y = _check_samples(x, y)
    g = median_gamma(x, y) if gamma is None else gamma
    if not g > 0:
        raise ValueError(f"gamma must be > 0, got {g}")
    n, m = x.shape[0], y.shape[0]
    kxx = torch.exp(-g * torch.cdist(x, x) ** 2)
    kyy = torch.exp(-g * torch.cdist(y, y) ** 2)
    kxy = torch.exp(-g * torch.cdist(x, y) ** 2)
    mmd2 = (kxx.sum() - kxx.diagonal().sum()) / (n * (n - 1))
    mmd2 = mmd2 + (kyy.sum() - kyy.diagonal().sum()) / (m * (m - 1)) - 2 * kxy.mean()
    return max(float(mmd2), 0.0) ** 0.5


def energy_distance(x: torch.Tensor, y: torch.Tensor) -> float:
    """2 E|X - Y| - E|X - X'| - E|Y - Y'| with within-set means over distinct pairs (>= 0 in expectation)."""
    x, y = _check_samples(x, y)
    n, m = x.shape[0], y.shape[0]
    dxy = torch.cdist(x, y).mean()
    dxx = torch.cdist(x, x).sum() / (n * (n - 1))
    dyy = torch.cdist(y, y).sum() / (m * (m - 1))
    return float(2 * dxy - dxx - dyy)


def gaussian_kl(mean_p: torch.Tensor, cov_p: torch.Tensor, mean_q: torch.Tensor, cov_q: torch.Tensor) -> float:
    """KL(N(mean_p, cov_p) || N(mean_q, cov_q)) in nats (both covariances must be positive definite)."""
    mp = mean_p.double()
    mq = mean_q.double().to(mp.device)
    cp, cq = cov_p.double(), cov_q.double().to(mp.device)
    d = mp.shape[0]
    if cp.shape != (d, d) or cq.shape != (d, d) or mq.shape != (d,):
        raise ValueError(
            f"shapes must be (d,), (d, d) with d={d}; got {tuple(cp.shape)}, {tuple(mq.shape)}, {tuple(cq.shape)}"
        )
    lq = torch.linalg.cholesky(cq)
    lp = torch.linalg.cholesky(cp)
    diff = (mq - mp).unsqueeze(1)
    trace = torch.cholesky_solve(cp, lq).trace()
    maha = (diff * torch.cholesky_solve(diff, lq)).sum()
    logdet = 2 * (torch.log(lq.diagonal()).sum() - torch.log(lp.diagonal()).sum())
    return float(0.5 * (trace + maha - d + logdet))


class GaussianKL(Metric):
    """KL from the moment-fitted Gaussian of the streamed samples to a fixed target N(mean, cov).

    Fixed-size sum states (count, sum x, sum x x^T) reduce exactly across DDP ranks.

    Args:
        mean: Target mean ``(d,)``.
        cov: Target covariance ``(d, d)``, positive definite.
    """

    is_differentiable = False
    higher_is_better = False
    full_state_update = False

    def __init__(self, mean: torch.Tensor, cov: torch.Tensor, **kwargs: object) -> None:
        super().__init__(**kwargs)
        d = mean.shape[0]
        if mean.ndim != 1 or cov.shape != (d, d):
            raise ValueError(f"mean must be (d,) and cov (d, d); got {tuple(mean.shape)} and {tuple(cov.shape)}")
        # not persistent: the target comes from the constructor, so checkpoints of a module holding the metric
        # load into a module built without it
        self.register_buffer("target_mean", mean.double().clone(), persistent=False)
        self.register_buffer("target_cov", cov.double().clone(), persistent=False)
        self.add_state("count", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("s1", torch.zeros(d, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("s2", torch.zeros(d, d, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, x: torch.Tensor) -> None:
        if x.ndim != 2 or x.shape[1] != self.s1.shape[0]:
            raise ValueError(f"samples must have shape (n, {self.s1.shape[0]}), got {tuple(x.shape)}")
        xd = x.detach().double()
        self.count += xd.shape[0]
        self.s1 += xd.sum(0)
        self.s2 += xd.T @ xd

    def compute(self) -> torch.Tensor:
        mean = self.s1 / self.count
        cov = (self.s2 - self.count * torch.outer(mean, mean)) / (self.count - 1)
        return torch.tensor(gaussian_kl(mean, cov, self.target_mean, self.target_cov), dtype=torch.float64)


class SampleDistance(Metric):
    """W1, W2, RBF-MMD or energy distance between streamed generated samples and target samples.

    These distances have no fixed-size sufficient statistic, so, unlike :class:`GaussianKL`, the states are the
    samples themselves (lists concatenated across ranks). Keep the evaluation sets small (W1/W2 cost O(n^3)).

    Args:
        kind: ``"w1"``, ``"w2"`` (exact, POT), ``"mmd"`` (RBF, median heuristic) or ``"energy"``.
    """

    is_differentiable = False
    higher_is_better = False
    full_state_update = False

    def __init__(self, kind: Literal["w1", "w2", "mmd", "energy"] = "w1", **kwargs: object) -> None:
        super().__init__(**kwargs)
        if kind not in ("w1", "w2", "mmd", "energy"):
            raise ValueError(f"kind must be 'w1', 'w2', 'mmd' or 'energy', got {kind!r}")
        self.kind = kind
        self.add_state("generated", default=[], dist_reduce_fx="cat")
        self.add_state("target", default=[], dist_reduce_fx="cat")

    def update(self, generated: torch.Tensor, target: torch.Tensor) -> None:
        for name, z in (("generated", generated), ("target", target)):
            if z.ndim != 2:
                raise ValueError(f"{name} must have shape (n, d), got {tuple(z.shape)}")
        if generated.shape[1] != target.shape[1]:
            raise ValueError(f"generated and target dims differ: {generated.shape[1]} vs {target.shape[1]}")
        self.generated.append(generated.detach())
        self.target.append(target.detach())

    def compute(self) -> torch.Tensor:
        if isinstance(self.generated, list) and not self.generated:  # after a DDP sync the states are tensors
            raise RuntimeError("SampleDistance.compute() called before any update()")
        x, y = dim_zero_cat(self.generated), dim_zero_cat(self.target)
        if self.kind in ("w1", "w2"):
            value = wasserstein(x, y, 1 if self.kind == "w1" else 2)
        elif self.kind == "mmd":
            value = mmd_rbf(x, y)
        else:
            value = energy_distance(x, y)
        return torch.tensor(value, dtype=torch.float64)
