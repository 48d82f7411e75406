"""The premise advice identify prints: the regime chosen by the spectral gap, bad values refused."""

from __future__ import annotations

import math

import pytest

from lightning_papers.methods.grasp.premise import CLEAR_GAP, WEAK_GAP, expectation


def test_the_gap_picks_the_measured_regime() -> None:
    assert "clear gap" in expectation(3.0) and "clear gap" in expectation(CLEAR_GAP) and "inf" in expectation(math.inf)
    weak = expectation(1.54)
    assert "weak gap" in weak and "IterativeGradientProjection" in weak and "1.54" in weak
    assert "weak gap" in expectation(WEAK_GAP) and "weak gap" in expectation(1.0)
    assert "no prediction" in expectation((WEAK_GAP + CLEAR_GAP) / 2)


@pytest.mark.parametrize("bad", [0.5, float("nan"), -2.0, "3", True, None])
def test_bad_gaps_are_refused_by_value(bad: object) -> None:
    with pytest.raises(ValueError, match=f"got {bad!r}"):
        expectation(bad)  # type: ignore[arg-type]
