"""Time-ordered binary streams with known means μ_t: i.i.d., K piecewise-stationary segments, a deviation budget C,
and a user CSV of (probability, label) pairs.

Environments follow ``shared/research/online.md`` §A5 (E1–E3). Every batch is a pair ``(y, reference)`` of float
tensors in time order (never shuffled): the outcomes and, for the generators, the true means μ_t (for a CSV, the
user's own probabilities, so the method reports their calibration next to its own).

The non-stationarity measure of the paper is C = min_μ Σ_t |μ_t − μ| (deviation from the best constant, notes §A2),
computed by :func:`deviation_budget`.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from lightning.pytorch import LightningDataModule
from torch.utils.data import DataLoader, TensorDataset

from lightning_papers.metrics.calibration import check_labels, check_probabilities


def deviation_budget(mu: np.ndarray) -> float:
    """C = min_μ Σ_t |μ_t − μ|, attained at the median of the means."""
    mu = np.asarray(mu, dtype=np.float64)
    return float(np.abs(mu - np.median(mu)).sum()) if mu.size else 0.0


def iid_means(length: int, rng: np.random.Generator, mean: float | None = None) -> np.ndarray:
    """E1: one mean for the whole stream, ``mean`` or drawn from U[0.2, 0.8]."""
    mu = rng.uniform(0.2, 0.8) if mean is None else mean
    return np.full(length, mu)


def piecewise_means(length: int, segments: int, rng: np.random.Generator, low: float = 0.1, high: float = 0.9):
    """E2: ``segments`` equal-length i.i.d. segments, means drawn from U[low, high]."""
    if not 1 <= segments <= length:
        raise ValueError(f"segments must be between 1 and the stream length {length}, got {segments}")
    bounds = np.linspace(0, length, segments + 1).round().astype(int)
    mus = rng.uniform(low, high, segments)
    return np.repeat(mus, np.diff(bounds))


def budget_means(
    length: int,
    budget: float,
    rng: np.random.Generator,
    mode: Literal["shifts", "drift"] = "shifts",
    base: float = 0.5,
    shift: float = 0.3,
    periods: int = 4,
) -> np.ndarray:
    """E3: means with deviation budget C ≈ ``budget`` around ``base``.

    ``"shifts"``: μ_t = base ± shift on round(C / shift) randomly placed rounds (rare shocks; C exact up to that
    rounding). ``"drift"``: a sinusoid base + a·sin(2π·periods·t/T) with a = πC / (2T) (Σ|a sin| ≈ 2aT/π = C).
    """
    if budget < 0:
        raise ValueError(f"budget C must be >= 0, got {budget}")
    if mode == "shifts":
        k = int(round(budget / shift))
        if k > length // 2 or not (0 <= base - shift and base + shift <= 1):
            raise ValueError(
                f"budget C={budget} needs {k} shifted rounds of ±{shift} around {base}; at most {length // 2} "
                "rounds (half the stream) and means inside [0, 1] are possible"
            )
        mu = np.full(length, base)
        idx = rng.choice(length, size=k, replace=False)
        mu[idx] += shift * rng.choice([-1.0, 1.0], size=k)
        return mu
    if mode == "drift":
        amp = math.pi * budget / (2 * length)
        if amp > min(base, 1 - base):
            raise ValueError(
                f"budget C={budget} needs a drift amplitude {amp:.3f} > {min(base, 1 - base)} (means leave [0, 1])"
            )
        t = np.arange(length)
        return base + amp * np.sin(2 * math.pi * periods * (t + 0.5) / length)
    raise ValueError(f"mode must be 'shifts' or 'drift', got {mode!r}")


def read_stream_csv(path: str | Path, prob_column: str, label_column: str) -> tuple[np.ndarray, np.ndarray]:
    """Read a CSV with a header; returns (probabilities, labels), validated, in file order."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"CSV stream file not found: {path}")
    with path.open(newline="") as fh:
        reader = csv.DictReader(fh)
        if reader.fieldnames is None or prob_column not in reader.fieldnames or label_column not in reader.fieldnames:
            raise ValueError(f"{path} must have columns {prob_column!r} and {label_column!r}, got {reader.fieldnames}")
        rows = [(float(r[prob_column]), float(r[label_column])) for r in reader]
    arr = np.asarray(rows, dtype=np.float64).reshape(-1, 2)
    check_probabilities(arr[:, 0], f"{path}:{prob_column}")
    check_labels(arr[:, 1], f"{path}:{label_column}")
    return arr[:, 0], arr[:, 1]


