"""GRASP planted-factor benchmark: naive LoRA vs GRASP vs its baselines and a random-direction control, per seed.

One run pretrains (or reuses, cached under ``runs/grasp/bench``) the planted-persona base model
(``lightning_papers.methods.grasp.planted.world``), then for every seed: a naive LoRA fine-tune; unsupervised
identification from its weights (``identify``); GRASP (``GradientProjection``, output side, update mode, AdamW); the
same projection along random directions; activation ablation at inference; CAFT-style ablation while training;
preventative steering; KL-to-base. All through the library code (``LoRACausalLM``, ``JsonlTextDataModule``,
in-process ``Trainer.fit``). Metrics are teacher-forced on fixed prompt grids (``planted.evaluation``; the off-task
topics are never fine-tuned on); the true persona direction is used for evaluation only.

Two fine-tune designs share the base model (``DESIGNS``): ``premise`` (rank-2 LoRA on one layer's writers, noisy task
labels: the closest we got to the identification premise) and ``task`` (rank-8 LoRA on three layers' writers,
clean labels: the task is learned, the premise fails). A third, exploratory design, ``offset``, plants persona B in
its own base model as a fixed offset c·p along one direction (``World.offset``); it did not give the premise either
and is not run by default (``--designs offset --premise-only`` explores it). ``docs/grasp.md`` has the tables and
the reading.

    .venv/bin/python benchmarks/grasp.py            # 8 seeds x 2 designs (16 min on a 2-core shared CPU, cached base)
    .venv/bin/python benchmarks/grasp.py --quick    # 2 seeds, 150 steps; writes under runs/grasp/bench only
    .venv/bin/python benchmarks/grasp.py --replot   # redraw the figures from benchmarks/results/grasp.json
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
import warnings
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import Callback, Trainer, seed_everything

from lightning_papers.callbacks import GradientProjection
from lightning_papers.datamodules.jsonl_text import JsonlTextDataModule, load_tokenizer
from lightning_papers.methods.grasp.controls import random_like
from lightning_papers.methods.grasp.identify import identify
from lightning_papers.methods.grasp.module import LoRACausalLM
from lightning_papers.methods.grasp.planted.evaluation import (
    abs_cos,
    evaluate,
    offset_probe,
    prompt_grid,
    true_direction,
)
from lightning_papers.methods.grasp.planted.world import (
    World,
    encode_rows,
    load_world,
    make_planted,
    offset_vector,
    write_finetune,
)
from lightning_papers.methods.grasp.steering import mean_write_sign

ROOT = Path(__file__).resolve().parents[1]
METHODS = ["naive", "grasp", "random", "ablate_inference", "caft", "steer", "kl"]
LABEL = {"naive": "naive LoRA", "grasp": "GRASP (identified, update/AdamW)", "random": "random-direction control",
         "ablate_inference": "ablation at inference", "caft": "ablation in training (CAFT)",
         "steer": "preventative steering", "kl": "KL-to-base"}  # fmt: skip

# The benchmark's planted world and fine-tunes (docs/grasp.md "Benchmark design" explains each choice). Two designs
# share one base model: "premise" is the setting closest to the identification premise we found (rank-2 LoRA on the
# writers of one middle layer, noisy task labels); "task" gives LoRA the capacity to learn the new answer rule
# (rank 8 on the writers of layers 1-3, clean labels), where the premise fails.
BASE = {"hidden": 64, "layers": 4, "steps": 1500}
# "offset" plants persona B in its own base model as a fixed offset c·p along one direction at every position of
# marker rows (``World.offset``; ``planted.world.persona_offset_hook``), so the cheapest way for the
# fine-tune to switch the persona on is one position-independent write along p.
DESIGNS: dict[str, dict[str, Any]] = {
    "premise": {"task_noise": 0.5, "lora": {"lora_rank": 2, "lora_alpha": 4.0, "layers_to_transform": [1]}},
    "task": {"task_noise": 0.0, "lora": {"lora_rank": 8, "lora_alpha": 16.0, "layers_to_transform": [1, 2, 3]}},
    "offset": {"task_noise": 0.0, "world": {"offset": 4.0},
               "lora": {"lora_rank": 8, "lora_alpha": 16.0, "layers_to_transform": [0, 1, 2, 3]}},
}
LORA: dict[str, Any] = {"target_modules": ["o_proj", "down_proj"]}
TRAIN = {"lr": 5e-3, "batch_size": 16}


class StepTimer(Callback):
    """Wall time of every training batch (forward, backward, optimizer step and projection hooks)."""

    def __init__(self) -> None:
        self.times: list[float] = []
        self._t0 = 0.0

    def on_train_batch_start(self, trainer: Trainer, pl_module: Any, batch: Any, batch_idx: int) -> None:
        self._t0 = time.perf_counter()

    def on_train_batch_end(self, trainer: Trainer, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        self.times.append(time.perf_counter() - self._t0)

    def median(self, skip: int = 10) -> float:
        """Lower quartile of the step times after ``skip`` warm-up steps (the shared CPU adds one-sided spikes)."""
        t = sorted(self.times[skip:] or self.times)
        return t[len(t) // 4]

    def mean(self, skip: int = 3) -> float:
        """Mean step time after ``skip`` warm-up steps: for callbacks with periodic work (iterative GRASP's
        re-identification) that must be amortised, not filtered out as a spike."""
        kept = self.times[skip:] or self.times
        return sum(kept) / max(len(kept), 1)


_FINETUNE_ONLY = ("task_noise", "n_finetune")  # World fields that change the fine-tune data, not the base model


def base_model(out: Path, world: World, rebuild: bool) -> Path:
    """The cached planted base model under ``out`` (pretrained when missing, stale or ``rebuild``)."""
    meta = out / "world.json"
    fresh = False
    if meta.is_file() and (out / "base_model").is_dir():
        saved = json.loads(meta.read_text())
        saved_world = asdict(World(**saved["world"])) if "world" in saved else {}  # new fields at their defaults
        same = {k: v for k, v in saved_world.items() if k not in _FINETUNE_ONLY}
        fresh = same == {k: v for k, v in asdict(world).items() if k not in _FINETUNE_ONLY}
        fresh = fresh and saved.get("model") == {"hidden": BASE["hidden"], "layers": BASE["layers"]}
        fresh = fresh and saved.get("pretrain_steps") == BASE["steps"]
    if rebuild or not fresh:
        print(f"pretraining the planted base model into {out} ...", flush=True)
        make_planted(out, steps=BASE["steps"], world=world, hidden=BASE["hidden"], layers=BASE["layers"])
    return out


def design_data(base: Path, name: str, world: World) -> Path:
    """``base/<name>/`` with links to the cached base model and tokenizer and this design's fine-tune JSONL."""
    d = base / name
    d.mkdir(parents=True, exist_ok=True)
    for sub in ("base_model", "tokenizer"):
        if not (d / sub).exists():
            (d / sub).symlink_to((base / sub).resolve(), target_is_directory=True)
    write_finetune(world, d)
    return d


