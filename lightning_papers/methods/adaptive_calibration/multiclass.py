"""Multiclass scores reduced to the binary (probability, label) pairs that adaptive calibrators recalibrate.

A ``[B, C]`` array of logits or probabilities becomes, for ``AdaptiveCalibration(task="multiclass")``
(:class:`lightning_papers.callbacks.AdaptiveCalibration`):

* **top-label** (default): one pair per row, the confidence of the predicted class ``max_c p_c`` and whether the
  prediction is right, ``1[argmax_c p_c = y]``. The binary ECE of these pairs is the multiclass (top-label) ECE of
  torchmetrics' ``MulticlassCalibrationError``; ties in ``argmax`` go to the lowest class index, as in torch.
* **class-wise** (one-vs-rest): C pairs per row in row-major order, ``(p_c, 1[y = c])`` with class ``c`` as the
  pair's *head*; each class gets its own calibrators.

Logits go through a softmax. Probabilities must lie in [0, 1] with rows summing to 1 (within ``atol``); labels are
integers in [0, C). Every check names the first bad value.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch

ScoreKind = Literal["probs", "logits"]


def as_matrix(scores: torch.Tensor | np.ndarray, name: str = "scores") -> np.ndarray:
    """A float64 ``[B, C]`` NumPy copy of a tensor or array; raises unless it has rank 2 and C >= 2."""
    arr = scores.detach().cpu().double().numpy() if isinstance(scores, torch.Tensor) else np.asarray(scores, float)
    if arr.ndim != 2 or arr.shape[1] < 2:
        raise ValueError(f"multiclass {name} must have shape [batch, num_classes >= 2], got shape {tuple(arr.shape)}")
    return arr


def class_probabilities(scores: torch.Tensor | np.ndarray, kind: ScoreKind = "probs", atol: float = 1e-4) -> np.ndarray:
    """Validated ``[B, C]`` class probabilities from logits (softmax) or probabilities.

    Args:
        scores: ``[B, C]`` logits or probabilities.
        kind: ``"logits"`` (any finite reals) or ``"probs"`` (in [0, 1], rows summing to 1).
        atol: Tolerance of the row sums in ``"probs"`` mode.
    """
    if kind not in ("probs", "logits"):
        raise ValueError(f"kind must be 'probs' or 'logits', got {kind!r}")
    arr = as_matrix(scores, kind)
    if arr.size and not np.all(np.isfinite(arr)):
        raise ValueError(f"multiclass {kind} must be finite, got {arr[~np.isfinite(arr)][0]}")
    if kind == "logits":
        z = arr - arr.max(axis=1, keepdims=True)
        e = np.exp(z)
        return e / e.sum(axis=1, keepdims=True)
    if arr.size and (arr.min() < 0.0 or arr.max() > 1.0):
        raise ValueError(f"multiclass probabilities must be in [0, 1], got {arr[(arr < 0.0) | (arr > 1.0)][0]}")
    sums = arr.sum(axis=1)
    bad = np.abs(sums - 1.0) > atol
    if bad.any():
        row = int(np.argmax(bad))
        raise ValueError(
            f"multiclass probability rows must sum to 1, row {row} sums to {sums[row]:.6g} "
            "(pass logits with input='logits', or apply a softmax)"
        )
    return arr


def class_labels(target: torch.Tensor | np.ndarray, num_classes: int, batch: int) -> np.ndarray:
    """Validated int64 labels in [0, num_classes), one per row of a batch of ``batch`` rows."""
    y = target.detach().cpu().double().numpy() if isinstance(target, torch.Tensor) else np.asarray(target, float)
    y = y.reshape(-1)
    if y.size != batch:
        raise ValueError(f"need one class label per row: {batch} rows of scores but {y.size} labels")
    bad = ~np.isfinite(y) | (y != np.round(y)) | (y < 0) | (y >= num_classes)
    if bad.any():
        raise ValueError(f"class labels must be integers in [0, {num_classes}), got {y[bad][0]:g}")
    return y.astype(np.int64)


def top_label(probs: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(confidence, correct, predicted)``: max probability per row, 1.0 where argmax equals the label, argmax."""
    pred = probs.argmax(axis=1)
    conf = probs[np.arange(probs.shape[0]), pred]
    return conf, (pred == labels).astype(np.float64), pred


def one_vs_rest(probs: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(p, y, head)`` flattened row-major: every class probability, 1.0 where it is the label's class, its class."""
    b, c = probs.shape
    onehot = (labels[:, None] == np.arange(c)[None, :]).astype(np.float64)
    return probs.reshape(-1).copy(), onehot.reshape(-1), np.tile(np.arange(c), b)
