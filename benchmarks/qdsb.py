"""QDSB benchmark: coupling quality, coupling speed, and SF2M end to end, baselines and a peer library in one run.

a  Coupling quality at N = 2048 (8 Gaussians -> moons): exact expected squared cost of QDSB (k = 16..1024, exact
   and Sinkhorn anchor plans) vs the full exact OT plan, minibatch OT (B = 64, 256, 1024) and independent pairs.
b  Speed: wall time per training step spent on the coupling (B = 256), N = 10^3 .. 10^6: QDSB draw vs minibatch
   exact OT (``ot.emd``) vs minibatch log-domain Sinkhorn vs the peer a user would otherwise pick, TorchCFM's
   ``OTPlanSampler("exact").sample_plan`` (if ``torchcfm`` is installed), as ratios measured in the same run;
   plus the one-off QDSB fit (anchors + plan) and one SF2M network step for scale.
c  End to end: SF2M with QDSB vs minibatch-OT pairs, 3 seeds, the same wall-clock training budget, on
   8 Gaussians -> moons and Gauss -> Gauss (d = 5). W1 / MMD on held-out points during training (evaluation time
   is not counted); from the curves: the metrics at equal wall time, at equal steps, and time to reach
   minibatch-OT's final W1.

    .venv/bin/python benchmarks/qdsb.py            # CPU tier, about 10-15 minutes on a 2-core shared CPU
    .venv/bin/python benchmarks/qdsb.py --quick    # smoke run, about 1-2 minutes (writes under runs/)
    .venv/bin/python benchmarks/qdsb.py --tier gpu --device cuda   # GPU tier: N up to 10^6, d up to 512 (b only)
    .venv/bin/python benchmarks/qdsb.py --parts b   # re-run part b only; parts a and c stay in the JSON as they were

The TorchCFM peer is optional (``pip install torchcfm``; ``--no-deps`` is enough, since only its
``torchcfm.optimal_transport`` module is used); without it the peer column is left empty.

Everything runs with one torch thread (``torch.set_num_threads(1)``) and POT's single-threaded ``ot.emd``.
Writes ``benchmarks/results/qdsb.json`` (``qdsb_gpu.json`` for the GPU tier) and ``docs/figures/qdsb_*.png``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from lightning_papers.datamodules.point_clouds import GaussianPairDataModule, sample_toy
from lightning_papers.methods.qdsb.bridge import MLP, sample_sde, sf2m_loss
from lightning_papers.methods.qdsb.coupling import (
    Coupling,
    ExactOTCoupling,
    IndependentCoupling,
    MinibatchOTCoupling,
    QuantizedCoupling,
)
from lightning_papers.metrics.distributions import gaussian_kl, mmd_rbf, wasserstein

ROOT = Path(__file__).resolve().parents[1]
FIG = ROOT / "docs" / "figures"


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def toy_pair(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return sample_toy("8gaussians", n, g), sample_toy("moons", n, g)


# ----------------------------------------------------------------------------------------------------- a: quality
def part_a(quick: bool) -> dict[str, Any]:
    n = 1024 if quick else 2048
    x0, x1 = toy_pair(n, 0)
    rows: list[dict[str, Any]] = []

    def add(name: str, c: Coupling, **extra: Any) -> None:
        t0 = time.perf_counter()
        c.fit(x0, x1)
        fit_s = time.perf_counter() - t0
        rows.append({"coupling": name, "expected_cost": c.expected_cost(), "fit_s": fit_s, **extra})
        print(f"  a  {name:38s} cost {rows[-1]['expected_cost']:8.3f}  fit {fit_s:6.3f}s")

    add("full exact OT", ExactOTCoupling())
    add("independent", IndependentCoupling())
    for b in (64, 256) if quick else (64, 256, 1024):
        add(f"minibatch exact OT B={b}", MinibatchOTCoupling(b, n_estimate=8 if b >= 1024 else 32), batch=b)
    for k in (16, 64, 256) if quick else (16, 64, 256, 1024):
        c = QuantizedCoupling(k, seed=0)
        add(f"QDSB k={k} exact", c, k=k)
        rows[-1]["radius"] = max(c.radius0, c.radius1)
    for k in (64, 256):  # the paper's entropic wording, epsilon = 2 sigma^2 with sigma = 0.25 (toys)
        add(f"QDSB k={k} sinkhorn eps=0.125", QuantizedCoupling(k, ot="sinkhorn", epsilon=0.125, seed=0), k=k)
    exact = rows[0]["expected_cost"]
    for r in rows:
        r["ratio_to_exact"] = r["expected_cost"] / exact
    return {"n": n, "rows": rows}


# ------------------------------------------------------------------------------------------------------- b: speed
def torchcfm_sampler() -> Any:
    """TorchCFM's exact minibatch OT sampler, or None when ``torchcfm`` is not installed."""
    try:
        from torchcfm.optimal_transport import OTPlanSampler
    except ImportError:
        return None
    return OTPlanSampler(method="exact")


