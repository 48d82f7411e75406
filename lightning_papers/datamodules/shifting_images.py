"""``ShiftingImageDataModule``: a real image classifier's deployment stream whose corruption switches or drifts.

Clean images train a classifier; the validation loader then serves, **in a fixed order**, held-out images whose
corruption (rotation, Gaussian blur, Gaussian noise, contrast loss) follows a schedule over time: ``"piecewise"``
switches corruption every ``n_stream / len(corruptions)`` images (K i.i.d. segments), ``"drift"`` raises one
corruption's severity linearly from 0 to ``severity`` (a slowly drifting mean). This is the non-stationary setting of
adaptive calibration (Liu, Luo, Ratliff 2026, arXiv 2605.11490) on a real classifier's scores.

Data: Fashion-MNIST from Debian's ``dataset-fashion-mnist`` package (``apt-get install dataset-fashion-mnist``,
idx files under ``/usr/share/datasets/fashion-mnist``); without it (or with ``source="digits"``) scikit-learn's
8×8 digits, with a message saying so. The test loader serves clean held-out images (a stationary stream; also the
clean validation data a temperature is fitted on). Every split and every corruption is drawn from ``seed``.
"""

from __future__ import annotations

import gzip
import math
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from lightning.pytorch import LightningDataModule
from lightning.pytorch.utilities import rank_zero_info
from torch.utils.data import DataLoader, TensorDataset

CORRUPTIONS = ("none", "rotation", "blur", "noise", "contrast")
FASHION_DIR = "/usr/share/datasets/fashion-mnist"


def _read_idx(path: Path, offset: int) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        return np.frombuffer(f.read(), dtype=np.uint8, offset=offset)


def load_fashion_mnist(root: str | Path = FASHION_DIR) -> tuple[np.ndarray, np.ndarray]:
    """All 70 000 Fashion-MNIST images ``[N, 28, 28]`` in [0, 1] (train then test files) and their labels."""
    root = Path(root)
    xs, ys = [], []
    for split in ("train", "t10k"):
        xs.append(_read_idx(root / f"{split}-images-idx3-ubyte.gz", 16).reshape(-1, 28, 28))
        ys.append(_read_idx(root / f"{split}-labels-idx1-ubyte.gz", 8))
    return np.concatenate(xs).astype(np.float32) / 255.0, np.concatenate(ys).astype(np.int64)


def load_digits_images() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's 1797 digits ``[N, 8, 8]`` in [0, 1] and their labels."""
    from sklearn.datasets import load_digits

    d = load_digits()
    return (d.images / 16.0).astype(np.float32), d.target.astype(np.int64)


