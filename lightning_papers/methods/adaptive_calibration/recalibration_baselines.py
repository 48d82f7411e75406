"""Standard recalibrators of a classifier's top-label confidence, to compare ``AdaptiveCalibration`` against.

All are plain NumPy and *online* in the same sense as the callback: the forecast for a row is made before its label
is seen.

* :func:`fit_temperature` / :func:`temperature_confidence`: temperature scaling (Guo et al., ICML 2017), one T > 0
  minimising the multiclass NLL of ``softmax(logits / T)``; fitted once on clean validation data (the offline
  standard) or refitted on a sliding window of the stream (:func:`sliding_temperature`).
* :func:`online_platt`: online Platt scaling (Gupta & Ramdas, ICML 2023, "Online Platt Scaling with Calibeating"):
  logistic regression on the features (logit of the raw confidence, 1) fitted by the Online Newton Step, predicting
  each row with the weights learned from the rows before it (without the calibeating step).
* :func:`online_histogram_binning`: histogram binning (Zadrozny & Elkan 2001) played online: the forecast for a row
  is the running frequency of correct predictions among earlier rows in its equal-width bin of raw confidence.
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import minimize_scalar

from lightning_papers.methods.adaptive_calibration.recalibration import logit


def log_softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def fit_temperature(logits: np.ndarray, labels: np.ndarray, bounds: tuple[float, float] = (0.05, 20.0)) -> float:
    """The temperature T in ``bounds`` minimising the mean NLL of ``softmax(logits / T)`` (1-D search in log T)."""
    if len(labels) == 0:
        return 1.0
    rows = np.arange(len(labels))

    def nll(log_t: float) -> float:
        return float(-log_softmax(logits / np.exp(log_t))[rows, labels].mean())

    res = minimize_scalar(nll, bounds=(np.log(bounds[0]), np.log(bounds[1])), method="bounded")
    return float(np.exp(res.x))


def temperature_confidence(logits: np.ndarray, temperature: float) -> np.ndarray:
    """Top-label confidence ``max_c softmax(logits / T)_c`` (the argmax, and so the accuracy, does not change)."""
    return np.exp(log_softmax(logits / temperature).max(axis=1))


def sliding_temperature(
    logits: np.ndarray, labels: np.ndarray, start: float, window: int = 1000, every: int = 250
) -> np.ndarray:
    """Online temperature scaling: rows ``[k·every, (k+1)·every)`` use T refitted on the ``window`` rows before
    them (``start`` until a first refit is possible)."""
    out = np.empty(len(labels))
    t = start
    for lo in range(0, len(labels), every):
        if lo > 0:
            t = fit_temperature(logits[max(0, lo - window) : lo], labels[max(0, lo - window) : lo])
        out[lo : lo + every] = temperature_confidence(logits[lo : lo + every], t)
    return out


def online_platt(conf: np.ndarray, correct: np.ndarray, gamma: float = 0.1, eps: float = 1.0, radius: float = 10.0):
    """Online Platt scaling by the Online Newton Step on features (logit p, 1); returns the online forecasts.

    Starts at the identity map (weights (1, 0)); after each row, with gradient g = (σ(w·x) − y)·x of the log loss,
    A ← A + g gᵀ and w ← w − A⁻¹g / γ, then w is clipped to the ball of the given ``radius``.
    """
    w = np.array([1.0, 0.0])
    a_inv = np.eye(2) / eps
    out = np.empty(len(conf))
    feats = np.stack([logit(conf), np.ones(len(conf))], axis=1)
    for i, (x, y) in enumerate(zip(feats, correct)):
        p = 1.0 / (1.0 + np.exp(-float(w @ x)))
        out[i] = p
        g = (p - y) * x
        ag = a_inv @ g  # Sherman–Morrison update of A⁻¹ for A + g gᵀ
        a_inv -= np.outer(ag, ag) / (1.0 + g @ ag)
        w = w - (a_inv @ g) / gamma
        norm = np.linalg.norm(w)
        if norm > radius:
            w *= radius / norm
    return out


def online_histogram_binning(conf: np.ndarray, correct: np.ndarray, n_bins: int = 15) -> np.ndarray:
    """Online histogram binning: the running frequency of ``correct`` in the row's bin (the raw score while empty)."""
    bins = np.minimum((conf * n_bins).astype(np.int64), n_bins - 1)
    hits, seen = np.zeros(n_bins), np.zeros(n_bins)
    out = np.empty(len(conf))
    for i, (b, p, y) in enumerate(zip(bins.tolist(), conf.tolist(), correct.tolist())):
        out[i] = hits[b] / seen[b] if seen[b] else p
        hits[b] += y
        seen[b] += 1
    return out
