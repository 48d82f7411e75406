"""Forecasters: the per-round interface equals ``run``, exact resume, calibration bounds, grid and chain facts."""

from __future__ import annotations

import math

import numpy as np
import pytest

from lightning_papers.methods.adaptive_calibration.adaptive import CalibrationEpochsForecaster
from lightning_papers.methods.adaptive_calibration.baselines import (
    OracleForecaster,
    RoundedRunningMean,
    RunningMean,
    UniformGridCalibrator,
)
from lightning_papers.methods.adaptive_calibration.config import CalibrationEpochsConfig
from lightning_papers.methods.adaptive_calibration.forecasters import FORECASTERS, build_forecaster
from lightning_papers.methods.adaptive_calibration.swap_regret import (
    QUANTUM,
    build_grid,
    dyadic_spacing,
    stationary_distribution,
)
from lightning_papers.metrics.calibration import (
    kl_calibration_error,
    kl_from_sums,
    l1_calibration_error,
    l2_calibration_error,
    l2_from_sums,
)


def stream(mu: np.ndarray, seed: int) -> np.ndarray:
    return (np.random.default_rng(seed).random(mu.size) < mu).astype(float)


def epochs(seed: int = 0, **settings: object) -> CalibrationEpochsForecaster:
    """The calibration-epochs forecaster with ``settings`` overriding the config's defaults."""
    return CalibrationEpochsForecaster(CalibrationEpochsConfig(**settings), seed=seed)


FACTORIES = {
    "refine": lambda: epochs(seed=3),
    "restart": lambda: epochs(variant="restart", measure="l2", seed=3),
    "eager": lambda: epochs(lazy=0.0, seed=3),
    "uniform": lambda: UniformGridCalibrator(3000, seed=3),
    "rounded": lambda: RoundedRunningMean(),
}


@pytest.mark.parametrize("name", list(FACTORIES))
def test_run_equals_round_by_round_and_resume_is_exact(name: str) -> None:
    mu = np.r_[np.full(1500, 0.3), np.full(1500, 0.75)]
    y = stream(mu, 0)
    full = FACTORIES[name]().run(y)
    f = FACTORIES[name]()
    loop = []
    for yt in y[:1700]:
        loop.append(f.predict())
        f.update(yt)
    state = f.state_dict()
    g = FACTORIES[name]()
    g.load_state_dict(state)
    rest = g.run(y[1700:])
    np.testing.assert_array_equal(np.r_[loop, rest], full)
    assert all(isinstance(k, str) for k in state)


def test_iid_stream_keeps_l1_per_round_small() -> None:
    """Cal1/T on 2·10^4 i.i.d. rounds stays below 0.03 (measured ≈ 0.01; the raw running mean is ≈ 0.4)."""
    T = 20000
    for seed, mean in enumerate((0.3, 0.5, 0.73)):
        y = stream(np.full(T, mean), seed)
        for variant in ("refine", "restart"):
            p = epochs(variant=variant, seed=seed).run(y)
            assert l1_calibration_error(p, y) / T < 0.03, (variant, mean)
        assert l1_calibration_error(RunningMean().run(y), y) / T > 0.3