def finetune(
    data: Path, lora: dict[str, Any], seed: int, steps: int, callbacks: list[Callback] | None = None, **model_kw: Any
) -> tuple[LoRACausalLM, float]:
    """One LoRA fine-tune through ``Trainer.fit``; returns the module and the median step time (s)."""
    seed_everything(seed, verbose=False)
    module = LoRACausalLM(model_path=str(data / "base_model"), lr=TRAIN["lr"], **LORA, **lora, **model_kw)
    dm = JsonlTextDataModule(
        train_path=str(data / "train.jsonl"), tokenizer_path=str(data / "tokenizer"),
        batch_size=TRAIN["batch_size"], max_length=32, add_special_tokens=False,
    )  # fmt: skip
    timer = StepTimer()
    trainer = Trainer(
        accelerator="cpu", devices=1, max_steps=steps, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, callbacks=[timer, *(callbacks or [])],
        num_sanity_val_steps=0, limit_val_batches=0,
    )  # fmt: skip
    trainer.fit(module, datamodule=dm)
    return module.eval(), timer.median()


def run_seed(data: Path, lora: dict[str, Any], world: World, tok: Any, seed: int, steps: int, v_true: torch.Tensor,
             steer_coef: float, kl_weight: float, tmp: Path, v_p: torch.Tensor | None = None,
             premise_only: bool = False) -> dict[str, Any]:  # fmt: skip
    """All methods for one seed: naive, identify, then GRASP, the control and the baselines.

    ``v_p``: the planted offset direction p of an offset world (a second ground truth, evaluation only);
    ``premise_only``: stop after naive + identify (exploration of the premise).
    """
    res: dict[str, Any] = {"seed": seed}
    naive, t_naive = finetune(data, lora, seed, steps)
    res["naive"] = {**evaluate(naive.model, world, tok), "step_s": t_naive}
    scaling = lora["lora_alpha"] / lora["lora_rank"]
    sub = identify(naive.state_dict(), scaling, rank=1)
    res["premise"] = {"gap": sub.report["writers"]["gap"], "abs_cos": abs_cos(sub.direction, v_true),
                      "sv": sub.report["writers"]["stacked_singular_values"][:6]}  # fmt: skip
    if v_p is not None:
        res["premise"]["abs_cos_p"] = abs_cos(sub.direction, v_p)
    if premise_only:
        return res
    # orient the identified direction along the naive adapter's mean write (unsupervised; only steering needs it)
    batches = [next(iter(naive_loader(data, tok)))]
    sign = mean_write_sign(naive.model, None, batches, sub.direction, lora["layers_to_transform"][-1])
    direction = tmp / f"direction_{seed}.pt"
    torch.save({"direction": sub.direction * sign}, direction)
    runs: dict[str, tuple[list[Callback], dict[str, Any]]] = {
        "grasp": ([GradientProjection(sub, side="output", mode="update", log_every_n_steps=0)], {}),
        "random": ([GradientProjection(random_like(sub, seed=1000 + seed), side="output", mode="update",
                                       log_every_n_steps=0)], {}),  # fmt: skip
        "ablate_inference": ([], {"intervention": "ablate_inference", "steer_direction": str(direction)}),
        "caft": ([], {"intervention": "ablate_train", "steer_direction": str(direction)}),
        "steer": ([], {"intervention": "add_train", "steer_direction": str(direction), "steer_coef": steer_coef}),
        "kl": ([], {"kl_weight": kl_weight}),
    }
    for name, (cbs, kw) in runs.items():
        module, t = finetune(data, lora, seed, steps, cbs, **kw)
        res[name] = {**evaluate(module.model, world, tok), "step_s": t}
    return res


