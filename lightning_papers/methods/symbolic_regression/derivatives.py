"""Derivative targets from sampled states, and the training arrays the network and the readout share.

* ``central``: 4th-order central differences (x_{i-2} - 8 x_{i-1} + 8 x_{i+1} - x_{i+2}) / (12 h) in the interior,
  2nd-order one-sided differences (``numpy.gradient``, ``edge_order=2``) at the two samples of each end. Error
  O(h^4 x^(5)): for clean data.
* ``savgol``: ``scipy.signal.savgol_filter(x, window, order, deriv=1, delta=h)`` (a local polynomial fit), for noisy
  data; the ``window // 2`` samples at each end, where the filter extrapolates, are dropped.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np

from lightning_papers.datamodules.trajectories import Trajectory


def central_difference(x: np.ndarray, h: float) -> np.ndarray:
    """d/dt of each column of ``x`` (n, d) sampled every ``h``, 4th order inside, 2nd order at the ends."""
    if len(x) < 5:
        raise ValueError(f"central differences need at least 5 samples, got {len(x)}")
    d = np.gradient(x, h, axis=0, edge_order=2)
    d[2:-2] = (x[:-4] - 8 * x[1:-3] + 8 * x[3:-1] - x[4:]) / (12 * h)
    return d


def savgol_derivative(x: np.ndarray, h: float, window: int, order: int) -> np.ndarray:
    """Savitzky-Golay estimate of d/dt of each column of ``x`` (the full length, ends extrapolated)."""
    from scipy.signal import savgol_filter

    return savgol_filter(x, window, order, deriv=1, delta=h, axis=0)


def estimate_derivatives(
    traj: Trajectory, method: Literal["central", "savgol"], window: int = 21, order: int = 3
) -> tuple[np.ndarray, np.ndarray]:
    """``(x, dxdt)`` of one trajectory, trimmed to the samples where the estimate is valid.

    Raises:
        ValueError: the series is shorter than the derivative window (naming the trajectory and its length).
    """
    n = len(traj.t)
    need = window if method == "savgol" else 5
    if n < need:
        raise ValueError(
            f"{traj.source} has {n} rows, fewer than the {method} derivative window of {need} samples; use a "
            "longer series or a smaller savgol_window"
        )
    if method == "central":
        return traj.x, central_difference(traj.x, traj.dt)
    if method == "savgol":
        half = window // 2
        d = savgol_derivative(traj.x, traj.dt, window, order)
        return traj.x[half : n - half], d[half : n - half]
    raise ValueError(f"unknown derivative method {method!r}; expected 'central' or 'savgol'")


def training_arrays(
    trajs: Sequence[Trajectory],
    method: Literal["central", "savgol"],
    window: int,
    order: int,
    max_points: int,
    rk4_window: int = 1,
) -> dict[str, np.ndarray]:
    """States, derivative targets and RK4 pairs from all trajectories, subsampled evenly to ``max_points``.

    Returns a dict with ``x`` (n, d), ``dxdt`` (n, d), ``x0``/``x1`` (m, d) pairs ``rk4_window`` samples apart and
    ``h`` (m,) their time gaps.
    """
    xs, ds, x0, x1, hs = [], [], [], [], []
    for tr in trajs:
        x, d = estimate_derivatives(tr, method, window, order)
        xs.append(x)
        ds.append(d)
        k = rk4_window
        if len(tr.t) > k:
            x0.append(tr.x[:-k])
            x1.append(tr.x[k:])
            hs.append(np.full(len(tr.t) - k, k * tr.dt))
    out = {"x": np.concatenate(xs), "dxdt": np.concatenate(ds)}
    if x0:
        out.update(x0=np.concatenate(x0), x1=np.concatenate(x1), h=np.concatenate(hs))
    for key, size in (("x", "dxdt"), ("x0", "x1")):
        if key not in out:
            continue
        n = len(out[key])
        if n > max_points:
            idx = np.linspace(0, n - 1, max_points).round().astype(int)
            keys = (key, size) if key == "x" else ("x0", "x1", "h")
            for k2 in keys:
                out[k2] = out[k2][idx]
    return out
