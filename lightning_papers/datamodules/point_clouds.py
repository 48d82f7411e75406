"""Pairs of point clouds for bridge / transport methods: 2D toys, Gaussians with closed-form ground truth, user files.

A datamodule here holds two *unpaired* clouds, ``train_source``/``train_target`` and held-out
``val_source``/``val_target`` (float32 ``(N, d)`` tensors). The method draws its own pairs from them (a coupling),
so the train loader is a clock of ``steps_per_epoch`` dummy batches (:class:`StepClock`, which resumes
mid-epoch from a checkpoint) and the val loader a single dummy batch.

Gaussian ground truth (Janati et al. 2020, arXiv 2006.02572; Mallasto et al. 2022; Bunne et al. 2023,
arXiv 2205.14581): for
mu = N(m0, A), nu = N(m1, B), squared cost and regulariser epsilon = 2 sigma^2, the entropic OT plan is Gaussian
with cross-covariance C = 1/2 A^{1/2} D A^{-1/2} - sigma^2/2 I, D = (4 A^{1/2} B A^{1/2} + sigma^4 I)^{1/2}, and
the Schrödinger bridge with reference sigma W has marginals N((1-t) m0 + t m1, Sigma_t) with
Sigma_t = (1-t)^2 A + t^2 B + t(1-t)(C + C^T) + sigma^2 t(1-t) I.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from lightning.pytorch import LightningDataModule
from torch.utils.data import DataLoader

from lightning_papers.datamodules.step_clock import StepClock, single_step_loader

TOYS = ("8gaussians", "moons", "gaussian", "checkerboard")


def sample_toy(name: str, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """``n`` points of a 2D toy, as in TorchCFM's ``torchcfm.utils`` samplers.

    * ``8gaussians``: centres on a circle of radius 5, covariance sqrt(0.1) I (TorchCFM passes sqrt(var) as the
      covariance, so the per-axis variance is 0.316, not 0.1).
    * ``moons``: two half circles (angle uniform, sklearn geometry) + N(0, 0.2^2) noise, then x 3 - 1.
    * ``gaussian``: N(0, 1.5^2 I) (QDSB's toy suite).
    * ``checkerboard``: uniform on the 8 dark squares of a 4 x 4 board of side 2 (FFJORD's toy).
    """
    g = generator
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    if name == "8gaussians":
        s = 1 / math.sqrt(2)
        centers = 5 * torch.tensor([(1, 0), (-1, 0), (0, 1), (0, -1), (s, s), (s, -s), (-s, s), (-s, -s)])
        return centers[torch.randint(8, (n,), generator=g)] + 0.1**0.25 * torch.randn(n, 2, generator=g)
    if name == "moons":
        th = math.pi * torch.rand(n, generator=g)
        lower = torch.randint(2, (n,), generator=g).bool()[:, None]
        upper_pts = torch.stack([torch.cos(th), torch.sin(th)], 1)
        lower_pts = torch.stack([1 - torch.cos(th), 0.5 - torch.sin(th)], 1)
        pts = torch.where(lower, lower_pts, upper_pts) + 0.2 * torch.randn(n, 2, generator=g)
        return 3 * pts - 1
    if name == "gaussian":
        return 1.5 * torch.randn(n, 2, generator=g)
    if name == "checkerboard":
        x1 = 4 * torch.rand(n, generator=g) - 2
        x2 = torch.rand(n, generator=g) - 2 * torch.randint(2, (n,), generator=g) + torch.floor(x1) % 2
        return 2 * torch.stack([x1, x2], 1)
    raise ValueError(f"unknown toy {name!r}; expected one of {TOYS} or a path to a .npz/.csv file")


def load_points(path: str | Path, key: str | None = None) -> torch.Tensor:
    """An ``(N, d)`` float32 tensor from a ``.npz`` (array ``key``, or its only array) or a numeric ``.csv``.

    A CSV may have one header row; every other cell must be a number (e.g. single-cell PCA embeddings).
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"point cloud file {str(p)!r} does not exist")
    if p.suffix == ".npz":
        with np.load(p) as f:
            if key is None:
                if len(f.files) != 1:
                    raise ValueError(f"{p} holds arrays {f.files}; say which one with source_key / target_key")
                key = f.files[0]
            if key not in f.files:
                raise ValueError(f"{p} has no array {key!r}; it holds {f.files}")
            arr = f[key]
    elif p.suffix == ".csv":
        try:
            arr = np.loadtxt(p, delimiter=",", ndmin=2)
        except ValueError:
            arr = np.loadtxt(p, delimiter=",", ndmin=2, skiprows=1)
    else:
        raise ValueError(f"unsupported point cloud file {str(p)!r}: expected .npz or .csv")
    if arr.ndim != 2:
        raise ValueError(f"{p} must hold a 2-D array (N points x d dims), got shape {arr.shape}")
    x = torch.as_tensor(np.asarray(arr, dtype=np.float32))
    if not torch.isfinite(x).all():
        raise ValueError(f"{p} contains NaN or inf values")
    return x


def sqrtm_psd(m: torch.Tensor, power: float = 0.5) -> torch.Tensor:
    """``m ** power`` of a symmetric positive (semi-)definite matrix, via its eigendecomposition."""
    w, v = torch.linalg.eigh((m + m.T) / 2)
    return (v * w.clamp_min(0.0) ** power) @ v.T


def entropic_cross_covariance(a: torch.Tensor, b: torch.Tensor, sigma: float) -> torch.Tensor:
    """Cross-covariance C of the entropic OT plan (epsilon = 2 sigma^2) between N(., a) and N(., b) (module doc)."""
    a, b = a.double(), b.double()
    a_half, a_mhalf = sqrtm_psd(a), sqrtm_psd(a, -0.5)
    d = sqrtm_psd(4 * a_half @ b @ a_half + sigma**4 * torch.eye(a.shape[0], dtype=a.dtype))
    return 0.5 * a_half @ d @ a_mhalf - 0.5 * sigma**2 * torch.eye(a.shape[0], dtype=a.dtype)


def sb_marginal(
    m0: torch.Tensor, a: torch.Tensor, m1: torch.Tensor, b: torch.Tensor, sigma: float, t: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and covariance at time ``t`` of the Schrödinger bridge between N(m0, a) and N(m1, b)."""
    c = entropic_cross_covariance(a, b, sigma)
    eye = torch.eye(a.shape[0], dtype=torch.float64)
    cov = (1 - t) ** 2 * a.double() + t**2 * b.double() + t * (1 - t) * (c + c.T + sigma**2 * eye)
    return (1 - t) * m0.double() + t * m1.double(), cov


def entropic_ot_cost(m0: torch.Tensor, a: torch.Tensor, m1: torch.Tensor, b: torch.Tensor, sigma: float) -> float:
    """E|x - y|^2 under the entropic plan: |m0 - m1|^2 + tr a + tr b - 2 tr C."""
    c = entropic_cross_covariance(a, b, sigma)
    return float(((m0 - m1).double() ** 2).sum() + a.double().trace() + b.double().trace() - 2 * c.trace())


class PointCloudPairBase(LightningDataModule):
    """Shared part: holds the four clouds and serves the step clock (see module doc)."""

    def __init__(self, steps_per_epoch: int, seed: int) -> None:
        super().__init__()
        if steps_per_epoch < 1:
            raise ValueError(f"steps_per_epoch must be >= 1, got {steps_per_epoch}")
        self.steps_per_epoch, self.seed = steps_per_epoch, seed
        self.train_source: torch.Tensor | None = None
        self.train_target: torch.Tensor | None = None
        self.val_source: torch.Tensor | None = None
        self.val_target: torch.Tensor | None = None

    def make_clouds(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Return ``(train_source, train_target, val_source, val_target)``."""
        raise NotImplementedError

    def setup(self, stage: str | None = None) -> None:
        if self.train_source is not None:
            return
        clouds = [c.float().contiguous() for c in self.make_clouds()]
        dims = {c.shape[1] for c in clouds}
        if len(dims) != 1:
            raise ValueError(f"source and target clouds must have the same dimension, got {sorted(dims)}")
        self.train_source, self.train_target, self.val_source, self.val_target = clouds

    @property
    def dim(self) -> int:
        self.setup()
        return int(self.train_source.shape[1])  # type: ignore[union-attr]

    def train_dataloader(self) -> DataLoader:
        return StepClock.of(self.steps_per_epoch)

    def val_dataloader(self) -> DataLoader:
        return single_step_loader()

    def test_dataloader(self) -> DataLoader:
        return single_step_loader()


class PointCloudPairDataModule(PointCloudPairBase):
    """Source and target clouds, each a 2D toy name or a user ``.npz``/``.csv`` file.

    Args:
        source: ``8gaussians``, ``moons``, ``gaussian``, ``checkerboard``, or a path to a ``.npz``/``.csv`` file.
        target: Same choices as ``source``.
        n_train: Training points per toy side (QDSB toys: 16384).
        n_val: Held-out points per toy side (QDSB toys: 4096; metrics cost O(n_val^2) or more).
        val_fraction: Share of a user file held out for validation.
        source_key: Array name inside a source ``.npz`` file that holds several arrays (e.g. one per time point).
        target_key: Array name inside a target ``.npz`` file that holds several arrays.
        steps_per_epoch: Training steps per epoch (QDSB toys: 64).
        seed: Seed of the toy samplers and of file splits.
    """

    def __init__(
        self,
        source: str = "8gaussians",
        target: str = "moons",
        n_train: int = 16384,
        n_val: int = 4096,
        val_fraction: float = 0.2,
        source_key: str | None = None,
        target_key: str | None = None,
        steps_per_epoch: int = 64,
        seed: int = 0,
    ) -> None:
        super().__init__(steps_per_epoch, seed)
        for name in (source, target):
            if name not in TOYS and not name.endswith((".npz", ".csv")):
                raise ValueError(f"unknown cloud {name!r}: expected one of {TOYS} or a .npz/.csv path")
        if n_train < 1 or n_val < 1:
            raise ValueError(f"n_train and n_val must be >= 1, got {n_train}, {n_val}")
        if not 0 < val_fraction < 1:
            raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
        self.source, self.target, self.n_train, self.n_val = source, target, n_train, n_val
        self.val_fraction, self.source_key, self.target_key = val_fraction, source_key, target_key

    def _cloud(self, name: str, key: str | None, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        if name in TOYS:
            return sample_toy(name, self.n_train, g), sample_toy(name, self.n_val, g)
        x = load_points(name, key)
        n_val = max(1, int(round(self.val_fraction * x.shape[0])))
        if x.shape[0] - n_val < 1:
            raise ValueError(f"{name} has {x.shape[0]} points, too few to hold out {n_val}")
        perm = torch.randperm(x.shape[0], generator=g)
        return x[perm[n_val:]], x[perm[:n_val]]

    def make_clouds(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        g = torch.Generator().manual_seed(self.seed)
        s_tr, s_val = self._cloud(self.source, self.source_key, g)
        t_tr, t_val = self._cloud(self.target, self.target_key, g)
        return s_tr, t_tr, s_val, t_val


def random_spd(dim: int, low: float, high: float, g: torch.Generator) -> torch.Tensor:
    """A random SPD matrix with eigenvalues uniform in [low, high] and a Haar-random eigenbasis."""
    q, r = torch.linalg.qr(torch.randn(dim, dim, generator=g, dtype=torch.float64))
    q = q * torch.sign(torch.diagonal(r))
    return (q * (low + (high - low) * torch.rand(dim, generator=g, dtype=torch.float64))) @ q.T


class GaussianPairDataModule(PointCloudPairBase):
    """N(m0, A) -> N(m1, B) in ``dim`` dimensions, with the closed-form entropic plan and SB marginals.

    Means: m0 ~ N(0, I), m1 = m0 + ``shift`` times a random unit vector. Covariances: random SPD with eigenvalues
    in [0.25, 2.25] (Haar eigenbasis), or diagonal with ``diagonal=True``.

    Args:
        dim: Dimension d ([SF]2M Table 3 uses 5, 20, 50).
        shift: Distance between the two means.
        diagonal: Diagonal covariances (the problem then splits into independent 1-D problems).
        n_train: Training points per side.
        n_val: Held-out points per side.
        steps_per_epoch: Training steps per epoch.
        seed: Seed of the parameters and the samples.
    """

    def __init__(
        self,
        dim: int = 5,
        shift: float = 3.0,
        diagonal: bool = False,
        n_train: int = 16384,
        n_val: int = 2048,
        steps_per_epoch: int = 64,
        seed: int = 0,
    ) -> None:
        super().__init__(steps_per_epoch, seed)
        if dim < 1 or n_train < 1 or n_val < 1:
            raise ValueError(f"dim, n_train and n_val must be >= 1, got {dim}, {n_train}, {n_val}")
        self.n_train, self.n_val = n_train, n_val
        g = torch.Generator().manual_seed(seed)
        self.m0 = torch.randn(dim, generator=g, dtype=torch.float64)
        u = torch.randn(dim, generator=g, dtype=torch.float64)
        self.m1 = self.m0 + shift * u / u.norm()
        if diagonal:
            self.cov0 = torch.diag(0.25 + 2 * torch.rand(dim, generator=g, dtype=torch.float64))
            self.cov1 = torch.diag(0.25 + 2 * torch.rand(dim, generator=g, dtype=torch.float64))
        else:
            self.cov0, self.cov1 = random_spd(dim, 0.25, 2.25, g), random_spd(dim, 0.25, 2.25, g)
        self._g = g

    def draw(self, mean: torch.Tensor, cov: torch.Tensor, n: int) -> torch.Tensor:
        """``n`` samples of N(mean, cov) from this datamodule's generator (float64)."""
        return mean + torch.randn(n, mean.shape[0], generator=self._g, dtype=torch.float64) @ sqrtm_psd(cov)

    def make_clouds(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        self._g.manual_seed(self.seed + 1)
        return (
            self.draw(self.m0, self.cov0, self.n_train),
            self.draw(self.m1, self.cov1, self.n_train),
            self.draw(self.m0, self.cov0, self.n_val),
            self.draw(self.m1, self.cov1, self.n_val),
        )

    def sb_marginal(self, t: float, sigma: float) -> tuple[torch.Tensor, torch.Tensor]:
        """Closed-form mean and covariance of the SB (reference sigma W) at time ``t``."""
        return sb_marginal(self.m0, self.cov0, self.m1, self.cov1, sigma, t)

    def cross_covariance(self, sigma: float) -> torch.Tensor:
        """Closed-form cross-covariance of the entropic OT plan with epsilon = 2 sigma^2."""
        return entropic_cross_covariance(self.cov0, self.cov1, sigma)