def time_calls(fn: Any, reps: int, device: torch.device) -> float:
    """Median seconds per call over ``reps`` calls (after one warm-up call)."""
    fn()
    sync(device)
    out = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        sync(device)
        out.append(time.perf_counter() - t0)
    return statistics.median(out)


def part_b(quick: bool, device: torch.device, ns: list[int], dims: list[int]) -> dict[str, Any]:
    batch, k = 256, 256
    rows = []
    flow, score = MLP(2, 64).to(device), MLP(2, 64).to(device)
    opt = torch.optim.AdamW(list(flow.parameters()) + list(score.parameters()), lr=1e-3)
    xa, xb = torch.randn(batch, 2, device=device), torch.randn(batch, 2, device=device)

    def net_step() -> None:
        f, s = sf2m_loss(flow, score, xa, xb, 0.25)
        opt.zero_grad()
        (f + s).backward()
        opt.step()

    net_s = time_calls(net_step, 20 if quick else 50, device)
    print(f"  b  one SF2M network step (d=2, width 64, B={batch}): {1e3 * net_s:.2f} ms")
    for d in dims:
        for n in ns:
            g = torch.Generator().manual_seed(n + d)
            x0 = torch.randn(n, d, generator=g).to(device)
            x1 = (1.5 * torch.randn(n, d, generator=g) + 2.0).to(device)
            eps = 0.1 * 2 * d  # Sinkhorn epsilon: 5% of the mean squared cost scale ~2d (see docs/qdsb.md)
            t0 = time.perf_counter()
            q = QuantizedCoupling(k, n_restarts=4, seed=0).fit(x0, x1)
            sync(device)
            fit_s = time.perf_counter() - t0
            reps = 30 if quick else 200
            mb_e = MinibatchOTCoupling(batch).fit(x0, x1)
            row = {
                "n": n,
                "d": d,
                "qdsb_fit_s": fit_s,
                "qdsb_draw_ms": 1e3 * time_calls(lambda q=q: q.sample(batch), reps, device),
                "minibatch_emd_ms": 1e3 * time_calls(lambda mb_e=mb_e: mb_e.sample(batch), 5 if quick else 15, device),
            }
            mb_s = MinibatchOTCoupling(batch, ot="sinkhorn", epsilon=eps).fit(x0, x1)
            reps_s = 3 if quick else 8
            row["minibatch_sinkhorn_ms"] = 1e3 * time_calls(lambda mb_s=mb_s: mb_s.sample(batch), reps_s, device)
            peer = torchcfm_sampler()
            if peer is not None:  # what a TorchCFM user runs per step: two random batches, then sample_plan

                def torchcfm_step(x0: torch.Tensor = x0, x1: torch.Tensor = x1, peer: Any = peer) -> None:
                    j0 = torch.randint(x0.shape[0], (batch,), device=x0.device)
                    j1 = torch.randint(x1.shape[0], (batch,), device=x1.device)
                    peer.sample_plan(x0[j0], x1[j1])

                row["torchcfm_ms"] = 1e3 * time_calls(torchcfm_step, 5 if quick else 15, device)
            if device.type == "cpu":  # TorchCFM's own baseline: POT's (non-log) ot.sinkhorn on a numpy batch
                import ot

                def pot_sinkhorn(x0: torch.Tensor = x0, x1: torch.Tensor = x1, eps: float = eps) -> None:
                    j0 = torch.randint(x0.shape[0], (batch,))
                    j1 = torch.randint(x1.shape[0], (batch,))
                    cost = torch.cdist(x0[j0].double(), x1[j1].double()).pow(2).numpy()
                    w = torch.full((batch,), 1.0 / batch, dtype=torch.float64).numpy()
                    ot.sinkhorn(w, w, cost, reg=eps)

                row["pot_sinkhorn_ms"] = 1e3 * time_calls(pot_sinkhorn, reps_s, device)
            if device.type == "cuda" or d == dims[0]:
                t0 = time.perf_counter()
                qs = QuantizedCoupling(k, ot="sinkhorn", epsilon=eps, n_restarts=4, seed=0).fit(x0, x1)
                sync(device)
                row["qdsb_sinkhorn_fit_s"] = time.perf_counter() - t0
                del qs
            row["emd_over_qdsb"] = row["minibatch_emd_ms"] / row["qdsb_draw_ms"]
            row["sinkhorn_over_qdsb"] = row["minibatch_sinkhorn_ms"] / row["qdsb_draw_ms"]
            if "torchcfm_ms" in row:
                row["torchcfm_over_qdsb"] = row["torchcfm_ms"] / row["qdsb_draw_ms"]
            rows.append(row)
            print(
                f"  b  N={n:>8d} d={d:<3d} QDSB draw {row['qdsb_draw_ms']:.3f} ms"
                f" | mb EMD {row['minibatch_emd_ms']:.2f} ms"
                f" ({row['emd_over_qdsb']:.0f}x) | mb Sinkhorn {row['minibatch_sinkhorn_ms']:.2f} ms"
                f" ({row['sinkhorn_over_qdsb']:.0f}x) | QDSB fit {fit_s:.2f}s"
                + (f" | TorchCFM {row['torchcfm_ms']:.2f} ms ({row['torchcfm_over_qdsb']:.0f}x)" if peer else "")
            )
    try:
        from importlib.metadata import version

        peer_version = version("torchcfm")
    except Exception:  # noqa: BLE001 - not installed
        peer_version = None
    return {"batch": batch, "k": k, "device": str(device), "net_step_ms": 1e3 * net_s, "rows": rows,
            "torchcfm": peer_version}  # fmt: skip