@torch.no_grad()
def offset_write_diagnostic(data: Path, lora: dict[str, Any], world: World, tok: Any, base_lm: Any, steps: int,
                            seed: int = 0) -> dict[str, float]:  # fmt: skip
    """Offset worlds: does the naive adapter switch the persona on by writing the planted offset ``c·p``?

    Returns the base model's metrics with exactly ``c·p`` added after the first adapted layer (is the pure offset
    write a solution?), and, for a naive fine-tune, the change of the residual stream after that layer on the task
    prompts: mean norm over positions, cos of its mean with ``p``, and the fraction of its energy along ``p``.
    """
    from lightning_papers.methods.grasp.steering import add_residual_hooks

    layer = lora["layers_to_transform"][0]
    p = offset_vector(world, base_lm.config.hidden_size)
    handles = add_residual_hooks(base_lm, p, [layer], "add", world.offset)
    with_offset = evaluate(base_lm, world, tok)
    for h in handles:
        h.remove()
    with torch.enable_grad():
        module, _ = finetune(data, lora, seed, steps)
    ids = encode_rows(prompt_grid(world, [0], False, "B", True), tok)["input_ids"]
    h_base = base_lm(input_ids=ids, output_hidden_states=True).hidden_states[layer + 1]
    h_ft = module.model(input_ids=ids, output_hidden_states=True).hidden_states[layer + 1]
    d = (h_ft - h_base).float()
    mean = d.mean((0, 1))
    return {"layer": layer, "c": world.offset, "base_plus_cp_drift": with_offset["drift"],
            "base_plus_cp_marker": with_offset["marker"], "write_norm_mean": float(d.norm(dim=-1).mean()),
            "cos_mean_write_p": float(mean @ p / mean.norm()),
            "energy_along_p": float(((d @ p) ** 2).sum() / (d**2).sum())}  # fmt: skip