def corrupt(x: torch.Tensor, kind: str, severity: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Apply corruption ``kind`` to images ``x`` ``[N, 1, H, W]`` in [0, 1] with per-image ``severity`` ``[N]``.

    Severity 1 means: rotation by up to ±60° (random sign), blur with σ = 1.5 px, additive noise with σ = 0.4,
    contrast scaled by 0.2 around the image mean. Severity 0 leaves the image unchanged. Output in [0, 1].
    """
    if kind not in CORRUPTIONS:
        raise ValueError(f"corruption must be one of {CORRUPTIONS}, got {kind!r}")
    s = severity.to(x.dtype).view(-1, 1, 1, 1)
    if kind == "none":
        return x
    if kind == "rotation":
        sign = torch.where(torch.rand(x.shape[0], generator=generator) < 0.5, -1.0, 1.0)
        a = math.radians(60.0) * severity.to(x.dtype) * sign
        theta = torch.zeros(x.shape[0], 2, 3, dtype=x.dtype)
        theta[:, 0, 0], theta[:, 0, 1], theta[:, 1, 0], theta[:, 1, 1] = a.cos(), -a.sin(), a.sin(), a.cos()
        grid = torch.nn.functional.affine_grid(theta, list(x.shape), align_corners=False)
        return torch.nn.functional.grid_sample(x, grid, align_corners=False).clamp(0, 1)
    if kind == "blur":
        out = torch.empty_like(x)
        for level in torch.unique(severity).tolist():  # one separable Gaussian kernel per severity level
            at = severity == level
            sigma = max(1.5 * level, 1e-3)
            r = torch.arange(-3, 4, dtype=x.dtype)
            k = torch.exp(-(r**2) / (2 * sigma**2))
            k = k / k.sum()
            y = torch.nn.functional.conv2d(x[at], k.view(1, 1, 1, 7), padding=(0, 3))
            out[at] = torch.nn.functional.conv2d(y, k.view(1, 1, 7, 1), padding=(3, 0))
        return out.clamp(0, 1)
    if kind == "noise":
        return (x + 0.4 * s * torch.randn(x.shape, generator=generator, dtype=x.dtype)).clamp(0, 1)
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return (mean + (x - mean) * (1.0 - 0.8 * s)).clamp(0, 1)


class ShiftingImageDataModule(LightningDataModule):
    """Clean training images, an ordered validation stream whose corruption switches or drifts, clean test images.

    Args:
        source: ``"auto"`` (Fashion-MNIST if its Debian package is installed, else digits), ``"fashion_mnist"``
            (error if absent) or ``"digits"``.
        n_train: Clean training images.
        n_clean: Clean held-out images served by ``test_dataloader`` (a stationary stream).
        n_stream: Images in the validation stream.
        schedule: ``"piecewise"`` (one corruption per equal segment, in the order of ``corruptions``) or
            ``"drift"`` (``drift_corruption`` with severity rising linearly from 0 to ``severity``).
        corruptions: The piecewise segments, each one of ``none``, ``rotation``, ``blur``, ``noise``, ``contrast``.
        drift_corruption: The corruption of the drift schedule.
        severity: Severity of the piecewise segments and the end severity of the drift (0 to 1).
        batch_size: Batch size of every loader.
        seed: Seed of the split, the training order and the corruptions.
        data_dir: Where the Fashion-MNIST idx files are.
    """

    def __init__(
        self,
        source: Literal["auto", "fashion_mnist", "digits"] = "auto",
        n_train: int = 6000,
        n_clean: int = 2000,
        n_stream: int = 8000,
        schedule: Literal["piecewise", "drift"] = "piecewise",
        corruptions: tuple[str, ...] = ("none", "rotation", "blur", "noise", "contrast"),
        drift_corruption: str = "rotation",
        severity: float = 0.7,
        batch_size: int = 250,
        seed: int = 0,
        data_dir: str = FASHION_DIR,
    ) -> None:
        super().__init__()
        if source not in ("auto", "fashion_mnist", "digits"):
            raise ValueError(f"source must be 'auto', 'fashion_mnist' or 'digits', got {source!r}")
        if schedule not in ("piecewise", "drift"):
            raise ValueError(f"schedule must be 'piecewise' or 'drift', got {schedule!r}")
        for kind in (*corruptions, drift_corruption):
            if kind not in CORRUPTIONS:
                raise ValueError(f"corruptions must be among {CORRUPTIONS}, got {kind!r}")
        if not corruptions:
            raise ValueError("corruptions must name at least one segment")
        if not 0.0 <= severity <= 1.0:
            raise ValueError(f"severity must be in [0, 1], got {severity}")
        for name, n in (("n_train", n_train), ("n_clean", n_clean), ("n_stream", n_stream), ("batch_size", batch_size)):
            if n < 1:
                raise ValueError(f"{name} must be a positive integer, got {n}")
        self.source, self.data_dir = source, data_dir
        self.n_train, self.n_clean, self.n_stream = n_train, n_clean, n_stream
        self.schedule, self.corruptions, self.drift_corruption = schedule, tuple(corruptions), drift_corruption
        self.severity, self.batch_size, self.seed = severity, batch_size, seed
        self.dataset_name = ""
        self.segment = np.zeros(0, dtype=np.int64)  # per stream image: index of its corruption segment
        self.stream_severity = np.zeros(0)

    def load_images(self) -> tuple[np.ndarray, np.ndarray]:
        """The image pool (Fashion-MNIST or digits) as ``[N, H, W]`` floats in [0, 1] and labels."""
        found = (Path(self.data_dir) / "t10k-labels-idx1-ubyte.gz").exists()
        if self.source == "fashion_mnist" and not found:
            raise FileNotFoundError(
                f"Fashion-MNIST not found under {self.data_dir}: install Debian's dataset-fashion-mnist "
                "(apt-get install dataset-fashion-mnist) or use source='digits'"
            )
        if self.source != "digits" and found:
            self.dataset_name = "fashion_mnist"
            return load_fashion_mnist(self.data_dir)
        if self.source == "auto":
            rank_zero_info(
                f"ShiftingImageDataModule: Fashion-MNIST not found under {self.data_dir} (Debian package "
                "dataset-fashion-mnist); using scikit-learn's 8x8 digits instead"
            )
        self.dataset_name = "digits"
        return load_digits_images()

    def stream_schedule(self) -> tuple[list[str], np.ndarray, np.ndarray]:
        """``(kinds, segment, severity)``: segment names and, per stream image, its segment and severity."""
        t = np.arange(self.n_stream)
        if self.schedule == "drift":
            return [self.drift_corruption], np.zeros(self.n_stream, np.int64), self.severity * t / max(1, t[-1])
        seg = t * len(self.corruptions) // self.n_stream
        return list(self.corruptions), seg, np.full(self.n_stream, self.severity)

    def setup(self, stage: str | None = None) -> None:
        if self.segment.size:
            return
        x, y = self.load_images()
        need = self.n_train + self.n_clean + self.n_stream
        if need > len(y):
            raise ValueError(f"n_train + n_clean + n_stream = {need} exceeds the {len(y)} {self.dataset_name} images")
        gen = torch.Generator().manual_seed(self.seed)
        order = torch.randperm(len(y), generator=gen).numpy()
        x_t = torch.from_numpy(x[order[:need]]).unsqueeze(1)
        y_t = torch.from_numpy(y[order[:need]])
        a, b = self.n_train, self.n_train + self.n_clean
        self.train_set = TensorDataset(x_t[:a], y_t[:a])
        self.clean_set = TensorDataset(x_t[a:b], y_t[a:b])
        kinds, self.segment, self.stream_severity = self.stream_schedule()
        xs = x_t[b:].clone()
        sev = torch.from_numpy(self.stream_severity)
        for k, kind in enumerate(kinds):
            at = torch.from_numpy(self.segment == k)
            xs[at] = corrupt(xs[at], kind, sev[at], gen)
        self.segment_names = kinds
        self.stream_set = TensorDataset(xs, y_t[b:])

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """``(1, H, W)`` of the images (after ``setup``)."""
        return tuple(self.train_set.tensors[0].shape[1:])  # type: ignore[return-value]

    def train_dataloader(self) -> DataLoader:
        gen = torch.Generator().manual_seed(self.seed + 1)
        return DataLoader(self.train_set, batch_size=self.batch_size, shuffle=True, generator=gen)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.stream_set, batch_size=self.batch_size, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return DataLoader(self.clean_set, batch_size=self.batch_size, shuffle=False)
