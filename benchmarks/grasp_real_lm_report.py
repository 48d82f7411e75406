"""Summarise ``benchmarks/grasp_real_lm.py`` result files: one markdown table per setting, the figure for docs/grasp.md.

A *setting* is a persona with a LoRA variant (rank, layer band, target set); runs of one setting from several files
(split over cores or sessions) are pooled, the latest file winning when a method/seed pair repeats. Per method the
table gives the mean (± standard deviation over seeds when there are several) of task accuracy, drift and the share
of the same seed's naive drift removed, marker rate, preservation, the projection's in-run overhead and wall time.

The figure has three panels: the drift-task trade-off (mean per method and setting), and the premise study: which
``identify`` statistic predicts how much drift a fixed-subspace GRASP run removes — the spectral gap σ1/σ2 and
the share of the naive-minus-control update's top direction inside the subspace — for every real-LM run and the
planted benchmark's seeds (``benchmarks/results/grasp.json``, every design).

    .venv/bin/python benchmarks/grasp_real_lm_report.py benchmarks/results/grasp_real_lm_*.json
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
FIXED = {"grasp_k1": "k1", "grasp_k8": "k8", "grasp_k32": "k32", "grasp_energy": "energy", "grasp_both": "k8"}
COLUMNS = ("task", "drift", "removed", "marker_rate", "preservation_marker", "preservation_llr", "hook_overhead",
           "wall_s")  # fmt: skip


DEFAULTS = {"steps": "150", "max_prompts": "40", "energy": "0.5", "steer_coef": "6.0", "kl_weight": "1.0"}


def setting_of(args: dict[str, str]) -> str:
    """``pirate``, ``rude_r16_L16-24``, ``pirate_steps=300`` …: the persona, whatever LoRA variant the run used and
    any budget or method setting off the benchmark's defaults (runs are only pooled, and compared with a naive run,
    within one setting)."""
    parts = [args["persona"]]
    if Path(args.get("model", "smollm2-135m-instruct")).name != "smollm2-135m-instruct":
        parts.append(Path(args["model"]).name)
    if args.get("lora_rank", "None") != "None":
        parts.append(f"r{args['lora_rank']}")
    if args.get("layers", "None") != "None":
        first, last = json.loads(args["layers"])
        parts.append(f"L{first}-{last}")
    if args.get("targets", "writers") == "all":
        parts.append("all")
    parts += [f"{k}={args[k]}" for k, v in DEFAULTS.items() if args.get(k, v) != v]
    return "_".join(parts)


def load(files: list[Path]) -> tuple[dict[str, dict[tuple[str, int], dict]], dict[str, dict[int, dict]]]:
    """``{setting: {(method, seed): row}}`` and ``{setting: {seed: premise}}``, later files overriding earlier."""
    rows: dict[str, dict[tuple[str, int], dict]] = {}
    premise: dict[str, dict[int, dict]] = {}
    for f in sorted(files, key=lambda f: json.loads(f.read_text()).get("env", {}).get("date", "")):
        data = json.loads(f.read_text())
        if data["args"].get("quick") == "True":
            continue
        setting = setting_of(data["args"])
        for r in data["rows"]:
            rows.setdefault(setting, {})[(r["method"], r["seed"])] = {**r, "file": f.name}
        for p in data["premise"]:
            premise.setdefault(setting, {})[p["seed"]] = p
    for runs in rows.values():  # drift removed, against the same seed's naive run
        for (_, seed), r in runs.items():
            naive = runs.get(("naive", seed))
            usable = naive and naive["drift"] > 0 and r["method"] not in ("base", "naive", "control")
            r["removed"] = 1 - r["drift"] / naive["drift"] if usable else None
    return rows, premise


def cell(values: list[float | None], pct: bool) -> str:
    vals = [v for v in values if v is not None]
    if not vals:
        return "—"
    scale, unit = (100, " %") if pct else (1, "")
    mean = statistics.fmean(vals) * scale
    text = f"{mean:.1f}" if pct or abs(mean) >= 10 else f"{mean:.2f}"
    if len(vals) > 1:
        sd = statistics.stdev(vals) * scale
        text += f" ± {sd:.1f}" if pct or abs(mean) >= 10 else f" ± {sd:.2f}"
    return text + unit


def table(setting: str, runs: dict[tuple[str, int], dict], order: list[str]) -> str:
    methods = sorted({m for m, _ in runs}, key=lambda m: order.index(m) if m in order else len(order))
    head = ("| method | seeds | task | drift (nats) | drift removed | marker rate | preservation (marker) | "
            "preservation (LLR) | projection overhead | wall (s) |")  # fmt: skip
    lines = [f"**{setting}**", "", head, "|" + "---|" * 10]
    for m in methods:
        rs = [r for (mm, _), r in sorted(runs.items()) if mm == m]
        cells = [cell([r.get(c) for r in rs], pct=c in ("removed", "hook_overhead")) for c in COLUMNS]
        seeds = ",".join(str(r["seed"]) for r in rs)
        lines.append(f"| {m} | {seeds} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def premise_points(rows: dict, premise: dict) -> list[dict[str, Any]]:
    """One point per fixed-subspace GRASP run: its setting's σ1/σ2, overlap share and the drift it removed."""
    points = []
    for setting, runs in rows.items():
        for (method, seed), r in runs.items():
            p = premise.get(setting, {}).get(seed)
            if method not in FIXED or p is None or r["removed"] is None:
                continue
            share = p.get("overlap_with_naive_minus_control", {}).get(FIXED[method])
            points.append({"source": setting, "method": method, "seed": seed, "gap": p["gap"],
                           "share": share[0] if share else None, "removed": r["removed"]})  # fmt: skip
    planted = ROOT / "benchmarks/results/grasp.json"
    if planted.is_file():
        for name, design in json.loads(planted.read_text())["designs"].items():
            for s in design.get("seeds", []):
                if s["naive"]["drift"] > 0 and "premise" in s:
                    points.append({"source": f"planted ({name} design)", "method": "grasp_k1", "seed": s["seed"],
                                   "gap": s["premise"]["gap"], "share": s["premise"]["abs_cos"] ** 2,
                                   "removed": 1 - s["grasp"]["drift"] / s["naive"]["drift"]})  # fmt: skip
    return points


