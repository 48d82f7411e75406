"""Time-ordered binary streams with known means μ_t: i.i.d., K piecewise-stationary segments, a deviation budget C,
and a user CSV of (probability, label) pairs.

The three generated environments are the ones the paper's rates are stated for (Liu, Luo, Ratliff 2026, arXiv
2605.11490): i.i.d. (E1), K i.i.d. segments (E2) and a deviation budget C (E3). Every batch is a pair
``(y, reference)`` of float64 tensors in time order (never shuffled): the outcomes and, for the generators, the true
means μ_t (for a CSV, the user's own probabilities, so the method reports their calibration next to its own).

The stream is served by :class:`StreamBatches`, a resumable iterable: Lightning saves its position in a checkpoint
(it has ``state_dict`` / ``load_state_dict``), so a run resumed from a checkpoint taken at any step plays the rest
of the stream, not the stream from round 0. It is not a ``torch.utils.data.DataLoader``, so under DDP Lightning
injects no ``DistributedSampler``: every rank plays the same whole stream, in order.

The non-stationarity measure of the paper is C = min_μ Σ_t |μ_t − μ| (deviation from the best constant),
computed by :func:`deviation_budget`.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from lightning.pytorch import LightningDataModule
from typing_extensions import override

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


class StreamBatches:
    """``(y, reference)`` batches of one stream in time order, resumable from a saved position.

    ``len()`` is the number of batches of a whole pass; an iteration starts at ``position`` (the rounds already
    served in this pass) and runs to the end of the stream; the next iteration starts a new pass at round 0.
    ``state_dict()`` / ``load_state_dict()`` hold the position, which Lightning stores in its checkpoints.

    Args:
        y: Outcomes in time order.
        reference: One reference probability per outcome (true means, or the user's own forecasts).
        batch_size: Rounds per batch.
    """

    def __init__(self, y: np.ndarray, reference: np.ndarray, batch_size: int) -> None:
        if len(y) != len(reference):
            raise ValueError(f"y and reference must have the same length, got {len(y)} and {len(reference)}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size}")
        self.y = torch.as_tensor(np.asarray(y, dtype=np.float64))
        self.reference = torch.as_tensor(np.asarray(reference, dtype=np.float64))
        self.batch_size = batch_size
        self.position = 0

    def __len__(self) -> int:
        return math.ceil(len(self.y) / self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        n, bs = len(self.y), self.batch_size
        start = self.position if self.position < n else 0  # a finished pass starts the next one at round 0
        for i in range(start, n, bs):
            j = min(i + bs, n)
            self.position = j  # counted when handed out: Lightning does not prefetch from a loader with a length
            yield self.y[i:j], self.reference[i:j]

    def state_dict(self) -> dict[str, int]:
        return {"position": self.position, "length": len(self.y), "batch_size": self.batch_size}

    def load_state_dict(self, state: dict[str, int]) -> None:
        saved = (int(state["length"]), int(state["batch_size"]))
        if saved != (len(self.y), self.batch_size):
            raise ValueError(
                f"the checkpoint's stream had length {saved[0]} and batch_size {saved[1]}; this stream has "
                f"{len(self.y)} and {self.batch_size}: resume with the same data settings"
            )
        self.position = int(state["position"])


class StreamDataModule(LightningDataModule):
    """Base of every stream: serves ``(y, reference)`` batches in time order through :class:`StreamBatches`.

    Subclasses implement :meth:`load_stream`; it runs once, in ``setup``. After ``setup``, ``y``, ``reference`` and
    ``length`` (T) are set.

    Args:
        batch_size: Rounds per batch (the forecaster still plays them one by one, in order).
    """

    def __init__(self, batch_size: int = 1000) -> None:
        super().__init__()
        if batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size}")
        self.batch_size = batch_size
        self.length: int | None = None
        self.y: np.ndarray | None = None
        self.reference: np.ndarray | None = None

    def load_stream(self) -> tuple[np.ndarray, np.ndarray]:
        """Return ``(y, reference)``: the outcomes and one reference probability per outcome, in time order."""
        raise NotImplementedError

    @override
    def setup(self, stage: str | None = None) -> None:
        if self.y is None:
            self.y, self.reference = self.load_stream()
            self.length = int(self.y.size)

    @override
    def train_dataloader(self) -> StreamBatches:
        self.setup()
        return StreamBatches(self.y, self.reference, self.batch_size)


class BernoulliStreamDataModule(StreamDataModule):
    """Base of the generated streams: outcomes y_t ~ Bernoulli(μ_t), drawn once from ``seed``.

    Subclasses implement :meth:`means`.

    Args:
        length: T, the number of rounds.
        batch_size: Rounds per batch (the forecaster still plays them one by one, in order).
        seed: Seed of the means and the outcomes.
    """

    def __init__(self, length: int = 20000, batch_size: int = 1000, seed: int = 0) -> None:
        super().__init__(batch_size)
        if length < 1:
            raise ValueError(f"length must be a positive integer, got {length}")
        self.length, self.seed = length, seed

    def means(self, rng: np.random.Generator) -> np.ndarray:
        """The T means μ_t, drawn with ``rng``."""
        raise NotImplementedError

    @override
    def load_stream(self) -> tuple[np.ndarray, np.ndarray]:
        rng = np.random.default_rng(self.seed)
        mu = self.means(rng)
        return (rng.random(mu.size) < mu).astype(np.float64), mu


class IIDStreamDataModule(BernoulliStreamDataModule):
    """E1: an i.i.d. stream (K = 1, C = 0).

    Args:
        mean: μ; ``None`` draws it from U[0.2, 0.8].
        kwargs: ``length``, ``batch_size``, ``seed`` of :class:`BernoulliStreamDataModule`.
    """

    def __init__(self, mean: float | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if mean is not None:
            check_probabilities(np.asarray([mean]), "mean")
        self.mean = mean

    @override
    def means(self, rng: np.random.Generator) -> np.ndarray:
        return iid_means(self.length, rng, self.mean)


class PiecewiseStreamDataModule(BernoulliStreamDataModule):
    """E2: K equal-length i.i.d. segments with means from U[low, high].

    Args:
        segments: K.
        low: Lower end of the segment means.
        high: Upper end of the segment means.
        kwargs: ``length``, ``batch_size``, ``seed`` of :class:`BernoulliStreamDataModule`.
    """

    def __init__(self, segments: int = 4, low: float = 0.1, high: float = 0.9, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if not 0 <= low <= high <= 1:
            raise ValueError(f"need 0 <= low <= high <= 1, got low={low}, high={high}")
        if not 1 <= segments <= self.length:
            raise ValueError(f"segments must be between 1 and length={self.length}, got {segments}")
        self.segments, self.low, self.high = segments, low, high

    @override
    def means(self, rng: np.random.Generator) -> np.ndarray:
        return piecewise_means(self.length, self.segments, rng, self.low, self.high)


class DeviationBudgetStreamDataModule(BernoulliStreamDataModule):
    """E3: a stream whose means deviate from a constant by a total budget C (rare shifts or a slow drift).

    Args:
        budget: C = min_μ Σ_t |μ_t − μ|.
        mode: ``"shifts"`` (±shift on C/shift random rounds) or ``"drift"`` (a sinusoid).
        base: The constant the means deviate from.
        shift: Size of one shift (``"shifts"`` mode).
        kwargs: ``length``, ``batch_size``, ``seed`` of :class:`BernoulliStreamDataModule`.
    """

    def __init__(
        self,
        budget: float = 100.0,
        mode: Literal["shifts", "drift"] = "shifts",
        base: float = 0.5,
        shift: float = 0.3,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.budget, self.mode, self.base, self.shift = budget, mode, base, shift
        budget_means(self.length, budget, np.random.default_rng(0), mode, base, shift)  # fail early on bad settings

    @override
    def means(self, rng: np.random.Generator) -> np.ndarray:
        return budget_means(self.length, self.budget, rng, self.mode, self.base, self.shift)


class CSVStreamDataModule(StreamDataModule):
    """A user's time-ordered (probability, label) pairs from a CSV with a header row.

    The labels are the stream; the probabilities are the user's own forecasts, served as ``reference`` so the
    method logs their calibration next to the forecaster's.

    Args:
        path: CSV file.
        prob_column: Column of probabilities in [0, 1].
        label_column: Column of 0/1 labels.
        kwargs: ``batch_size`` of :class:`StreamDataModule`.
    """

    def __init__(self, path: str, prob_column: str = "probability", label_column: str = "label", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.path, self.prob_column, self.label_column = path, prob_column, label_column

    @override
    def load_stream(self) -> tuple[np.ndarray, np.ndarray]:
        reference, y = read_stream_csv(self.path, self.prob_column, self.label_column)
        return y, reference
