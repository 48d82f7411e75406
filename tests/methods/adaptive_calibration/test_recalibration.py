"""The ranking-preserving map: pool-adjacent-violators against a hand case, strict monotonicity, knots hit."""

from __future__ import annotations

import numpy as np
import pytest

from lightning_papers.methods.adaptive_calibration.recalibration import (
    logit,
    monotone_logit_map,
    pool_adjacent_violators,
)


def test_pool_adjacent_violators_matches_hand_computation() -> None:
    # 0.3 > 0.2 violates: pooled with weights 1 and 3 -> (0.3 + 0.6) / 4 = 0.225; then 0.225 <= 0.5 <= 0.9
    np.testing.assert_allclose(pool_adjacent_violators([0.1, 0.3, 0.2, 0.5, 0.9], [1, 1, 3, 1, 1]),
                               [0.1, 0.225, 0.225, 0.5, 0.9])  # fmt: skip
    np.testing.assert_allclose(pool_adjacent_violators([0.4, 0.3, 0.2], [1, 1, 1]), [0.3, 0.3, 0.3])
    sorted_in = np.array([0.1, 0.2, 0.7])
    np.testing.assert_array_equal(pool_adjacent_violators(sorted_in, np.ones(3)), sorted_in)


def test_map_is_strictly_increasing_and_passes_through_monotone_knots() -> None:
    centers = np.array([0.05, 0.3, 0.6, 0.95])
    targets = np.array([0.1, 0.25, 0.5, 0.7])  # already increasing: the knots are hit exactly
    out = monotone_logit_map(centers, centers, targets, np.ones(4))
    np.testing.assert_allclose(out, targets, rtol=1e-12)
    raw = np.sort(np.random.default_rng(0).random(2000))
    mapped = monotone_logit_map(raw, centers, np.array([0.1, 0.4, 0.35, 0.7]), np.array([5.0, 1, 1, 5]))
    assert np.all(np.diff(mapped) > 0)  # a violating knot (0.4 > 0.35) is pooled, not kept
    # beyond the end knots the map is a logit shift of slope 1
    lo = raw[raw < 0.05]
    np.testing.assert_allclose(logit(monotone_logit_map(lo, centers, targets, np.ones(4))) - logit(lo),
                               logit(0.1) - logit(0.05), rtol=1e-9)  # fmt: skip
    np.testing.assert_array_equal(monotone_logit_map(raw, np.zeros(0), np.zeros(0), np.zeros(0)), raw)
    with pytest.raises(ValueError, match="strictly increasing"):
        monotone_logit_map(raw, np.array([0.5, 0.5]), np.array([0.2, 0.3]), np.ones(2))
