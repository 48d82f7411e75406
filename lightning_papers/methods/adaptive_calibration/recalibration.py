"""Ranking-preserving recalibration: a strictly increasing map of raw scores through per-group calibrated forecasts.

The callback (:class:`lightning_papers.callbacks.AdaptiveCalibration`) keeps one calibration-epochs forecaster per
raw-score group. Replacing every score in a group by that group's forecast (``mapping="group"``) makes the forecast
stream calibrated, which is what the paper bounds, but throws away the ranking inside a group: a classifier's AUROC
drops and only ``n_groups`` distinct probabilities remain. ``mapping="interpolate"`` instead maps a raw score r
through knots (logit R_g, logit F_g), one per group that has seen data: R_g is the mean raw score seen in group g and
F_g the group forecaster's current mean forecast. Between knots the map is linear in logit space, beyond the end
knots it is a logit shift (slope 1). The F_g are first made non-decreasing by pool-adjacent-violators (weighted by
the group counts) and then strictly increasing (steps of at least ``1e-6`` in logit), so the map is strictly
increasing: the ranking of the scores, and so the AUROC, is kept exactly. Near a knot the output is the group's
calibrated forecast; what the paper guarantees (the online calibration error of each group's forecast stream) holds
for the forecasts F_g, and the map adds resolution inside a group without a guarantee of its own.
"""

from __future__ import annotations

import numpy as np

_CLIP = 1e-12


def logit(p: np.ndarray) -> np.ndarray:
    """log(p / (1 − p)), with p clipped to [1e-12, 1 − 1e-12]."""
    q = np.clip(np.asarray(p, dtype=np.float64), _CLIP, 1.0 - _CLIP)
    return np.log(q) - np.log1p(-q)


def pool_adjacent_violators(values: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """The non-decreasing sequence closest to ``values`` in weighted least squares (weights > 0)."""
    blocks: list[list[float]] = []  # [mean, weight, length]
    for v, w in zip(np.asarray(values, dtype=np.float64).tolist(), np.asarray(weights, dtype=np.float64).tolist()):
        blocks.append([v, w, 1])
        while len(blocks) > 1 and blocks[-2][0] > blocks[-1][0]:
            v2, w2, n2 = blocks.pop()
            v1, w1, n1 = blocks.pop()
            blocks.append([(v1 * w1 + v2 * w2) / (w1 + w2), w1 + w2, n1 + n2])
    return np.repeat([b[0] for b in blocks], [b[2] for b in blocks])


def monotone_logit_map(
    raw: np.ndarray, centers: np.ndarray, targets: np.ndarray, weights: np.ndarray, min_step: float = 1e-6
) -> np.ndarray:
    """Map raw probabilities through the knots (logit ``centers``, logit ``targets``); strictly increasing.

    Args:
        raw: Raw probabilities to map.
        centers: Strictly increasing knot positions (mean raw score per group), probabilities.
        targets: Knot values (the group forecasts), probabilities; made monotone here.
        weights: Positive knot weights for the monotone fit (rounds seen per group).
        min_step: Smallest logit step between consecutive knot values.

    Returns:
        The mapped probabilities; ``raw`` itself when there are no knots.
    """
    raw = np.asarray(raw, dtype=np.float64)
    centers = np.asarray(centers, dtype=np.float64)
    if centers.size == 0:
        return raw.copy()
    if centers.size > 1 and not np.all(np.diff(centers) > 0):
        raise ValueError(f"knot centers must be strictly increasing, got {centers}")
    x = logit(centers)
    y = logit(pool_adjacent_violators(targets, weights))
    for i in range(1, y.size):
        y[i] = max(y[i], y[i - 1] + min_step)
    z = logit(raw)
    out = np.interp(z, x, y)
    out = np.where(z < x[0], y[0] + (z - x[0]), out)
    out = np.where(z > x[-1], y[-1] + (z - x[-1]), out)
    return 1.0 / (1.0 + np.exp(-out))
