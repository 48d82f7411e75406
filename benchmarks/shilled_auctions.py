"""Shill-robust bidding: log-log regret vs T for every learner on S0–S3, regret vs ρ, and throughput.

Runs the same code as ``lightning-papers fit --config configs/shilled_auctions/*.yaml``: ``build_learner`` and the
``play`` loop against ``ShilledAuctionEnv``, whose draws are the ones ``AuctionDataModule`` serves (the same
counter-based stream). Every learner is told the horizon T (one run per T). m ~ Beta(2, 4), v = 1 (b* ≈ 0.464).

    flock /tmp/bench.lock .venv/bin/python benchmarks/shilled_auctions.py            # CPU tier, a few minutes
    .venv/bin/python benchmarks/shilled_auctions.py --tier gpu --device cuda         # R = 1024 at every T
    flock /tmp/bench.lock .venv/bin/python benchmarks/shilled_auctions.py --part on_win   # unknown value, ~1 min

Writes ``benchmarks/results/shilled_auctions.json`` (``_gpu`` for the GPU tier) and
``docs/figures/shilled_auctions_*.png``; ``--part on_win`` writes ``benchmarks/results/shilled_auctions_on_win.json``
(S1, v_t ~ U[0.5, 1] shown only after a win, against the same learners told the value E[v] = 0.75).
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import time
from pathlib import Path

import numpy as np
import torch

from lightning_papers.datamodules.auction_distributions import BidDistribution, PointMass, Uniform, beta, low_shill
from lightning_papers.methods.shilled_auctions.base import play
from lightning_papers.methods.shilled_auctions.config import BiddingConfig
from lightning_papers.methods.shilled_auctions.environment import ShilledAuctionEnv
from lightning_papers.methods.shilled_auctions.learners import build_learner

ROOT = Path(__file__).resolve().parents[1]
LEARNERS = ["robust", "optimistic", "racing", "naive", "exp3"]
HORIZONS = [2_000, 8_000, 32_000, 128_000, 512_000, 1_280_000]
SLOPE_FROM = 32_000  # slopes are fitted on T >= this (the asymptotic part)


def scenarios() -> dict[str, tuple[BidDistribution, BidDistribution]]:
    """name -> (true shill law, the law the learner is told)."""
    return {
        "S0": (PointMass(0.0), PointMass(0.0)),
        "S1": (Uniform(0, 1), Uniform(0, 1)),
        "S2 rho=0.1": (low_shill(0.1), low_shill(0.1)),
        "S2 rho=0.3": (low_shill(0.3), low_shill(0.3)),
        "S3": (low_shill(0.1), Uniform(0, 1)),
    }


def replicas_for(T: int, tier: str) -> int:
    if tier == "gpu":
        return 1024
    return 256 if T <= 8_000 else 128 if T <= 32_000 else 32 if T <= 128_000 else 8 if T <= 512_000 else 4


CONFIG = BiddingConfig()


def run(name: str, true: BidDistribution, told: BidDistribution, T: int, R: int, device: str, seed: int = 0):
    """Mean and standard error of the pseudo-regret of ``name`` after T rounds over R replicas, and seconds."""
    competing = beta(2.0, 4.0)
    env = ShilledAuctionEnv(competing, true, 1.0, R, seed, device=device, transparent=name == "transparent")
    learner = build_learner(name, R, 1.0, T, told, CONFIG, best_bid=env.best_bid, seed=seed, device=device)
    start, cpu_start = time.perf_counter(), time.process_time()
    play(learner, env, T)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    regret = env.regret.cpu()
    se = float(regret.std() / math.sqrt(R)) if R > 1 else 0.0
    return float(regret.mean()), se, seconds, cpu_seconds


def slope(ts: list[int], values: list[float]) -> float:
    keep = [(t, v) for t, v in zip(ts, values) if t >= SLOPE_FROM and v > 0]
    if len(keep) < 2:
        return float("nan")
    x, y = np.log([k[0] for k in keep]), np.log([k[1] for k in keep])
    return float(np.polyfit(x, y, 1)[0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tier", choices=["cpu", "gpu"], default="cpu")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--max-T", type=int, default=HORIZONS[-1])
    parser.add_argument("--exp3-max-T", type=int, default=32_000, help="EXP3-IX updates every round (slow)")
    parser.add_argument("--report", action="store_true", help="print the markdown tables of the saved JSON and exit")
    parser.add_argument("--race-warmup", type=float, default=BiddingConfig.race_warmup, help="BiddingConfig field")
    parser.add_argument("--part", choices=["main", "on_win"], default="main", help="on_win: the unknown-value part")
    args = parser.parse_args()
    if args.part == "on_win":
        on_win_part(args.device, args.report)
        return
    global CONFIG
    CONFIG = BiddingConfig(race_warmup=args.race_warmup)
    suffix = "" if args.tier == "cpu" else "_gpu"
    out = ROOT / "benchmarks/results" / f"shilled_auctions{suffix}.json"
    if args.report:
        report(json.loads(out.read_text()))
        return
    torch.set_num_threads(1)
    horizons = [T for T in HORIZONS if T <= args.max_T]
    results: dict = {"horizons": horizons, "slope_from": SLOPE_FROM, "regret": {}, "slopes": {}}
    total = time.perf_counter()
    for scen, (true, told) in scenarios().items():
        names = LEARNERS + (["transparent"] if scen == "S0" else [])
        results["regret"][scen], results["slopes"][scen] = {}, {}
        for name in names:
            if name == "exp3" and scen != "S0":  # EXP3-IX sees only its own utility: the same run in every scenario
                results["regret"][scen][name] = results["regret"]["S0"][name]
                results["slopes"][scen][name] = results["slopes"]["S0"][name]
                continue
            rows = []
            for T in horizons:
                if name == "exp3" and T > args.exp3_max_T:
                    continue
                R = min(replicas_for(T, args.tier), 16) if name == "exp3" else replicas_for(T, args.tier)
                mean, se, sec, _ = run(name, true, told, T, R, args.device)
                rows.append({"T": T, "R": R, "regret": mean, "se": se, "seconds": sec})
            results["regret"][scen][name] = rows
            results["slopes"][scen][name] = slope([r["T"] for r in rows], [r["regret"] for r in rows])
            print(f"{scen:11s} {name:11s} slope {results['slopes'][scen][name]:5.2f}  "
                  + "  ".join(f"T={r['T']:.0e}:{r['regret']:9.1f}" for r in rows), flush=True)  # fmt: skip
    # racing against the better branch
    ratios = {}
    for scen, by in results["regret"].items():
        better = {
            r["T"]: min(a["regret"], b["regret"]) for r, a, b in zip(by["racing"], by["robust"], by["optimistic"])
        }
        ratios[scen] = {r["T"]: r["regret"] / better[r["T"]] for r in by["racing"]}
    results["racing_over_better_branch"] = ratios
    # regret vs rho at T = 128k
    rhos, T_rho = [0.05, 0.1, 0.2, 0.3, 0.5, 1.0], min(128_000, args.max_T)
    results["rho"] = {"T": T_rho, "rhos": rhos, "regret": {}}
    for name in ["robust", "optimistic", "racing", "naive"]:
        results["rho"]["regret"][name] = [
            run(name, low_shill(rho), low_shill(rho), T_rho, replicas_for(T_rho, args.tier) // 2, args.device)[0]
            for rho in rhos
        ]
        print(f"rho sweep {name:11s}", " ".join(f"{v:8.1f}" for v in results["rho"]["regret"][name]), flush=True)
    # throughput at R = 1024
    # throughput at R = 1024: per wall-clock second, and per second of this process's CPU time (one thread; on a
    # shared machine the wall clock also counts time other jobs held the core)
    results["throughput"], results["throughput_cpu_time"] = {}, {}
    for name in ["robust", "optimistic", "racing"]:
        T = 16_000
        _, _, sec, cpu = run(name, Uniform(0, 1), Uniform(0, 1), T, 1024, args.device)
        results["throughput"][name], results["throughput_cpu_time"][name] = 1024 * T / sec, 1024 * T / cpu
        print(f"throughput {name:11s} {1024 * T / sec / 1e6:6.2f} M replica-rounds/s wall, "
              f"{1024 * T / cpu / 1e6:6.2f} M per CPU second (R=1024, T={T})", flush=True)  # fmt: skip
    results["meta"] = {
        "tier": args.tier, "device": args.device,
        "race_warmup": args.race_warmup, "machine": platform.machine(), "torch": torch.__version__,
        "threads": torch.get_num_threads(), "seconds_total": time.perf_counter() - total,
        "date": time.strftime("%Y-%m-%d"),
    }  # fmt: skip
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1))
    figures(results, suffix)
    report(results)
    print(f"wrote {out} in {results['meta']['seconds_total']:.0f} s")


ON_WIN_HORIZONS = [2_000, 8_000, 32_000, 128_000, 512_000]
ON_WIN_REPLICAS = {2_000: 128, 8_000: 64, 32_000: 32, 128_000: 16, 512_000: 8}


def run_value(name: str, T: int, R: int, device: str, on_win: bool, seed: int = 0) -> tuple[float, float]:
    """S1, m ~ Beta(2, 4). ``on_win``: v_t ~ U[0.5, 1] shown only after a win (bids in [0, 1]); otherwise the
    learner is told v = E[v] = 0.75 (bids in [0, 0.75]). Both have the benchmark U(b) = (0.75 − b)·F_m(b)."""
    values = Uniform(0.5, 1.0) if on_win else None
    env = ShilledAuctionEnv(beta(2.0, 4.0), Uniform(0, 1), 1.0 if on_win else 0.75, R, seed, device=device,
                            values=values, value_revealed="on_win" if on_win else "always")  # fmt: skip
    learner = build_learner(name, R, env.value, T, Uniform(0, 1), CONFIG, best_bid=env.best_bid, seed=seed,
                            device=device, value_known=not on_win)  # fmt: skip
    play(learner, env, T)
    regret = env.regret.cpu()
    return float(regret.mean()), float(regret.std() / math.sqrt(R)) if R > 1 else 0.0


def on_win_part(device: str, only_report: bool) -> None:
    out = ROOT / "benchmarks/results/shilled_auctions_on_win.json"
    if only_report:
        on_win_report(json.loads(out.read_text()))
        return
    torch.set_num_threads(1)
    total = time.perf_counter()
    results: dict = {"horizons": ON_WIN_HORIZONS, "slope_from": 8_000, "regret": {}, "slopes": {}}
    for name in ["robust", "optimistic", "racing"]:
        for variant in ("on_win", "known E[v]"):
            rows = []
            for T in ON_WIN_HORIZONS:
                mean, se = run_value(name, T, ON_WIN_REPLICAS[T], device, variant == "on_win")
                rows.append({"T": T, "R": ON_WIN_REPLICAS[T], "regret": mean, "se": se})
            key = f"{name} / {variant}"
            keep = [r for r in rows if r["T"] >= results["slope_from"]]
            results["regret"][key] = rows
            results["slopes"][key] = float(
                np.polyfit(np.log([r["T"] for r in keep]), np.log([r["regret"] for r in keep]), 1)[0]
            )
            print(f"{key:28s} slope {results['slopes'][key]:5.2f}", flush=True)
    results["meta"] = {"device": device, "machine": platform.machine(), "torch": torch.__version__,
                       "threads": torch.get_num_threads(), "seconds_total": time.perf_counter() - total,
                       "date": time.strftime("%Y-%m-%d")}  # fmt: skip
    out.write_text(json.dumps(results, indent=1))
    on_win_report(results)
    print(f"wrote {out} in {results['meta']['seconds_total']:.0f} s")


def on_win_report(results: dict) -> None:
    ts = results["horizons"]
    head = " | ".join(f"T={t:,}" for t in ts)
    print(f"\n| learner / value | {head} | slope (T >= {results['slope_from']:,}) |")
    print("|---|" + "---|" * (len(ts) + 1))
    for key, rows in results["regret"].items():
        cells = [f"{r['regret']:,.0f} ± {r['se']:,.0f}" for r in rows]
        print(f"| {key} | " + " | ".join(cells) + f" | {results['slopes'][key]:.2f} |")


def report(results: dict) -> None:
    """Markdown tables: regret at each T with the fitted slope, racing over the better branch, ρ, throughput."""
    ts = results["horizons"]
    print("\n| scenario | learner | " + " | ".join(f"T={t:,}" for t in ts) + " | slope |")
    print("|---|---|" + "---|" * (len(ts) + 1))
    for scen, by in results["regret"].items():
        for name, rows in by.items():
            at = {r["T"]: r for r in rows}
            cells = [f"{at[t]['regret']:,.0f} ± {at[t]['se']:,.0f}" if t in at else "–" for t in ts]
            print(f"| {scen} | {name} | " + " | ".join(cells) + f" | {results['slopes'][scen][name]:.2f} |")
    print("\n| racing / better branch | " + " | ".join(f"T={t:,}" for t in ts) + " |")
    print("|---|" + "---|" * len(ts))
    for scen, ratios in results["racing_over_better_branch"].items():
        ratios = {int(t): v for t, v in ratios.items()}  # JSON keys are strings
        print(f"| {scen} | " + " | ".join(f"{ratios[t]:.2f}" if t in ratios else "–" for t in ts) + " |")
    rho = results["rho"]
    print(f"\n| S2, T={rho['T']:,}: ρ | " + " | ".join(str(r) for r in rho["rhos"]) + " |")
    print("|---|" + "---|" * len(rho["rhos"]))
    for name, vs in rho["regret"].items():
        print(f"| {name} | " + " | ".join(f"{v:,.0f}" for v in vs) + " |")
    print("\n| throughput, R = 1024 | M replica-rounds / wall s | M replica-rounds / CPU s |\n|---|---|---|")
    for name, v in results["throughput"].items():
        cpu = results.get("throughput_cpu_time", {}).get(name, float("nan"))
        print(f"| {name} | {v / 1e6:.2f} | {cpu / 1e6:.2f} |")


def figures(results: dict, suffix: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figdir = ROOT / "docs/figures"
    figdir.mkdir(parents=True, exist_ok=True)
    scens = list(results["regret"])
    fig, axes = plt.subplots(1, len(scens), figsize=(4.2 * len(scens), 4), sharey=True)
    for ax, scen in zip(axes, scens):
        for i, (name, rows) in enumerate(results["regret"][scen].items()):
            ts, vs = [r["T"] for r in rows], [max(r["regret"], 1e-3) for r in rows]
            ax.loglog(ts, vs, "o-", ms=3, color=f"C{i}", label=f"{name} ({results['slopes'][scen][name]:.2f})")
        ax.set_title(scen)
        ax.set_xlabel("horizon T")
        ax.legend(fontsize=7, title="learner (slope)", title_fontsize=7)
    axes[0].set_ylabel("pseudo-regret at T (mean over replicas)")
    fig.suptitle(f"Regret vs T, m ~ Beta(2,4), v = 1; slopes fitted on T >= {results['slope_from']}")
    fig.tight_layout()
    fig.savefig(figdir / f"shilled_auctions_regret_vs_T{suffix}.png", dpi=110)
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(5.5, 4))
    rho = results["rho"]
    for i, (name, vs) in enumerate(rho["regret"].items()):
        ax.plot(rho["rhos"], vs, "o-", color=f"C{i}", label=name)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("probability of a low shill ρ (S2)")
    ax.set_ylabel(f"pseudo-regret at T = {rho['T']}")
    ax.set_title("Regret vs ρ: rare low shills starve the debiased statistics")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(figdir / f"shilled_auctions_regret_vs_rho{suffix}.png", dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