# --------------------------------------------------------------------------------------------------- c: end to end
def gauss_task(seed: int, n: int, n_eval: int) -> dict[str, Any]:
    dm = GaussianPairDataModule(dim=5, shift=3.0, n_train=n, n_val=n_eval, seed=seed)
    dm.setup("fit")
    fresh = dm.draw(dm.m1, dm.cov1, n_eval).float()  # the generator has moved on: new samples, same law
    return {"x0": dm.train_source, "x1": dm.train_target, "v0": dm.val_source, "v1": dm.val_target,
            "sigma": 0.5, "target": (dm.m1, dm.cov1), "fresh_target": fresh}  # fmt: skip


def toy_task(seed: int, n: int, n_eval: int) -> dict[str, Any]:
    x0, x1 = toy_pair(n, seed)
    v0, v1 = toy_pair(n_eval, 10_000 + seed)
    fresh = toy_pair(n_eval, 20_000 + seed)[1]
    return {"x0": x0, "x1": x1, "v0": v0, "v1": v1, "sigma": 0.25, "target": None, "fresh_target": fresh}


def train_curve(task: dict[str, Any], coupling: Coupling, budget_s: float, eval_every_s: float, seed: int) -> list:
    """SF2M (width 64, AdamW lr 1e-3, B = 256) for ``budget_s`` seconds of training incl. the coupling fit."""
    torch.manual_seed(seed)
    d = task["x0"].shape[1]
    flow, score = MLP(d, 64), MLP(d, 64)
    opt = torch.optim.AdamW(list(flow.parameters()) + list(score.parameters()), lr=1e-3, weight_decay=0.01)
    curve, train_s, steps, next_eval = [], 0.0, 0, 0.0
    t0 = time.perf_counter()
    coupling.fit(task["x0"], task["x1"])
    train_s += time.perf_counter() - t0
    while True:
        if train_s >= next_eval or train_s >= budget_s:
            torch.manual_seed(seed + 1)
            gen = sample_sde(flow, score, task["v0"], task["sigma"], 100)
            point = {"train_s": train_s, "steps": steps, "w1": wasserstein(gen, task["v1"], 1),
                     "mmd": mmd_rbf(gen, task["v1"])}  # fmt: skip
            if task["target"] is not None:
                g = gen.double()
                point["kl"] = gaussian_kl(g.mean(0), torch.cov(g.T), *task["target"])
            curve.append(point)
            next_eval = train_s + eval_every_s
            if train_s >= budget_s:
                return curve
        t0 = time.perf_counter()
        i0, i1 = coupling.sample(256)
        f, s = sf2m_loss(flow, score, task["x0"][i0], task["x1"][i1], task["sigma"])
        opt.zero_grad()
        (f + s).backward()
        opt.step()
        train_s += time.perf_counter() - t0
        steps += 1


