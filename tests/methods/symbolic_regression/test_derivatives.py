"""Derivative targets against the analytic derivative of a sine."""

from __future__ import annotations

import numpy as np
import pytest

from lightning_papers.datamodules.trajectories import Trajectory
from lightning_papers.methods.symbolic_regression.derivatives import (
    central_difference,
    estimate_derivatives,
    training_arrays,
)


def sine(n: int = 1000, h: float = 0.01) -> tuple[np.ndarray, np.ndarray]:
    t = np.arange(n) * h
    return t, np.stack([np.sin(2 * t), 3 * np.cos(t)], 1)


def test_central_differences_match_the_analytic_derivative() -> None:
    t, x = sine()
    d = central_difference(x, 0.01)
    exact = np.stack([2 * np.cos(2 * t), -3 * np.sin(t)], 1)
    assert np.abs(d[2:-2] - exact[2:-2]).max() < 1e-7  # 4th order: 32 h^4 / 30 ~ 1e-8
    assert np.abs(d - exact).max() < 1e-3  # 2nd-order ends


def test_savgol_matches_the_analytic_derivative_on_clean_and_noisy_data() -> None:
    t, x = sine()
    exact = np.stack([2 * np.cos(2 * t), -3 * np.sin(t)], 1)
    xs, d = estimate_derivatives(Trajectory(t, x), "savgol", 21, 3)
    assert len(xs) == len(t) - 20
    assert np.abs(d - exact[10:-10]).max() < 1e-4
    noisy = x + 0.01 * x.std(0) * np.random.default_rng(0).standard_normal(x.shape)
    _, dn = estimate_derivatives(Trajectory(t, noisy), "savgol", 41, 3)
    rel = np.sqrt(((dn - exact[20:-20]) ** 2).mean(0)) / exact.std(0)
    assert (rel < 0.05).all()  # 1 % noise: derivative rms error below 5 % of its sd


def test_a_series_shorter_than_the_window_fails_naming_it() -> None:
    t, x = sine(15)
    with pytest.raises(ValueError, match=r"short\.csv has 15 rows, fewer than the savgol derivative window of 21"):
        estimate_derivatives(Trajectory(t, x, "short.csv"), "savgol", 21, 3)


def test_training_arrays_subsample_evenly_and_pair_rk4_samples() -> None:
    t, x = sine(500)
    arr = training_arrays([Trajectory(t, x), Trajectory(t, x + 1)], "central", 21, 3, max_points=300, rk4_window=3)
    assert arr["x"].shape == (300, 2) and arr["dxdt"].shape == (300, 2) and len(arr["x0"]) == 300
    np.testing.assert_allclose(arr["h"], 0.03)
