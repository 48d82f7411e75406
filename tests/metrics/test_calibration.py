"""Exact online calibration errors against a direct per-value reference, and the fixed-state Metric."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torchmetrics.classification import BinaryCalibrationError

from lightning_papers.metrics.calibration import (
    OnlineCalibrationError,
    kl_calibration_error,
    l1_calibration_error,
    l2_calibration_error,
    pseudo_kl_calibration_error,
    reliability_figure,
)


def reference(p: list[float], y: list[float]) -> tuple[float, float, float]:
    """Direct transcription of the definitions (metrics/calibration.py docstring): loop over distinct values."""
    groups: dict[float, list[float]] = {}
    for pt, yt in zip(p, y):
        groups.setdefault(pt, []).append(yt)
    l1 = l2 = kl = 0.0
    for v, ys in groups.items():
        n, s = len(ys), sum(yy - v for yy in ys)
        rho = sum(ys) / n
        l1 += abs(s)
        l2 += s * s / n
        kl += n * sum(a * math.log(a / b) for a, b in ((rho, v), (1 - rho, 1 - v)) if a > 0)
    return l1, l2, kl


def test_hand_made_stream_with_repeated_values() -> None:
    p = [0.5, 0.5, 0.2, 0.2, 0.2]
    y = [1, 0, 1, 1, 0]
    # S_0.5 = 0, S_0.2 = 2 - 0.6 = 1.4
    assert l1_calibration_error(p, y) == pytest.approx(1.4)
    assert l2_calibration_error(p, y) == pytest.approx(1.4**2 / 3)
    rho = 2 / 3
    kl = 3 * (rho * math.log(rho / 0.2) + (1 - rho) * math.log((1 - rho) / 0.8))
    assert kl_calibration_error(p, y) == pytest.approx(kl)
    # one distinct value per round: Cal1 = Σ|y - p|
    assert l1_calibration_error([0.1, 0.2, 0.3], [1, 0, 1]) == pytest.approx(0.9 + 0.2 + 0.7)


@pytest.mark.parametrize("seed", range(4))
def test_matches_reference_on_random_grid_streams(seed: int) -> None:
    rng = np.random.default_rng(seed)
    grid = np.array([0.05, 0.25, 0.5, 0.75, 0.95])
    p = rng.choice(grid, size=300)
    y = (rng.random(300) < np.clip(p + 0.1, 0, 1)).astype(float)
    ref = reference(p.tolist(), y.tolist())
    got = (l1_calibration_error(p, y), l2_calibration_error(p, y), kl_calibration_error(p, y))
    assert got == pytest.approx(ref, rel=1e-10)
    assert got[2] >= 2 * got[1] - 1e-12  # Pinsker: KLCal >= 2 Cal2


@pytest.mark.parametrize("fn", [l1_calibration_error, l2_calibration_error, kl_calibration_error])
def test_subadditive_over_time_blocks(fn) -> None:
    rng = np.random.default_rng(3)
    for _ in range(20):
        p = rng.choice([0.1, 0.3, 0.5, 0.7, 0.9], size=200)
        y = (rng.random(200) < rng.random()).astype(float)
        cut = int(rng.integers(1, 199))
        assert fn(p, y) <= fn(p[:cut], y[:cut]) + fn(p[cut:], y[cut:]) + 1e-9


@pytest.mark.parametrize("norm", ["l1", "l2", "kl"])
def test_metric_matches_functional_on_lattice_and_merges(norm: str) -> None:
    rng = np.random.default_rng(0)
    p = rng.integers(1, 4096, size=1000) / 4096.0
    y = (rng.random(1000) < p).astype(float)
    fn = {"l1": l1_calibration_error, "l2": l2_calibration_error, "kl": kl_calibration_error}[norm]
    metric = OnlineCalibrationError(norm)
    for chunk in np.array_split(np.arange(1000), 7):
        metric.update(torch.from_numpy(p[chunk]), torch.from_numpy(y[chunk]))
    assert float(metric.compute()) == pytest.approx(fn(p, y), rel=1e-9)
    # two "ranks" with half the stream each, merged with the sum reduction: same value
    a, b = OnlineCalibrationError(norm, per_round=True), OnlineCalibrationError(norm, per_round=True)
    a.update(torch.from_numpy(p[:400]), torch.from_numpy(y[:400]))
    b.update(torch.from_numpy(p[400:]), torch.from_numpy(y[400:]))
    a.merge_state(b)
    assert float(a.compute()) == pytest.approx(fn(p, y) / 1000, rel=1e-9)
    assert a.count.shape == (4097,)  # fixed-size state


def test_binned_ece_is_a_lower_bound() -> None:
    rng = np.random.default_rng(1)
    p = rng.choice(np.arange(1, 64) / 64, size=2000)
    y = (rng.random(2000) < p**2).astype(float)
    ece = float(BinaryCalibrationError(n_bins=15)(torch.from_numpy(p).float(), torch.from_numpy(y).long()))
    assert ece * y.size <= l1_calibration_error(p, y) + 1e-3


def test_pseudo_kl() -> None:
    grid = np.array([0.2, 0.6])
    y = np.array([1.0, 0.0, 1.0])
    point = np.array([[1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])  # point masses = deterministic forecasts
    assert pseudo_kl_calibration_error(point, grid, y) == pytest.approx(kl_calibration_error([0.2, 0.6, 0.6], y))
    half = np.full((3, 2), 0.5)  # n_p = 1.5 each, rho = 2/3 at both points
    rho = 2 / 3
    expect = sum(1.5 * (rho * math.log(rho / g) + (1 - rho) * math.log((1 - rho) / (1 - g))) for g in grid)
    assert pseudo_kl_calibration_error(half, grid, y) == pytest.approx(expect)
    with pytest.raises(ValueError, match="probability distribution"):
        pseudo_kl_calibration_error(np.full((3, 2), 0.7), grid, y)


@pytest.mark.parametrize(
    ("p", "y", "match"),
    [([0.5, 1.2], [0, 1], "1.2"), ([0.5, float("nan")], [0, 1], "nan"), ([0.5, 0.5], [0, 2], "binary labels")],
)
def test_bad_input_raises(p: list[float], y: list[float], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        l1_calibration_error(p, y)
    with pytest.raises(ValueError, match=match):
        OnlineCalibrationError("l1").update(torch.tensor(p), torch.tensor(y))


def test_bad_arguments_raise() -> None:
    with pytest.raises(ValueError, match="norm"):
        OnlineCalibrationError("l3")
    with pytest.raises(ValueError, match="same length"):
        l1_calibration_error([0.1], [1, 0])


def test_reliability_figure_labels_every_line_and_counts_every_round() -> None:
    """Top panel: one labelled line per forecast plus the diagonal; bottom panel: per-bin counts that add up to the
    number of rounds for each forecast (the histogram under the curve), in 1/n_bins bins."""
    import matplotlib.pyplot as plt
    from matplotlib.patches import StepPatch

    rng = np.random.default_rng(0)
    raw = rng.random(500)
    y = (rng.random(500) < raw**2).astype(float)
    fig = reliability_figure(raw**2, y, n_bins=10, label="calibrated", extra={"raw": raw})
    top, bottom = fig.axes
    assert [t.get_text() for t in top.get_legend().get_texts()] == ["perfectly calibrated", "calibrated", "raw"]
    assert [line.get_label() for line in top.get_lines()] == ["perfectly calibrated", "calibrated", "raw"]
    hists = [p for p in bottom.patches if isinstance(p, StepPatch)]
    assert [h.get_label() for h in hists] == ["calibrated", "raw"]
    for h, q in zip(hists, (raw**2, raw)):
        counts, edges = h.get_data()[:2]
        np.testing.assert_allclose(edges, np.linspace(0, 1, 11))
        np.testing.assert_array_equal(counts, np.histogram(q, bins=edges)[0])
        assert counts.sum() == 500
    assert bottom.get_ylabel() == "rounds per bin"
    plt.close(fig)
    with pytest.raises(ValueError, match="one value per outcome"):
        reliability_figure(raw[:10], y)