def interp_at(curve: list, key: str, x: float, value: str) -> float:
    """Metric ``value`` at the last evaluation with ``curve[key] <= x``."""
    pts = [p for p in curve if p[key] <= x + 1e-9]
    return pts[-1][value] if pts else float("nan")


def first_reach(curve: list, level: float) -> float | None:
    for p in curve:
        if p["w1"] <= level:
            return p["train_s"]
    return None


def part_c(quick: bool) -> dict[str, Any]:
    seeds = [0] if quick else [0, 1, 2]
    budget, every = (4.0, 1.0) if quick else (24.0, 2.0)
    n, n_eval = (4096, 512) if quick else (16384, 1024)
    out: dict[str, Any] = {"budget_s": budget, "eval_every_s": every, "n_train": n, "n_eval": n_eval, "tasks": {}}
    for name, make in (("8gaussians->moons", toy_task), ("gauss->gauss d=5", gauss_task)):
        res: dict[str, Any] = {"runs": {"qdsb": [], "minibatch_ot": []}, "w1_floor": []}
        for seed in seeds:
            task = make(seed, n, n_eval)
            # sampling floor: W1 between the held-out targets and fresh target samples of the same size
            res["w1_floor"].append(wasserstein(task["fresh_target"], task["v1"], 1))
            for method in ("qdsb", "minibatch_ot"):
                c = QuantizedCoupling(256, seed=seed) if method == "qdsb" else MinibatchOTCoupling(256, seed=seed)
                curve = train_curve(task, c, budget, every, seed)
                res["runs"][method].append(curve)
                last = curve[-1]
                print(f"  c  {name:18s} seed {seed} {method:12s} steps {last['steps']:6d}  W1 {last['w1']:.3f}  "
                      f"MMD {last['mmd']:.3f}")  # fmt: skip
        summary = []
        for seed_i, (cq, cm) in enumerate(zip(res["runs"]["qdsb"], res["runs"]["minibatch_ot"], strict=True)):
            mb_final, mb_steps = cm[-1]["w1"], cm[-1]["steps"]
            reach = first_reach(cq, mb_final)
            summary.append({
                "seed": seeds[seed_i],
                "qdsb_w1": cq[-1]["w1"], "mb_w1": mb_final, "qdsb_mmd": cq[-1]["mmd"], "mb_mmd": cm[-1]["mmd"],
                "qdsb_steps": cq[-1]["steps"], "mb_steps": mb_steps,
                "qdsb_w1_at_mb_steps": interp_at(cq, "steps", mb_steps, "w1"),
                "qdsb_time_to_mb_final_w1": reach,
                "speedup_to_mb_final_w1": (cm[-1]["train_s"] / reach) if reach else None,
                **({"qdsb_kl": cq[-1]["kl"], "mb_kl": cm[-1]["kl"]} if "kl" in cq[-1] else {}),
            })  # fmt: skip
        res["summary"] = summary
        out["tasks"][name] = res
    return out