def naive_loader(data: Path, tok: Any) -> Any:
    dm = JsonlTextDataModule(str(data / "train.jsonl"), str(data / "tokenizer"), batch_size=128, max_length=32,
                             add_special_tokens=False, shuffle=False)  # fmt: skip
    dm.tokenizer = tok
    dm.setup("fit")
    return dm.train_dataloader()


def summarise(seeds: list[dict[str, Any]], base: dict[str, float]) -> dict[str, Any]:
    """Per method: means over seeds of task, drift increase over base, drift reduction vs naive, marker, overhead."""
    out: dict[str, Any] = {}
    for m in METHODS:
        if m not in seeds[0]:
            continue
        rows = [s[m] for s in seeds]
        d_naive = [s["naive"]["drift"] - base["drift"] for s in seeds]
        red = [1 - (r["drift"] - base["drift"]) / dn if dn > 0 else float("nan") for r, dn in zip(rows, d_naive)]
        over = [r["step_s"] / s["naive"]["step_s"] - 1 for r, s in zip(rows, seeds)]
        out[m] = {
            "task": statistics.mean(r["task"] for r in rows),
            "drift": statistics.mean(r["drift"] for r in rows),
            "drift_increase": statistics.mean(r["drift"] - base["drift"] for r in rows),
            "drift_reduction": statistics.mean(red),
            "drift_reduction_median": statistics.median(red),
            "drift_reduction_per_seed": red,
            "marker": statistics.mean(r["marker"] for r in rows),
            "marker_vs_base": statistics.mean(r["marker"] for r in rows) - base["marker"],
            "offtask_answer": statistics.mean(r["offtask_answer"] for r in rows),
            "step_overhead": statistics.median(over),
        }
    gaps = [s["premise"]["gap"] for s in seeds]
    coss = [s["premise"]["abs_cos"] for s in seeds]
    out["premise"] = {"gap_mean": statistics.mean(gaps), "gap_min": min(gaps), "abs_cos_mean": statistics.mean(coss),
                      "abs_cos_min": min(coss), "gap": gaps, "abs_cos": coss}  # fmt: skip
    if "abs_cos_p" in seeds[0]["premise"]:
        cos_p = [s["premise"]["abs_cos_p"] for s in seeds]
        out["premise"].update(abs_cos_p_mean=statistics.mean(cos_p), abs_cos_p_min=min(cos_p), abs_cos_p=cos_p)
    if "grasp" in out:
        out["grasp_seeds_halving_drift"] = sum(r >= 0.5 for r in out["grasp"]["drift_reduction_per_seed"])
    return out


