"""Write ``damped_oscillator.csv``: three runs of dx/dt = v, dv/dt = -x - 0.3 v, 1 % noise, one sample per 0.05.

Run from the repository root: ``python examples/symbolic_regression/make_example_csv.py``. The file is the
example for ``configs/symbolic_regression/csv.yaml`` (columns run, time, x, v; the last run is held out).
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
from scipy.integrate import solve_ivp


def main() -> None:
    rng = np.random.default_rng(0)
    t = np.arange(201) * 0.05
    out = Path(__file__).with_name("damped_oscillator.csv")
    with out.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["run", "time", "x", "v"])
        for run, x0 in enumerate(([2.0, 0.0], [-1.0, 1.5], [0.5, -2.0])):
            sol = solve_ivp(lambda _, s: [s[1], -s[0] - 0.3 * s[1]], (0, t[-1]), x0, t_eval=t, rtol=1e-10, atol=1e-10)
            x = sol.y.T + 0.01 * sol.y.T.std(0) * rng.standard_normal(sol.y.T.shape)
            for ti, (xi, vi) in zip(t, x):
                w.writerow([run, f"{ti:.2f}", f"{xi:.6f}", f"{vi:.6f}"])
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