def test_two_segments_beats_rounded_running_mean() -> None:
    T = 20000
    for seed in range(2):
        mu = np.r_[np.full(T // 2, 0.25), np.full(T // 2, 0.7)]
        y = stream(mu, seed)
        ada = epochs(seed=seed)
        p = ada.run(y)
        rounded = l1_calibration_error(RoundedRunningMean().run(y), y)
        assert ada.changes >= 1
        assert 3 * l1_calibration_error(p, y) < rounded
        assert l2_calibration_error(p, y) < l2_calibration_error(RoundedRunningMean().run(y), y)


def detection_times(f: CalibrationEpochsForecaster, y: np.ndarray) -> list[int]:
    """Rounds (1-based) after which ``f`` declared a change."""
    times, seen = [], f.changes
    for t, yt in enumerate(y.tolist(), start=1):
        f.predict()
        f.update(yt)
        if f.changes > seen:
            times.append(t)
            seen = f.changes
    return times


def test_windowed_change_test_catches_a_change_deep_in_an_epoch() -> None:
    """A 0.3 -> 0.7 change 1936 rounds into a 4096-round epoch: the epoch-mean test needs ≈ 0.09·1936/0.31 ≈ 550
    rounds (the mean since the epoch start is diluted; measured 420–520), the recent-window test fires by the time a
    128-round window is post-change (Hoeffding threshold √(13/256) + √(13/4096) ≈ 0.28 < 0.4; measured 32–48)."""
    change = 6000
    mu = np.r_[np.full(change, 0.3), np.full(2000, 0.7)]
    for seed in range(3):
        y = stream(mu, 10 + seed)
        windowed = detection_times(epochs(seed=seed), y)
        epoch_only = detection_times(epochs(detect_window=0, seed=seed), y)
        assert windowed and epoch_only and windowed[0] > change and epoch_only[0] > change  # no false alarm before
        assert windowed[0] - change <= 200
        assert epoch_only[0] - change >= 2 * (windowed[0] - change)


def test_kl_and_pseudo_kl_are_finite_on_a_switching_stream() -> None:
    """The grids stop at QUANTUM and 1 − QUANTUM, so no forecast is ever certain and KL / pseudo-KL stay finite even
    on a stream that jumps to a mean near 1."""
    mu = np.r_[np.full(3000, 0.5), np.full(3000, 0.97), np.full(3000, 0.02)]
    y = stream(mu, 4)
    for f in (epochs(seed=1), epochs(variant="restart", measure="l2", seed=1),
              UniformGridCalibrator(y.size, seed=1)):  # fmt: skip
        p = f.run(y)
        assert QUANTUM <= p.min() and p.max() <= 1 - QUANTUM
        values, n, s = f.pseudo_stats()
        assert np.isfinite(kl_from_sums(values, n, s))
        assert np.isfinite(kl_calibration_error(p, y))


def test_forecasts_lie_on_the_quantum_lattice_and_pseudo_counts_add_up() -> None:
    y = stream(np.full(5000, 0.41), 1)
    f = epochs(seed=1)
    p = f.run(y)
    np.testing.assert_allclose(p / QUANTUM, np.round(p / QUANTUM), atol=1e-9)
    values, n, s = f.pseudo_stats()
    assert n.sum() == pytest.approx(5000)
    assert s.sum() == pytest.approx(y.sum())
    assert set(np.unique(p)) <= set(values.tolist())
    pkl = kl_from_sums(values, n, s)
    assert np.isfinite(pkl) and pkl >= 2 * l2_from_sums(values, n, s) - 1e-9  # Pinsker holds for pseudo counts too


def test_grid_is_fine_near_anchor_and_coarse_far_away() -> None:
    eps = dyadic_spacing(4096)
    assert eps == 2**-6
    grid = np.array(build_grid(0.37, 0.03, eps, 1.0))
    assert grid[0] == QUANTUM and grid[-1] == 1 - QUANTUM and np.all(np.diff(grid) > 0)  # never certain: KL finite
    near = np.diff(grid[(grid >= 0.34) & (grid <= 0.4)])
    np.testing.assert_allclose(near, eps)
    assert np.diff(grid).max() > 8 * eps  # coarse far from the anchor
    assert len(grid) < 30
    uniform_size = 1 / eps + 1
    assert len(grid) < uniform_size / 2


def test_stationary_distribution_is_fixed_point_and_mean_preserving() -> None:
    grid = np.array([0.0, 0.25, 0.5, 0.75, 1.0])
    x = np.full(5, 0.6)  # every learner suggests 0.6: mass on 0.5 / 0.75 with mean 0.6
    pi = stationary_distribution(x, grid, None)
    np.testing.assert_allclose(pi, [0, 0, 0.6, 0.4, 0], atol=1e-6)
    assert pi @ grid == pytest.approx(0.6, abs=1e-6)
    rng = np.random.default_rng(0)
    x = rng.random(5)
    pi = stationary_distribution(x, grid, None)
    j = np.clip(np.searchsorted(grid, x, side="right") - 1, 0, 3)
    w = (x - grid[j]) / (grid[j + 1] - grid[j])
    q = np.zeros((5, 5))
    q[np.arange(5), j] += 1 - w
    q[np.arange(5), j + 1] += w
    np.testing.assert_allclose(pi @ q, pi, atol=1e-6)


def test_oracle_and_running_means() -> None:
    mu = np.linspace(0.2, 0.8, 10)
    y = stream(mu, 0)
    np.testing.assert_array_equal(OracleForecaster().run(y, mu), mu)
    p = RunningMean().run(y)
    assert p[0] == 0.5 and p[-1] == pytest.approx(y[:-1].mean())
    r = RoundedRunningMean(step=0.1).run(y)
    np.testing.assert_allclose(r, np.round(p / 0.1) * 0.1)


@pytest.mark.parametrize("bad", [2, -1, 0.5, math.nan])
def test_bad_outcome_raises(bad: float) -> None:
    f = epochs()
    f.predict()
    with pytest.raises(ValueError, match="binary label"):
        f.update(bad)
    with pytest.raises(ValueError, match="binary labels"):
        UniformGridCalibrator(100).run([0, 1, bad])


def test_bad_settings_raise() -> None:
    with pytest.raises(ValueError, match="variant"):
        CalibrationEpochsConfig(variant="fresh")
    with pytest.raises(ValueError, match="first_epoch"):
        CalibrationEpochsConfig(first_epoch=1)
    with pytest.raises(ValueError, match="detect_window must be 0 or >= 16, got 8"):
        CalibrationEpochsConfig(detect_window=8)
    with pytest.raises(ValueError, match="lazy must be in"):
        CalibrationEpochsConfig(lazy=1.0)
    with pytest.raises(TypeError, match="CalibrationEpochsConfig"):
        CalibrationEpochsForecaster({"measure": "l2"})  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="reference"):
        OracleForecaster().run([0, 1])
    with pytest.raises(ValueError, match="settings"):
        epochs(measure="l2").load_state_dict(epochs().state_dict())
    with pytest.raises(ValueError, match="unknown forecaster"):
        build_forecaster("magic")
    with pytest.raises(ValueError, match="horizon"):
        build_forecaster("uniform")


@pytest.mark.parametrize("name", FORECASTERS)
def test_build_forecaster_by_name_plays_a_stream(name: str) -> None:
    """Every registered name builds a forecaster whose forecasts are probabilities; ``adaptive_restart`` is the
    configured forecaster with ``variant="restart"``, identical to building that config directly."""
    mu = np.r_[np.full(600, 0.3), np.full(600, 0.8)]
    y = stream(mu, 2)
    config = CalibrationEpochsConfig(measure="l2", first_epoch=16)
    f = build_forecaster(name, config, horizon=y.size, seed=5)
    p = f.run(y, mu)
    assert p.shape == y.shape and np.all((p >= 0) & (p <= 1))
    if name == "adaptive_restart":
        same = CalibrationEpochsForecaster(CalibrationEpochsConfig(variant="restart", measure="l2", first_epoch=16), 5)
        np.testing.assert_array_equal(p, same.run(y))
    if name == "uniform":
        assert f.horizon == y.size