# ---------------------------------------------------------------------------------------------------- figures
def figures(res: dict[str, Any], fig_dir: Path, suffix: str = "") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig_dir.mkdir(parents=True, exist_ok=True)
    if "a" in res:
        rows = res["a"]["rows"]
        fig, ax = plt.subplots(figsize=(5.5, 3.8))
        q = [r for r in rows if r["coupling"].startswith("QDSB") and "exact" in r["coupling"]]
        ax.plot([r["k"] for r in q], [r["expected_cost"] for r in q], "o-", label="QDSB (exact anchor plan)")
        qs = [r for r in rows if "sinkhorn" in r["coupling"]]
        ax.plot([r["k"] for r in qs], [r["expected_cost"] for r in qs], "s--", label="QDSB (Sinkhorn, eps=0.125)")
        for r, ls in zip([r for r in rows if r["coupling"].startswith("minibatch")], (":", "-.", "--"), strict=False):
            ax.axhline(r["expected_cost"], ls=ls, c="tab:orange", label=r["coupling"])
        ax.axhline(rows[0]["expected_cost"], c="k", label="full exact OT")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("anchors per side k")
        ax.set_ylabel("expected squared cost")
        ax.set_title(f"(a) coupling cost, 8G->moons, N={res['a']['n']}", fontsize=9)
        ax.legend(fontsize=7)
        fig.savefig(fig_dir / f"qdsb_coupling_cost{suffix}.png", dpi=110, bbox_inches="tight")
        plt.close(fig)
    if "b" in res:
        rows = res["b"]["rows"]
        fig, ax = plt.subplots(figsize=(5.5, 3.8))
        for d in sorted({r["d"] for r in rows}):
            rr = [r for r in rows if r["d"] == d]
            ns = [r["n"] for r in rr]
            ax.plot(ns, [r["qdsb_draw_ms"] for r in rr], "o-", label=f"QDSB draw (d={d})")
            ax.plot(ns, [r["minibatch_emd_ms"] for r in rr], "s--", label=f"minibatch EMD (d={d})")
            ax.plot(ns, [r["minibatch_sinkhorn_ms"] for r in rr], "^:", label=f"minibatch log-Sinkhorn (d={d})")
            if "torchcfm_ms" in rr[0]:
                ax.plot(ns, [r["torchcfm_ms"] for r in rr], "D-.", label=f"TorchCFM OTPlanSampler exact (d={d})")
            if "pot_sinkhorn_ms" in rr[0]:
                ax.plot(ns, [r["pot_sinkhorn_ms"] for r in rr], "v:", label=f"minibatch POT ot.sinkhorn (d={d})")
        ax.axhline(res["b"]["net_step_ms"], c="0.5", lw=0.8, label="SF2M network step")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("points per side N")
        ax.set_ylabel("coupling ms per step (B=256)")
        ax.set_title(f"(b) coupling time per step, {res['b']['device']}", fontsize=9)
        ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
        fig.savefig(fig_dir / f"qdsb_speed{suffix}.png", dpi=110, bbox_inches="tight")
        plt.close(fig)
    if "c" in res:
        tasks = res["c"]["tasks"]
        fig, axes = plt.subplots(1, len(tasks), figsize=(5 * len(tasks), 3.6))
        for ax, (name, t) in zip(axes, tasks.items(), strict=True):
            for method, color in (("qdsb", "tab:blue"), ("minibatch_ot", "tab:orange")):
                for i, curve in enumerate(t["runs"][method]):
                    ax.plot([p["train_s"] for p in curve], [p["w1"] for p in curve], c=color, alpha=0.7,
                            label=method if i == 0 else None)  # fmt: skip
            ax.axhline(statistics.mean(t["w1_floor"]), c="0.4", ls="--", lw=0.8, label="sampling floor")
            ax.set_yscale("log")
            ax.set_xlabel("training wall time (s, evaluation excluded)")
            ax.set_ylabel("held-out W1")
            ax.set_title(f"(c) {name}", fontsize=9)
            ax.legend(fontsize=7)
        fig.savefig(fig_dir / f"qdsb_end_to_end{suffix}.png", dpi=110, bbox_inches="tight")
        plt.close(fig)