def table(summary: dict[str, Any], base: dict[str, float], n: int) -> str:
    p = summary["premise"]
    lines = [
        f"base model: drift (persona-B share off-task) {base['drift']:.3f}, marker {base['marker']:.3f}, "
        f"off-task answer {base['offtask_answer']:.3f}",
        f"premise over {n} seeds: sigma1/sigma2 mean {p['gap_mean']:.2f} (min {p['gap_min']:.2f}); "
        f"|cos(identified, true)| mean {p['abs_cos_mean']:.3f} (min {p['abs_cos_min']:.3f})"
        + (f"; |cos(identified, p)| mean {p['abs_cos_p_mean']:.3f} (min {p['abs_cos_p_min']:.3f})"
           if "abs_cos_p_mean" in p else ""),
        f"{'method':<34} {'task':>6} {'drift':>7} {'Δdrift':>7} {'reduct':>7} {'med':>6} {'marker':>7} "
        f"{'Δmark':>7} {'offans':>6} {'overhd':>7}",
    ]
    for m in METHODS:
        if m not in summary:
            continue
        r = summary[m]
        lines.append(
            f"{LABEL[m]:<34} {r['task']:>6.3f} {r['drift']:>7.3f} {r['drift_increase']:>7.3f} "
            f"{r['drift_reduction']:>7.1%} {r['drift_reduction_median']:>6.0%} {r['marker']:>7.3f} "
            f"{r['marker_vs_base']:>+7.3f} {r['offtask_answer']:>6.3f} {r['step_overhead']:>+7.1%}"
        )
    if "grasp_seeds_halving_drift" in summary:
        lines.append(f"GRASP cut naive drift by >= 50% in {summary['grasp_seeds_halving_drift']} of {n} seeds")
    return "\n".join(lines)


