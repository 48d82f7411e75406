"""Adaptive calibration benchmark: the paper's three environments (i.i.d., K segments, deviation budget C) in one run.

E1  Cal1 vs T on i.i.d. streams -> log-log slope per method (targets: adaptive <= 0.6, uniform ~0.67, raw mean 1)
E2  Cal1 vs K segments at fixed T  (target: adaptive beats the rounded running mean >= 3x at K >= 2)
E3  Cal2 and pseudo-KL vs deviation budget C (rare shifts and slow drift)
Throughput: rounds per second of each forecaster on one core (target >= 1e5 for the adaptive one).

    .venv/bin/python benchmarks/adaptive_calibration.py            # full (about 3 minutes on 1 core)
    .venv/bin/python benchmarks/adaptive_calibration.py --quick    # smaller grid, about 20 s
    .venv/bin/python benchmarks/adaptive_calibration.py --seed-offset 100 --no-write   # same grid, held-out seeds

E2 also plays the ablation "adaptive, epoch test only" (``detect_window=0``: the epoch-mean change test without the
recent-window test) to show what the window test buys. Every forecaster is built by ``build_forecaster``, the same
function the LightningModule (``lightning-papers fit --config configs/adaptive_calibration/*.yaml``) uses, and plays
the stream through ``Forecaster.run``, the call its ``training_step`` makes on each batch.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

from lightning_papers.datamodules.streams import budget_means, deviation_budget, iid_means, piecewise_means
from lightning_papers.methods.adaptive_calibration.config import CalibrationEpochsConfig
from lightning_papers.methods.adaptive_calibration.forecasters import build_forecaster
from lightning_papers.metrics.calibration import grouped_sums, kl_from_sums, l1_from_sums, l2_from_sums

ROOT = Path(__file__).resolve().parents[1]
METHODS = ["adaptive", "adaptive_restart", "uniform", "running_mean", "rounded_mean", "oracle"]
LABEL = {"adaptive": "adaptive (refine)", "adaptive_restart": "adaptive (restart)", "uniform": "uniform grid T^1/3",
         "running_mean": "running mean", "rounded_mean": "rounded running mean", "oracle": "oracle μ_t",
         "adaptive_epoch_test": "adaptive (refine), epoch test only"}  # fmt: skip
SEED_OFFSET = 0  # added to every stream / forecaster seed (``--seed-offset``: check results on held-out seeds)


def play(method: str, y: np.ndarray, mu: np.ndarray, seed: int, measure: str = "l1") -> dict[str, float]:
    if method == "adaptive_epoch_test":  # ablation: the epoch-mean change test alone
        f = build_forecaster("adaptive", CalibrationEpochsConfig(measure=measure, detect_window=0), y.size, seed)
    else:
        f = build_forecaster(method, CalibrationEpochsConfig(measure=measure), horizon=y.size, seed=seed)
    t0 = time.perf_counter()
    p = f.run(y, mu)
    dt = time.perf_counter() - t0
    sums = grouped_sums(p, y)
    pseudo = f.pseudo_stats() if hasattr(f, "pseudo_stats") else sums  # point masses: pseudo = actual
    return {
        "l1": l1_from_sums(*sums),
        "l2": l2_from_sums(*sums),
        "kl": kl_from_sums(*sums),
        "pkl": kl_from_sums(*pseudo),
        "brier": float(np.mean((p - y) ** 2)),
        "distinct": int(sums[0].size),
        "changes": int(getattr(f, "changes", 0)),
        "rounds_per_s": y.size / max(dt, 1e-9),
    }


def slope(xs: list[float], ys: list[float]) -> float:
    return float(np.polyfit(np.log(xs), np.log(ys), 1)[0])


def e1(horizons: list[int], seeds: int) -> dict:
    rows = {m: {T: [] for T in horizons} for m in METHODS}
    for T in horizons:
        for s in range(SEED_OFFSET, SEED_OFFSET + seeds):
            rng = np.random.default_rng(1000 + s)  # s already includes SEED_OFFSET
            mu = iid_means(T, rng)
            y = (rng.random(T) < mu).astype(float)
            for m in METHODS:
                rows[m][T].append(play(m, y, mu, seed=s))
    summary = {}
    for m in METHODS:
        l1 = [float(np.mean([r["l1"] for r in rows[m][T]])) for T in horizons]
        l2 = [float(np.mean([r["l2"] for r in rows[m][T]])) for T in horizons]
        summary[m] = {"l1": l1, "l2": l2, "l1_slope": slope(horizons, l1), "l2_slope": slope(horizons, l2)}
    return {"horizons": horizons, "seeds": seeds, "summary": summary, "runs": rows}


def e2(T: int, ks: list[int], seeds: int) -> dict:
    methods = ["adaptive", "adaptive_epoch_test", "adaptive_restart", "uniform", "rounded_mean", "running_mean"]
    rows = {m: {k: [] for k in ks} for m in methods}
    for k in ks:
        for s in range(SEED_OFFSET, SEED_OFFSET + seeds):
            rng = np.random.default_rng(2000 + s)
            mu = piecewise_means(T, k, rng)
            y = (rng.random(T) < mu).astype(float)
            for m in methods:
                rows[m][k].append(play(m, y, mu, seed=s))
    summary = {m: [float(np.mean([r["l1"] for r in rows[m][k]])) for k in ks] for m in methods}
    ratio = [r / a for r, a in zip(summary["rounded_mean"], summary["adaptive"])]
    per_seed = [
        [r["l1"] / a["l1"] for r, a in zip(rows["rounded_mean"][k], rows["adaptive"][k])] for k in ks
    ]  # the ratio per stream: depends on the drawn gaps |μ_k+1 − μ_k| (small gaps favour the rounded mean)
    changes = [float(np.mean([r["changes"] for r in rows["adaptive"][k]])) for k in ks]
    ablation = [r / a for r, a in zip(summary["rounded_mean"], summary["adaptive_epoch_test"])]
    return {"T": T, "K": ks, "seeds": seeds, "l1": summary, "rounded_over_adaptive": ratio,
            "rounded_over_adaptive_median": [float(np.median(v)) for v in per_seed],
            "rounded_over_adaptive_min": [float(np.min(v)) for v in per_seed],
            "rounded_over_adaptive_epoch_test": ablation,
            "adaptive_changes_detected": changes, "runs": rows}  # fmt: skip


def e3(T: int, budgets: list[float], seeds: int) -> dict:
    methods = ["adaptive", "adaptive_restart", "uniform", "rounded_mean"]
    out = {}
    for mode in ("shifts", "drift"):
        rows = {m: {c: [] for c in budgets} for m in methods}
        realised = {c: [] for c in budgets}
        for c in budgets:
            for s in range(SEED_OFFSET, SEED_OFFSET + seeds):
                rng = np.random.default_rng(3000 + s)
                mu = budget_means(T, c, rng, mode)
                realised[c].append(deviation_budget(mu))
                y = (rng.random(T) < mu).astype(float)
                for m in methods:
                    rows[m][c].append(play(m, y, mu, seed=s, measure="l2"))
        summary = {
            m: {k: [float(np.mean([r[k] for r in rows[m][c]])) for c in budgets] for k in ("l1", "l2", "pkl")}
            for m in methods
        }
        out[mode] = {"summary": summary, "realised_C": [float(np.mean(realised[c])) for c in budgets], "runs": rows}
    return {"T": T, "C": budgets, "seeds": seeds, **out}


def throughput(T: int) -> dict[str, float]:
    rng = np.random.default_rng(7)
    y = (rng.random(T) < 0.37).astype(float)
    res = {}
    for m in METHODS:
        best = max(play(m, y, np.full(T, 0.37), seed=0)["rounds_per_s"] for _ in range(2))
        res[m] = best
    return res


def plots(res: dict) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    fig, ax = plt.subplots(1, 2, figsize=(10, 4))
    hs = res["e1"]["horizons"]
    for m in METHODS:
        sm = res["e1"]["summary"][m]
        ax[0].loglog(hs, sm["l1"], "o-", label=f"{LABEL[m]} (slope {sm['l1_slope']:.2f})")
        ax[1].loglog(hs, sm["l2"], "o-", label=f"{LABEL[m]} (slope {sm['l2_slope']:.2f})")
    for a, name in zip(ax, ("ℓ1", "ℓ2")):
        a.set_xlabel("T")
        a.set_ylabel(f"{name} calibration error")
        a.legend(fontsize=7)
    ax[0].set_title("E1: i.i.d. streams")
    paths.append(_save(fig, "iid"))
    fig, ax = plt.subplots(figsize=(5.5, 4))
    for m, v in res["e2"]["l1"].items():
        ax.loglog(res["e2"]["K"], v, "o-", label=LABEL[m])
    ax.loglog(res["e2"]["K"], np.sqrt(np.array(res["e2"]["K"]) * res["e2"]["T"]), "k:", label="√(KT)")
    ax.set_xlabel("K segments")
    ax.set_ylabel("ℓ1 calibration error")
    ax.set_title(f"E2: piecewise, T = {res['e2']['T']}")
    ax.legend(fontsize=7)
    paths.append(_save(fig, "piecewise"))
    fig, ax = plt.subplots(2, 2, figsize=(10, 7))
    cs = np.array(res["e3"]["C"])
    for j, mode in enumerate(("shifts", "drift")):
        for m, sm in res["e3"][mode]["summary"].items():
            ax[0, j].loglog(1 + cs, sm["l2"], "o-", label=LABEL[m])
            ax[1, j].loglog(1 + cs, sm["pkl"], "o-", label=LABEL[m])
        ax[0, j].set_title(f"E3 ({mode}), T = {res['e3']['T']}")
        ax[0, j].set_ylabel("ℓ2 calibration error")
        ax[1, j].set_ylabel("pseudo-KL calibration error")
        ax[1, j].set_xlabel("1 + C")
        ax[0, j].legend(fontsize=7)
    paths.append(_save(fig, "budget"))
    return paths


def _save(fig, name: str) -> str:
    path = ROOT / "docs" / "figures" / f"adaptive_calibration_{name}.png"
    fig.savefig(path, dpi=110, bbox_inches="tight")
    return str(path.relative_to(ROOT))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smaller horizons and fewer seeds")
    parser.add_argument("--seed-offset", type=int, default=0, help="shift every seed (held-out check)")
    parser.add_argument("--no-write", action="store_true", help="print the tables only (no JSON, no figures)")
    args = parser.parse_args()
    global SEED_OFFSET
    SEED_OFFSET = args.seed_offset
    torch.set_num_threads(1)
    t0 = time.time()
    if args.quick:
        cfg = dict(h=[1000, 4000, 16000, 64000], s1=3, T2=16000, ks=[1, 2, 4, 16], s2=2, T3=32000, s3=2)
    else:
        cfg = dict(h=[1000, 4000, 16000, 64000, 256000], s1=8, T2=64000, ks=[1, 2, 4, 8, 16, 32, 64], s2=8,
                   T3=64000, s3=4)  # fmt: skip
    T3 = cfg["T3"]
    budgets = [0.0, round(T3**0.25), round(T3**0.5), round(T3**0.75), round(T3 / 10)]
    res = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "hardware": f"2-core CPU, shared ({platform.processor() or platform.machine()}), 1 thread",
        "command": "python benchmarks/adaptive_calibration.py"
        + (" --quick" if args.quick else "")
        + (f" --seed-offset {args.seed_offset}" if args.seed_offset else ""),
        "seed_offset": args.seed_offset,
        "e1": e1(cfg["h"], cfg["s1"]),
        "e2": e2(cfg["T2"], cfg["ks"], cfg["s2"]),
        "e3": e3(T3, budgets, cfg["s3"]),
        "throughput": throughput(256000 if not args.quick else 64000),
    }
    res["figures"] = [] if args.no_write else plots(res)
    res["seconds"] = time.time() - t0
    print_tables(res)
    if args.no_write:
        print(f"\n{res['seconds']:.0f} s (nothing written: --no-write)")
        return
    out = ROOT / "benchmarks" / "results" / "adaptive_calibration.json"
    out.write_text(json.dumps(res, indent=1, default=float))
    print(f"\nwrote {out.relative_to(ROOT)} and {', '.join(res['figures'])} in {res['seconds']:.0f} s")


def print_tables(res: dict) -> None:
    e1r, hs = res["e1"]["summary"], res["e1"]["horizons"]
    print(f"\nE1 i.i.d. (μ ~ U[0.2, 0.8], {res['e1']['seeds']} seeds): mean Cal1 per T, log-log slopes")
    print("| method | " + " | ".join(f"T={T}" for T in hs) + " | ℓ1 slope | ℓ2 slope | Cal2 at max T |")
    print("|---|" + "---|" * (len(hs) + 3))
    for m in METHODS:
        r = e1r[m]
        cells = " | ".join(f"{v:.0f}" for v in r["l1"])
        print(f"| {LABEL[m]} | {cells} | {r['l1_slope']:.2f} | {r['l2_slope']:.2f} | {r['l2'][-1]:.1f} |")
    e2r = res["e2"]
    print(f"\nE2 piecewise (T={e2r['T']}, {e2r['seeds']} seeds): mean Cal1 per K")
    print("| method | " + " | ".join(f"K={k}" for k in e2r["K"]) + " |")
    print("|---|" + "---|" * len(e2r["K"]))
    for m, v in e2r["l1"].items():
        print(f"| {LABEL[m]} | " + " | ".join(f"{x:.0f}" for x in v) + " |")
    for label, key, fmt in (
        ("rounded / adaptive (ratio of means)", "rounded_over_adaptive", "{:.1f}×"),
        ("rounded / adaptive (median over seeds)", "rounded_over_adaptive_median", "{:.1f}×"),
        ("rounded / adaptive (worst seed)", "rounded_over_adaptive_min", "{:.1f}×"),
        ("rounded / adaptive, epoch test only (ratio of means)", "rounded_over_adaptive_epoch_test", "{:.1f}×"),
        ("changes detected (adaptive)", "adaptive_changes_detected", "{:.1f}"),
    ):
        print(f"| {label} | " + " | ".join(fmt.format(x) for x in e2r[key]) + " |")
    e3r = res["e3"]
    for mode in ("shifts", "drift"):
        print(f"\nE3 {mode} (T={e3r['T']}, {e3r['seeds']} seeds, grid tuned for ℓ2): Cal2 / pseudo-KL per C")
        print("| method | " + " | ".join(f"C={c:g}" for c in e3r["C"]) + " |")
        print("|---|" + "---|" * len(e3r["C"]))
        for m, sm in e3r[mode]["summary"].items():
            cells = " | ".join(f"{a:.1f} / {b:.1f}" for a, b in zip(sm["l2"], sm["pkl"]))
            print(f"| {LABEL[m]} | {cells} |")
        print("| realised C | " + " | ".join(f"{c:.0f}" for c in e3r[mode]["realised_C"]) + " |")
    print("\nThroughput (rounds per second, one thread, best of 2)")
    print("| method | rounds/s |\n|---|---|")
    for m, v in res["throughput"].items():
        print(f"| {LABEL[m]} | {v:,.0f} |")


if __name__ == "__main__":
    main()