class BernoulliStreamDataModule(LightningDataModule):
    """Base: a stream of outcomes y_t ~ Bernoulli(μ_t), served in order as ``(y, reference)`` batches.

    Subclasses implement :meth:`means`. The stream is generated once in ``setup`` from ``seed``.

    Args:
        length: T, the number of rounds.
        batch_size: Rounds per batch (the forecaster still plays them one by one, in order).
        seed: Seed of the means and the outcomes.
    """

    def __init__(self, length: int = 20000, batch_size: int = 1000, seed: int = 0) -> None:
        super().__init__()
        if length < 1 or batch_size < 1:
            raise ValueError(f"length and batch_size must be positive integers, got {length}, {batch_size}")
        self.length, self.batch_size, self.seed = length, batch_size, seed
        self.y: np.ndarray | None = None
        self.reference: np.ndarray | None = None

    def means(self, rng: np.random.Generator) -> np.ndarray:
        raise NotImplementedError

    def setup(self, stage: str | None = None) -> None:
        if self.y is None:
            rng = np.random.default_rng(self.seed)
            self.reference = self.means(rng)
            self.y = (rng.random(self.reference.size) < self.reference).astype(np.float64)

    def train_dataloader(self) -> DataLoader:
        self.setup()
        ds = TensorDataset(torch.from_numpy(self.y), torch.from_numpy(self.reference))
        return DataLoader(ds, batch_size=self.batch_size, shuffle=False)


class IIDStreamDataModule(BernoulliStreamDataModule):
    """E1: an i.i.d. stream (K = 1, C = 0).

    Args:
        length: T.
        mean: μ; ``None`` draws it from U[0.2, 0.8] (notes §A5).
        batch_size: Rounds per batch.
        seed: Seed.
    """

    def __init__(self, length: int = 20000, mean: float | None = None, batch_size: int = 1000, seed: int = 0) -> None:
        super().__init__(length, batch_size, seed)
        if mean is not None:
            check_probabilities(np.asarray([mean]), "mean")
        self.mean = mean

    def means(self, rng: np.random.Generator) -> np.ndarray:
        return iid_means(self.length, rng, self.mean)


class PiecewiseStreamDataModule(BernoulliStreamDataModule):
    """E2: K equal-length i.i.d. segments with means from U[low, high] (notes §A5).

    Args:
        length: T.
        segments: K.
        low: Lower end of the segment means.
        high: Upper end of the segment means.
        batch_size: Rounds per batch.
        seed: Seed.
    """

    def __init__(
        self,
        length: int = 20000,
        segments: int = 4,
        low: float = 0.1,
        high: float = 0.9,
        batch_size: int = 1000,
        seed: int = 0,
    ) -> None:
        super().__init__(length, batch_size, seed)
        if not 0 <= low <= high <= 1:
            raise ValueError(f"need 0 <= low <= high <= 1, got low={low}, high={high}")
        if not 1 <= segments <= length:
            raise ValueError(f"segments must be between 1 and length={length}, got {segments}")
        self.segments, self.low, self.high = segments, low, high

    def means(self, rng: np.random.Generator) -> np.ndarray:
        return piecewise_means(self.length, self.segments, rng, self.low, self.high)


class DeviationBudgetStreamDataModule(BernoulliStreamDataModule):
    """E3: a stream whose means deviate from a constant by a total budget C (rare shifts or a slow drift).

    Args:
        length: T.
        budget: C = min_μ Σ_t |μ_t − μ|.
        mode: ``"shifts"`` (±shift on C/shift random rounds) or ``"drift"`` (a sinusoid).
        base: The constant the means deviate from.
        shift: Size of one shift (``"shifts"`` mode).
        batch_size: Rounds per batch.
        seed: Seed.
    """

    def __init__(
        self,
        length: int = 20000,
        budget: float = 100.0,
        mode: Literal["shifts", "drift"] = "shifts",
        base: float = 0.5,
        shift: float = 0.3,
        batch_size: int = 1000,
        seed: int = 0,
    ) -> None:
        super().__init__(length, batch_size, seed)
        self.budget, self.mode, self.base, self.shift = budget, mode, base, shift
        budget_means(length, budget, np.random.default_rng(0), mode, base, shift)  # fail early on bad settings

    def means(self, rng: np.random.Generator) -> np.ndarray:
        return budget_means(self.length, self.budget, rng, self.mode, self.base, self.shift)


class CSVStreamDataModule(BernoulliStreamDataModule):
    """A user's time-ordered (probability, label) pairs from a CSV with a header row.

    The labels are the stream; the probabilities are the user's own forecasts, served as ``reference`` so the
    method logs their calibration next to the forecaster's.

    Args:
        path: CSV file.
        prob_column: Column of probabilities in [0, 1].
        label_column: Column of 0/1 labels.
        batch_size: Rounds per batch.
    """

    def __init__(
        self, path: str, prob_column: str = "probability", label_column: str = "label", batch_size: int = 1000
    ) -> None:
        super().__init__(length=1, batch_size=batch_size, seed=0)
        self.path, self.prob_column, self.label_column = path, prob_column, label_column

    def setup(self, stage: str | None = None) -> None:
        if self.y is None:
            self.reference, self.y = read_stream_csv(self.path, self.prob_column, self.label_column)
            self.length = int(self.y.size)
