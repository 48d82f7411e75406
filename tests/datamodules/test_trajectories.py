"""Trajectory datamodule: simulated systems obey their stated equations; user CSVs are validated row by row."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import sympy as sp

from lightning_papers.datamodules.trajectories import (
    SYSTEMS,
    TrajectoryDataModule,
    read_csv_trajectories,
    simulate,
)


@pytest.mark.parametrize("name", sorted(SYSTEMS))
def test_stated_equations_are_the_simulated_right_hand_side(name: str) -> None:
    s = SYSTEMS[name]
    syms = sp.symbols(s.states)
    f = sp.lambdify(syms, [sp.sympify(e, locals=dict(zip(s.states, syms))) for e in s.equations], "numpy")
    for x in np.random.default_rng(0).uniform(s.ic_low, s.ic_high, size=(20, len(s.states))):
        np.testing.assert_allclose(np.array(f(*x), float), s.rhs(0.0, x), rtol=1e-12, atol=1e-12)


def test_simulated_pendulum_conserves_energy_without_damping_and_matches_small_angle_solution() -> None:
    tr = simulate("pendulum", np.array([0.01, 0.0]), 10.0, 0.01)
    # small angle: theta'' + 0.2 theta' + theta = 0, theta(0) = 0.01, theta'(0) = 0
    t, w = tr.t, np.sqrt(1 - 0.01)
    exact = 0.01 * np.exp(-0.1 * t) * (np.cos(w * t) + 0.1 / w * np.sin(w * t))
    np.testing.assert_allclose(tr.x[:, 0], exact, atol=1e-6)  # O(theta^3) = 1e-6 difference


def test_generated_datamodule_noise_and_held_out_initial_conditions() -> None:
    dm = TrajectoryDataModule("lotka_volterra", noise=0.05, n_trajectories=3, n_val_trajectories=2, seed=1)
    dm.setup("fit")
    clean = TrajectoryDataModule("lotka_volterra", noise=0.0, n_trajectories=3, n_val_trajectories=2, seed=1)
    clean.setup("fit")
    assert len(dm.train_trajectories) == 3 and len(dm.val_trajectories) == 2
    resid = np.concatenate([a.x - b.x for a, b in zip(dm.train_trajectories, clean.train_trajectories)])
    sd = np.concatenate([b.x for b in clean.train_trajectories]).std(0)
    np.testing.assert_allclose(resid.std(0) / sd, 0.05, rtol=0.05)
    starts = {tuple(tr.x[0]) for tr in clean.train_trajectories}
    assert all(tuple(tr.x[0]) not in starts for tr in dm.val_trajectories)
    assert dm.true_equations == list(SYSTEMS["lotka_volterra"].equations) and not dm.clean and clean.clean


def write(path: Path, rows: list[str]) -> Path:
    path.write_text("\n".join(rows) + "\n")
    return path


def good_rows(n: int = 30) -> list[str]:
    return ["time,x,y"] + [f"{0.1 * i:.1f},{np.sin(0.1 * i):.6f},{np.cos(0.1 * i):.6f}" for i in range(n)]


def test_user_csv_loads_and_serves(tmp_path: Path) -> None:
    p = write(tmp_path / "osc.csv", good_rows())
    dm = TrajectoryDataModule(str(p), state_columns=["x", "y"])
    dm.setup("fit")
    (tr,) = dm.train_trajectories
    assert tr.x.shape == (30, 2) and tr.dt == pytest.approx(0.1) and dm.true_equations is None and not dm.clean
    assert dm.state_names == ["x", "y"] and dm.val_trajectories[0] is tr


def test_csv_with_a_trajectory_column_holds_out_the_last_group(tmp_path: Path) -> None:
    rows = ["run,time,x"] + [
        f"{r},{i},{(k + 1) * np.exp(-0.1 * i):.6f}" for k, r in enumerate("abc") for i in range(10)
    ]
    trajs = read_csv_trajectories(write(tmp_path / "runs.csv", rows), "time", ["x"], trajectory_column="run")
    assert [tr.source for tr in trajs] == [f"runs.csv[run={r}]" for r in "abc"]
    dm = TrajectoryDataModule(str(tmp_path / "runs.csv"), state_columns=["x"], trajectory_column="run")
    dm.setup()
    assert len(dm.train_trajectories) == 2 and dm.val_trajectories[0].source.endswith("[run=c]")


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda r: r.__setitem__(7, "0.6,nan,0.5"), r"column 'x' row 7 is 'nan'"),
        (lambda r: r.__setitem__(7, "0.6,,0.5"), r"column 'x' row 7: '' is not a number"),
        (lambda r: r.__setitem__(7, "0.6,abc,0.5"), r"column 'x' row 7: 'abc' is not a number"),
        (lambda r: r.__setitem__(7, "0.4,0.5,0.5"), r"column 'time' does not increase at row 7 \(0.4 after 0.5\)"),
        (lambda r: r.__setitem__(7, "0.65,0.5,0.5"), r"column 'time' has a non-uniform step at row 7"),
    ],
)
def test_bad_csv_fails_naming_column_and_row(tmp_path: Path, edit, message: str) -> None:  # noqa: ANN001
    rows = good_rows()
    edit(rows)
    with pytest.raises(ValueError, match=message):
        read_csv_trajectories(write(tmp_path / "bad.csv", rows), "time", ["x", "y"])


def test_constant_column_missing_column_and_short_series_fail(tmp_path: Path) -> None:
    rows = ["time,x,y"] + [f"{i},{i * 0.5},2.5" for i in range(20)]
    with pytest.raises(ValueError, match=r"column 'y' is constant \(2.5 in all 20 rows\)"):
        read_csv_trajectories(write(tmp_path / "c.csv", rows), "time", ["x", "y"])
    with pytest.raises(ValueError, match=r"no column\(s\) \['z'\]"):
        read_csv_trajectories(tmp_path / "c.csv", "time", ["x", "z"])
    with pytest.raises(ValueError, match="has 3 rows; at least 5"):
        read_csv_trajectories(write(tmp_path / "s.csv", good_rows(3)), "time", ["x", "y"])


def test_non_uniform_steps_are_resampled_on_request(tmp_path: Path) -> None:
    t = np.array([0.0, 0.1, 0.2, 0.35, 0.4, 0.5, 0.6, 0.7, 0.8])
    rows = ["time,x"] + [f"{ti},{2 * ti + 1}" for ti in t]
    (tr,) = read_csv_trajectories(write(tmp_path / "u.csv", rows), "time", ["x"], resample=True)
    np.testing.assert_allclose(tr.t, np.arange(9) * 0.1, atol=1e-12)
    np.testing.assert_allclose(tr.x[:, 0], 2 * tr.t + 1)  # linear data: interpolation is exact


def test_bad_arguments_fail_early() -> None:
    with pytest.raises(ValueError, match="unknown system 'lorentz'"):
        TrajectoryDataModule("lorentz")
    with pytest.raises(ValueError, match="needs state_columns"):
        TrajectoryDataModule("data.csv")
    with pytest.raises(ValueError, match="noise must be in"):
        TrajectoryDataModule("pendulum", noise=5.0)