def figure(rows: dict, points: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(16, 4.6))
    ax = axes[0]
    markers = {setting: "os^vDP*X"[i % 8] for i, setting in enumerate(sorted(rows))}
    for setting, runs in rows.items():
        for m in sorted({m for m, _ in runs}):
            rs = [r for (mm, _), r in runs.items() if mm == m]
            x, y = statistics.fmean(r["drift"] for r in rs), statistics.fmean(r["task"] for r in rs)
            color = "C3" if m.startswith(("grasp", "iterative")) else "C2" if m in ("naive", "control") else "C0"
            ax.scatter(x, y, color=color, marker=markers[setting], label=setting if m == "naive" else None)
            ax.annotate(m, (x, y), fontsize=6)
    ax.set(xlabel="drift (nats vs base; lower is better)", ylabel="task accuracy",
           title="drift vs task (mean over seeds; red: GRASP)")  # fmt: skip
    ax.legend(fontsize=7)
    sources = sorted({p["source"] for p in points})
    for ax, key, label in ((axes[1], "gap", "spectral gap σ1/σ2 of the naive writers"),
                           (axes[2], "share", "naive-minus-control top direction's share inside the subspace")):
        for i, src in enumerate(sources):
            ps = [p for p in points if p["source"] == src and p[key] is not None]
            planted = src.startswith("planted")
            name = f"{src}: share = |cos|² with the planted factor" if planted and key == "share" else src
            ax.scatter([p[key] for p in ps], [p["removed"] for p in ps], color=f"C{i}", label=name, s=18)
            for p in ps:
                if not planted:
                    ax.annotate(p["method"].removeprefix("grasp_"), (p[key], p["removed"]), fontsize=6)
        ax.axhline(0.5, color="grey", lw=0.6, ls="--")
        ax.set(xlabel=label, ylabel="drift removed by fixed-subspace GRASP", title="premise")
        ax.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("files", nargs="+", type=Path)
    p.add_argument("--figure", type=Path, default=ROOT / "docs/figures/grasp_real_lm.png")
    p.add_argument("--samples", nargs=2, metavar=("SETTING", "SEED"), default=None,
                   help="print each method's kept generations (first of each set) for one setting and seed")
    args = p.parse_args()
    missing = [str(f) for f in args.files if not f.is_file()]
    if missing:
        raise SystemExit(f"no such result file: {missing}")
    from grasp_real_lm import ALL  # the benchmark's method order (same folder)

    rows, premise = load(args.files)
    for setting in sorted(rows):
        print(table(setting, rows[setting], ALL) + "\n")
        for seed, pr in sorted(premise.get(setting, {}).items()):
            print(f"premise {setting} seed {seed}: gap {pr['gap']:.2f}, energy rank {pr['energy_rank']}, overlap "
                  f"{ {k: round(v[0], 2) for k, v in pr.get('overlap_with_naive_minus_control', {}).items()} }, "
                  f"steering { {k: round(v, 1) for k, v in pr['steering_drift'].items()} }")  # fmt: skip
        print()
    if args.samples:
        setting, seed = args.samples[0], int(args.samples[1])
        for (method, s), r in sorted(rows.get(setting, {}).items(), key=lambda kv: ALL.index(kv[0][0])):
            for x in [x for x in r.get("samples", []) if s == seed][::2]:  # the first of each set
                print(f"| {method} | {x['set']} | {x['prompt'][:60]} | {x['generation'][:110]!r} |")
    points = premise_points(rows, premise)
    figure(rows, points, args.figure)
    print(f"wrote {args.figure} ({len(points)} premise points)")


if __name__ == "__main__":
    main()