# ------------------------------------------------------------------------------------------------------ main
def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="smaller sizes, one seed, short budgets (smoke run)")
    p.add_argument("--tier", choices=["cpu", "gpu"], default="cpu", help="gpu: speed part only, N to 1e6, d to 512")
    p.add_argument("--device", default="cpu", help="torch device for part b (cuda for the GPU tier)")
    p.add_argument("--parts", default="abc", help="subset of parts to run, e.g. 'ab'")
    p.add_argument("--no-write", action="store_true", help="print only; do not write JSON or figures")
    args = p.parse_args()
    torch.set_num_threads(1)
    device = torch.device(args.device)
    started = time.perf_counter()
    res: dict[str, Any] = {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "command": "python benchmarks/qdsb.py" + (" --quick" if args.quick else "") + f" --tier {args.tier}",
        "hardware": f"{os.cpu_count()}-core shared {platform.machine()} CPU",
        "torch_threads": torch.get_num_threads(),
        "quick": args.quick,
        "tier": args.tier,
    }
    if args.tier == "gpu":
        if device.type != "cuda":
            raise SystemExit("--tier gpu needs --device cuda")
        res["hardware"] = torch.cuda.get_device_name(device)
        res["b"] = part_b(args.quick, device, [10**5, 10**6] if not args.quick else [10**5], [2, 64, 512])
    else:
        if "a" in args.parts:
            print("(a) coupling quality")
            res["a"] = part_a(args.quick)
        if "b" in args.parts:
            print("(b) coupling speed")
            ns = [10**3, 10**4, 10**5] if args.quick else [10**3, 10**4, 10**5, 10**6]
            res["b"] = part_b(args.quick, device, ns, [2])
        if "c" in args.parts:
            print("(c) end to end")
            res["c"] = part_c(args.quick)
    res["total_s"] = time.perf_counter() - started
    print(f"total {res['total_s']:.0f}s")
    if not args.no_write:
        # the full CPU run is what docs/qdsb.md shows; smoke runs go to the git-ignored runs/ folder
        name = "qdsb" + ("_gpu" if args.tier == "gpu" else "")
        out_dir = ROOT / "runs" / "qdsb_bench_quick" if args.quick else ROOT / "benchmarks" / "results"
        fig_dir = out_dir if args.quick else FIG
        out_dir.mkdir(parents=True, exist_ok=True)
        path = out_dir / f"{name}.json"
        if set(args.parts) != set("abc") and path.exists():  # a partial re-run updates its parts only
            old = json.loads(path.read_text())
            dates = old.pop("part_dates", {p: old.get("date") for p in "abc" if p in old})
            dates.update({p: res["date"] for p in args.parts if p in res})
            res = {**old, **res, "part_dates": dates}
            res["command"] = f"{old.get('command')}; then {res['command']} --parts {args.parts}"
        path.write_text(json.dumps(res, indent=1))
        figures(res, fig_dir, name[4:])
        print(f"wrote {out_dir / f'{name}.json'} and figures under {fig_dir}")


if __name__ == "__main__":
    main()