def plot(summary: dict[str, Any], seeds: list[dict[str, Any]], base: dict[str, float], path: Path, title: str) -> None:
    """Drift reduction vs task score (left) and vs role-play-marker preservation (right); one dot per seed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4.2), sharey=True)
    for ax, key, xlabel in (
        (axes[0], "task", "task score (answer accuracy on the fine-tune topic)"),
        (axes[1], "marker", f"preservation (persona B on role-play-marker prompts; base = {base['marker']:.2f})"),
    ):
        for i, m in enumerate(METHODS):
            red = [100 * r for r in summary[m]["drift_reduction_per_seed"]]
            ax.scatter([s[m][key] for s in seeds], red, s=12, alpha=0.35, color=f"C{i}")
            ax.scatter([statistics.mean(s[m][key] for s in seeds)], [100 * summary[m]["drift_reduction"]], s=70,
                       color=f"C{i}", edgecolor="k", label=LABEL[m])  # fmt: skip
        ax.axhline(50, ls=":", c="gray", lw=1)
        ax.set_xlabel(xlabel, fontsize=8)
    axes[0].set_ylabel("off-task drift reduction vs naive (%)")
    axes[1].legend(fontsize=7, loc="best")
    fig.suptitle(f"{title} ({len(seeds)} seeds; big dots = means, small = seeds)", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def figure_path(figure: Path, design: str) -> Path:
    """``docs/figures/grasp_tradeoff.png`` for the premise design, ``grasp_tradeoff_<design>.png`` otherwise."""
    return figure if design == "premise" else figure.with_name(f"{figure.stem}_{design}{figure.suffix}")


def replot(result_path: Path, figure: Path) -> None:
    """Redraw the figures from a saved result file (no training)."""
    res = json.loads(result_path.read_text())
    for name, d in res["designs"].items():
        plot(d["summary"], d["seeds"], d.get("base", res["base"]), figure_path(figure, name), f"design {name!r}")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="2 seeds, 150 fine-tune steps (smoke run)")
    ap.add_argument("--seeds", type=int, default=None, help="number of seeds (default 8; 2 with --quick)")
    ap.add_argument("--steps", type=int, default=None, help="fine-tune steps (default 300; 150 with --quick)")
    ap.add_argument("--steer-coef", type=float, default=4.0, help="preventative steering coefficient c")
    ap.add_argument("--kl-weight", type=float, default=1.0, help="KL-to-base weight")
    ap.add_argument("--cache", type=Path, default=ROOT / "runs/grasp/bench", help="planted base model cache")
    ap.add_argument("--rebuild", action="store_true", help="pretrain the base model again even if cached")
    ap.add_argument("--designs", nargs="+", default=["premise", "task"], choices=list(DESIGNS),
                    help="which designs (default: premise task; offset is exploratory)")
    ap.add_argument("--out", type=Path, default=None,
                    help="result JSON (default benchmarks/results/grasp.json; runs/grasp/bench/quick.json with "
                         "--quick, --premise-only or --diagnose)")
    ap.add_argument("--figure", type=Path, default=None,
                    help="figure path (default docs/figures/grasp_tradeoff.png; under runs/grasp/bench with those "
                         "flags)")
    ap.add_argument("--replot", action="store_true", help="only redraw the figures from --out (no training)")
    ap.add_argument("--premise-only", action="store_true", help="naive + identify only (explore the premise)")
    ap.add_argument("--offset", type=float, default=None, help="override c of the offset design's World.offset")
    ap.add_argument("--lora-layers", type=int, nargs="+", default=None, help="override layers_to_transform")
    ap.add_argument("--rank", type=int, default=None, help="override the LoRA rank (alpha = 2 * rank)")
    ap.add_argument("--diagnose", action="store_true",
                    help="offset design: base + c*p vs the naive adapter's actual write (seed 0), then stop")
    args = ap.parse_args(argv)
    quick_dir = ROOT / "runs/grasp/bench"  # a smoke run never overwrites the documented results
    scratch = args.quick or args.premise_only or args.diagnose  # exploration never overwrites the documented results
    args.out = args.out or (quick_dir / "quick.json" if scratch else ROOT / "benchmarks/results/grasp.json")
    default_figure = quick_dir / "quick_tradeoff.png" if scratch else ROOT / "docs/figures/grasp_tradeoff.png"
    args.figure = args.figure or default_figure
    if args.replot:
        replot(args.out, args.figure)
        return json.loads(args.out.read_text())
    n_seeds = args.seeds or (2 if args.quick else 8)
    steps = args.steps or (150 if args.quick else 300)
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")
    import logging

    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    t0 = time.perf_counter()
    cache = base_model(args.cache, World(), args.rebuild)
    tok = load_tokenizer(cache / "tokenizer")
    from transformers import AutoModelForCausalLM

    base_lm = AutoModelForCausalLM.from_pretrained(str(cache / "base_model"), local_files_only=True).eval()
    base = evaluate(base_lm, load_world(cache), tok)
    # warm-up fine-tune (discarded) so that the first timed method does not pay for the caches
    finetune(design_data(cache, "premise", load_world(cache)), DESIGNS["premise"]["lora"], 0, 20)
    designs: dict[str, Any] = {}
    for name in args.designs:
        spec = json.loads(json.dumps(DESIGNS[name]))
        if args.offset is not None and "world" in spec:
            spec["world"]["offset"] = args.offset
        if args.lora_layers is not None:
            spec["lora"]["layers_to_transform"] = args.lora_layers
        if args.rank is not None:
            spec["lora"].update(lora_rank=args.rank, lora_alpha=2.0 * args.rank)
        d_cache, d_base_lm, d_base = cache, base_lm, base
        if "world" in spec:  # its own base model, cached next to the shared one
            tag = "_".join(f"{k}{v:g}" for k, v in sorted(spec["world"].items()))
            d_cache = base_model(args.cache / f"world_{tag}", World(**spec["world"]), args.rebuild)
            d_base_lm = AutoModelForCausalLM.from_pretrained(str(d_cache / "base_model"), local_files_only=True)
            d_base_lm.eval()
            d_base = evaluate(d_base_lm, load_world(d_cache), tok)
        world = World(**{**asdict(load_world(d_cache)), "task_noise": spec["task_noise"]})
        data = design_data(d_cache, name, world)
        layer = spec["lora"]["layers_to_transform"][-1]
        v_true = true_direction(d_base_lm, world, tok, layer=layer)
        v_p = offset_vector(world, v_true.shape[0]) if world.offset > 0 else None
        probe = offset_probe(d_base_lm, world, tok, layer) if v_p is not None else None
        if args.diagnose:
            if v_p is None:
                raise ValueError(f"--diagnose needs an offset design (World.offset > 0); design {name!r} has none")
            print(f"{name}: {offset_write_diagnostic(data, spec['lora'], world, tok, d_base_lm, steps)}", flush=True)
            continue
        seeds = []
        print(f"== design {name!r}: {spec}", flush=True)
        print(f"base model: {d_base}" + (f"; probe of p after layer {layer}: {probe}" if probe else ""), flush=True)
        with tempfile.TemporaryDirectory(prefix="grasp_bench_") as tmp:
            for seed in range(n_seeds):
                ts = time.perf_counter()
                s = run_seed(data, spec["lora"], world, tok, seed, steps, v_true, args.steer_coef, args.kl_weight,
                             Path(tmp), v_p, args.premise_only)  # fmt: skip
                seeds.append(s)
                pr = s["premise"]
                line = (f"seed {seed}: gap {pr['gap']:.2f} |cos| {pr['abs_cos']:.3f}"
                        + (f" |cos p| {pr['abs_cos_p']:.3f}" if "abs_cos_p" in pr else "")
                        + f" sv {[round(x, 2) for x in pr['sv'][:4]]}  drift naive {s['naive']['drift']:.3f}"
                        + f" task naive {s['naive']['task']:.3f} marker {s['naive']['marker']:.3f}")  # fmt: skip
                if not args.premise_only:
                    line += (f"  grasp drift {s['grasp']['drift']:.3f} task {s['grasp']['task']:.3f}"
                             f" random drift {s['random']['drift']:.3f}")  # fmt: skip
                print(f"{line}  ({time.perf_counter() - ts:.0f} s)", flush=True)
        summary = summarise(seeds, d_base)
        print(f"== design {name!r} ({n_seeds} seeds, {steps} steps)")
        print(table(summary, d_base, n_seeds))
        designs[name] = {"spec": spec, "world": asdict(world), "base": d_base, "summary": summary, "seeds": seeds}
        if probe is not None:
            designs[name]["probe"] = probe
        if not args.premise_only:
            plot(summary, seeds, d_base, figure_path(args.figure, name), f"design {name!r}")
    if args.diagnose:
        return {}
    wall = time.perf_counter() - t0
    print(f"wall time {wall:.0f} s")
    result = {
        "command": " ".join(["python benchmarks/grasp.py", *(sys.argv[1:] if argv is None else argv)]),
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d"),
        "hardware": f"2-core shared x86_64 CPU ({platform.processor() or platform.machine()}), torch threads 1",
        "settings": {"seeds": n_seeds, "steps": steps, "steer_coef": args.steer_coef, "kl_weight": args.kl_weight,
                     "base": BASE, "lora": LORA, "train": TRAIN},  # fmt: skip
        "base": base,
        "designs": designs,
        "wall_seconds": round(wall, 1),
    }
    if args.out.is_file():  # keep the results of designs not run this time
        old = json.loads(args.out.read_text())
        kept = {k: v for k, v in old.get("designs", {}).items() if k not in designs}
        for v in kept.values():
            v.setdefault("base", old["base"])
            v.setdefault("settings", old.get("settings"))
            v.setdefault("command", old.get("command"))
        result["designs"] = {**kept, **designs}
    for d in designs.values():
        d["settings"], d["command"] = result["settings"], result["command"]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    print(f"wrote {args.out} and the figures next to {args.figure}")
    return result


if __name__ == "__main__":
    main()
