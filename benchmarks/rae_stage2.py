"""RAE stage 2 benchmark (RAEv2, arXiv 2605.18324, Sec. 4): training efficiency (EP@k), guidance at equal NFE,
throughput. Orderings at CPU scale only; never a gFID.

Every training run is ``lightning-papers fit --config configs/rae/dit_debug.yaml`` with overrides (the same
RAEDiTModule, LatentCacheDataModule, EMA callback and validation), on sklearn's digits (32 px):

a  EP@k (the paper's EP_FID@k analogue): optimizer steps until FD_eval (features of the cache's independent
   classifier, 150 class-balanced samples, 50 Euler steps, no guidance, EMA weights) is at most k times its
   real-vs-real floor at the same sample count (k in ``--thresholds``; the issue's k = 2 first), evaluated every
   ``--eval-every`` steps up to ``--max-steps``; for three recipes from the same images, DiT-DH-XS, batch 32 and
   budget:
     raev2   latent = mean of the E-sup encoder's last 3 of 6 blocks, x-prediction, in-context conditioning,
             IG/REPA head (``dit_debug.yaml`` as it is)
     v1      latent = the last block only (``decoder_v1_latent.yaml``), v-prediction, adaLN, no IG head (RAE v1)
     pixels  the raev2 recipe on 4 x 4 pixel patches (``cache --pixels 4``: 48 x 8 x 8, no encoder)
   A run stops when the smallest k is reached or at ``--max-steps``; a k not reached is reported as None (> max).
b  Guidance, on each seed's raev2 model where its run stopped: none / CFG / AutoGuidance (guide = the same run's
   EMA model at a quarter of its steps: shorter-trained, as Karras et al. 2024 prescribe) / REPA head / IG + CFG,
   at equal NFE (50) and at each mode's own 50 steps; REPA scale s and t_min sweeps.
c  Throughput: training images/s (optimizer steps only) and sampling images/s (50 Euler steps, no guidance) of
   DiT-DH-XS on this CPU, from the runs above; ``--tier gpu`` measures DiT-DH-S / B (head 2048) on synthetic
   ImageNet-256 DINOv2-B-shaped latents (768 x 16 x 16) in bf16 with and without ``torch.compile``
   (``--tier gpu --device cpu --sizes xs --latent 96 8 8 --no-compile`` smoke-tests that code path on a CPU).

    .venv/bin/python benchmarks/rae_stage2.py              # CPU tier, one process (about 2 h on a shared CPU)
    # or split over two cores and merged (what docs/rae.md reports):
    .venv/bin/python benchmarks/rae_stage2.py --recipes raev2 --out benchmarks/results/rae_stage2_a.json &
    .venv/bin/python benchmarks/rae_stage2.py --recipes v1 pixels --out benchmarks/results/rae_stage2_b.json
    .venv/bin/python benchmarks/rae_stage2.py --merge benchmarks/results/rae_stage2_a.json \
        benchmarks/results/rae_stage2_b.json
    .venv/bin/python benchmarks/rae_stage2.py --quick      # smoke run: 1 seed, 60 steps, 2 guidance modes
    .venv/bin/python benchmarks/rae_stage2.py --tier gpu   # throughput on one GPU (writes rae_stage2_gpu.json)

Missing stage-1 checkpoints and caches are made first with the documented commands (``docs/rae.md``).
Writes ``benchmarks/results/rae_stage2.json`` and ``docs/figures/rae_stage2_ep.png``.
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import shutil
import statistics
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import Callback

from lightning_papers.cli import cli_main

ROOT = Path(__file__).resolve().parents[1]
FIG = ROOT / "docs" / "figures"
LATENTS = ROOT / "runs" / "rae" / "latents"
EMA = [{"class_path": "lightning.pytorch.callbacks.EMAWeightAveraging", "init_args": {"decay": 0.995}}]
RECIPES: dict[str, dict[str, Any]] = {
    "raev2": {"cache": "digits_esup", "model": {}},
    "v1": {"cache": "digits_esup_k1",
           "model": {"transport.prediction": "v", "dit_overrides": {"conditioning": "adaln", "ig_head": False}}},
    "pixels": {"cache": "digits_pixels", "model": {}},
}  # fmt: skip


def run(cmd: list[str]) -> None:
    print("[rae_stage2] $", " ".join(cmd), flush=True)
    subprocess.run(cmd, cwd=ROOT, check=True)


def ensure_caches() -> None:
    """The three latent caches, made with the documented commands when missing; one FD_eval classifier for all."""
    py, cli = sys.executable, str(Path(sys.executable).with_name("lightning-papers"))
    for cfg, name in (("decoder_debug", "digits_esup"), ("decoder_v1_latent", "digits_esup_k1")):
        ckpt = f"runs/rae/{cfg}/checkpoints/last.ckpt"
        if not (ROOT / ckpt).is_file():
            run([cli, "fit", "--config", f"configs/rae/{cfg}.yaml", "--trainer.logger", "false"])
        if not (LATENTS / name / "train").is_dir():
            extra = [] if name == "digits_esup" else ["--classifier_steps", "0"]
            run([py, "-m", "lightning_papers.methods.rae.cache", "--config", f"configs/rae/{cfg}.yaml",
                 "--ckpt_path", ckpt, "--out", f"runs/rae/latents/{name}", "--overwrite", *extra])  # fmt: skip
    if not (LATENTS / "digits_pixels" / "train").is_dir():
        run([py, "-m", "lightning_papers.methods.rae.cache", "--config", "configs/rae/decoder_debug.yaml",
             "--pixels", "4", "--out", "runs/rae/latents/digits_pixels", "--overwrite", "--classifier_steps", "0"])
    for name in ("digits_esup_k1", "digits_pixels"):  # the same feature space for every recipe's FD_eval
        shutil.copy(LATENTS / "digits_esup" / "eval_classifier.pt", LATENTS / name / "eval_classifier.pt")


class Recorder(Callback):
    """Collect each validation's scores (EMA weights: this callback sits before the EMA callback, so its
    validation-end hook runs before the EMA weights are swapped back), snapshot those weights, stop at the
    threshold, and time the training steps."""

    def __init__(self, thresholds: list[float], extra_repa: bool) -> None:
        self.thresholds, self.extra_repa = sorted(thresholds), extra_repa
        self.history: list[dict[str, float]] = []
        self.snapshots: dict[int, dict[str, torch.Tensor]] = {}
        self.train_seconds, self.train_steps, self._t0 = 0.0, 0, 0.0
        self.reached: dict[float, int | None] = {k: None for k in self.thresholds}

    def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int) -> None:
        self._t0 = time.perf_counter()

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        self.train_seconds += time.perf_counter() - self._t0
        self.train_steps += 1

    def on_validation_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        if trainer.sanity_checking or not pl_module.last_scores:
            return
        step = trainer.global_step
        row = {"step": step, **{k: float(v) for k, v in pl_module.last_scores.items()}}
        if self.extra_repa:  # the same samples' seed with the REPA head's guidance (one pass per step)
            row["repa"] = guided_scores(pl_module, {"mode": "repa"}, 50, pl_module.hparams.eval_per_class)
        self.history.append(row)
        self.snapshots[step] = {k: v.detach().clone() for k, v in pl_module.model.state_dict().items()}
        print(f"[rae_stage2] step {step}: FD_eval {row['fd_eval']:.2f} (floor {row['fd_floor']:.2f}, ratio "
              f"{row['fd_ratio']:.2f}), accuracy {row['accuracy']:.3f}", flush=True)  # fmt: skip
        for k in self.thresholds:
            if self.reached[k] is None and row["fd_ratio"] <= k:
                self.reached[k] = step
        if self.reached[self.thresholds[0]] is not None:
            trainer.should_stop = True


def guided_scores(module: Any, guidance: dict[str, Any], steps: int, per_class: int,
                  guide: torch.nn.Module | None = None, seed: int = 777) -> dict[str, float]:  # fmt: skip
    """Sample with ``guidance`` in ``steps`` Euler steps, decode, score; NFE and sampling images/s included."""
    from lightning_papers.methods.rae.guidance import GuidanceConfig

    labels = torch.arange(module.model.num_classes).repeat_interleave(per_class)
    old_steps = module.transport.sample_steps
    module.transport.sample_steps = steps
    was_training = module.model.training
    module.model.eval()
    start = time.perf_counter()
    try:
        latents, nfe = module.generate(labels, GuidanceConfig(**guidance), seed=seed, guide_model=guide)
    finally:
        module.transport.sample_steps = old_steps
        module.model.train(was_training)
    seconds = time.perf_counter() - start
    images = module.evaluator.decode(latents)
    scores = module.evaluator.score(latents, labels, images)
    return {**scores, "nfe": nfe, "steps": steps, "sample_images_per_s": len(labels) / seconds}


def fit_recipe(recipe: str, seed: int, args: argparse.Namespace) -> tuple[dict[str, Any], Any, Recorder]:
    spec, cache = RECIPES[recipe], LATENTS / RECIPES[recipe]["cache"]
    cli_args = ["--config", str(ROOT / "configs/rae/dit_debug.yaml"), "--trainer.logger", "false",
                "--trainer.callbacks", json.dumps(EMA), "--trainer.enable_checkpointing", "false",
                "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
                "--trainer.default_root_dir", str(ROOT / "runs/rae/bench_stage2"),
                "--trainer.max_steps", str(args.max_steps), "--trainer.val_check_interval", str(args.eval_every),
                "--seed_everything", str(seed), "--model.init_args.seed", str(seed),
                "--model.init_args.guidance.mode", "none", "--model.init_args.eval_per_class", str(args.per_class),
                "--data.init_args.root", str(cache / "train"), "--data.init_args.val_root", str(cache / "val"),
                "--data.init_args.seed", str(seed)]  # fmt: skip
    for key, value in spec["model"].items():
        cli_args += [f"--model.init_args.{key}", value if isinstance(value, str) else json.dumps(value)]
    cli = cli_main(cli_args, run=False)
    recorder = Recorder(args.thresholds, extra_repa=cli.model.dit_config.ig_head and not args.quick)
    cli.trainer.callbacks.insert(0, recorder)
    start = time.perf_counter()
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    wall = time.perf_counter() - start
    batch = cli.datamodule.hparams.batch_size
    result = {"recipe": recipe, "seed": seed, "ep_steps": {str(k): v for k, v in recorder.reached.items()},
              "max_steps": args.max_steps,
              "final_step": cli.trainer.global_step, "history": recorder.history, "wall_s": wall,
              "train_images_per_s": batch * recorder.train_steps / max(recorder.train_seconds, 1e-9)}  # fmt: skip
    print(f"[rae_stage2] {recipe} seed {seed}: EP@k steps {result['ep_steps']} ({wall:.0f} s)", flush=True)
    return result, cli.model, recorder


def guidance_study(module: Any, recorder: Recorder, args: argparse.Namespace) -> list[dict[str, Any]]:
    """Part b on one trained raev2 model (its last EMA snapshot; AutoGuidance's guide: the snapshot nearest a
    quarter of its steps)."""
    steps = sorted(recorder.snapshots)
    module.model.load_state_dict(recorder.snapshots[steps[-1]])
    guide = copy.deepcopy(module.model)
    quarter = min(steps, key=lambda s: abs(s - steps[-1] / 4))
    guide.load_state_dict(recorder.snapshots[quarter])
    guide.eval()
    n = args.per_class
    grid: list[tuple[str, dict[str, Any], int]] = [
        ("none", {"mode": "none"}, 50),
        ("repa s=1.78 [0.1,1]", {"mode": "repa"}, 50),
        ("cfg 1.5", {"mode": "cfg", "scale": 1.5}, 25),
        ("cfg 3.0", {"mode": "cfg", "scale": 3.0}, 25),
        ("autoguidance 1.42", {"mode": "autoguidance", "scale": 1.42}, 25),
        ("autoguidance 2.5", {"mode": "autoguidance", "scale": 2.5}, 25),
        ("repa+cfg 1.5", {"mode": "repa_cfg", "scale": 1.5}, 25),
        ("cfg 1.5", {"mode": "cfg", "scale": 1.5}, 50),
        ("cfg 3.0", {"mode": "cfg", "scale": 3.0}, 50),
        ("autoguidance 1.42", {"mode": "autoguidance", "scale": 1.42}, 50),
        ("repa+cfg 1.5", {"mode": "repa_cfg", "scale": 1.5}, 50),
        *[(f"repa s={s} [0.1,1]", {"mode": "repa", "repa_scale": s}, 50) for s in (1.0, 2.5, 3.5)],
        *[(f"repa s=1.78 [{t},1]", {"mode": "repa", "repa_interval": (t, 1.0)}, 50) for t in (0.0, 0.3, 0.5)],
    ]
    if args.quick:
        grid = grid[:2]
    rows = []
    for name, guidance, k in grid:
        scores = guided_scores(module, guidance, k, n, guide=guide if guidance["mode"] == "autoguidance" else None)
        rows.append({"name": name, "guidance": guidance, "guide_step": quarter, "model_step": steps[-1], **scores})
        print(f"[rae_stage2]   {name:24s} steps {k:3d} NFE {scores['nfe']:3d}: FD_eval {scores['fd_eval']:.2f} "
              f"acc {scores['accuracy']:.3f}", flush=True)  # fmt: skip
    return rows


def mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def summarise(runs: list[dict[str, Any]], guidance: list[dict[str, Any]], args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {"ep": {}, "guidance": {}}
    for recipe in RECIPES:
        rs = [r for r in runs if r["recipe"] == recipe]
        if not rs:
            continue
        last = [r["history"][-1] for r in rs]
        out["ep"][recipe] = {
            "ep_steps": {k: [r["ep_steps"][k] for r in rs] for k in rs[0]["ep_steps"]},
            "best_fd_ratio": mean_std([min(h["fd_ratio"] for h in r["history"]) for r in rs]),
            "fd_ratio_at_stop": mean_std([h["fd_ratio"] for h in last]),
            "accuracy_at_stop": mean_std([h["accuracy"] for h in last]),
            "train_images_per_s": mean_std([r["train_images_per_s"] for r in rs]),
        }
        if all("repa" in h for r in rs for h in r["history"]):  # the same evaluations with the IG head's guidance
            out["ep"][f"{recipe} + REPA guidance"] = {
                "ep_steps": {k: [next((h["step"] for h in r["history"] if h["repa"]["fd_ratio"] <= float(k)), None)
                                 for r in rs] for k in rs[0]["ep_steps"]},
                "best_fd_ratio": mean_std([min(h["repa"]["fd_ratio"] for h in r["history"]) for r in rs]),
                "fd_ratio_at_stop": mean_std([h["repa"]["fd_ratio"] for h in last]),
                "accuracy_at_stop": mean_std([h["repa"]["accuracy"] for h in last]),
                "train_images_per_s": out["ep"][recipe]["train_images_per_s"],
            }  # fmt: skip
    none = {g["seed"]: g["fd_eval"] for g in guidance if g["name"] == "none" and g["steps"] == 50}
    order = list(dict.fromkeys((g["name"], g["steps"]) for g in guidance))  # the study's order
    for key in sorted(order, key=lambda k: (k[0].startswith("repa s=") and k[0] != "repa s=1.78 [0.1,1]",
                                            order.index(k))):  # fmt: skip
        gs = [g for g in guidance if (g["name"], g["steps"]) == key]
        paired = [g["fd_eval"] - none[g["seed"]] for g in gs if g["seed"] in none]
        out["guidance"][f"{key[0]} @{key[1]} steps"] = {
            "nfe": gs[0]["nfe"], "fd_eval": mean_std([g["fd_eval"] for g in gs]),
            "fd_minus_none": mean_std(paired) if paired else (float("nan"), 0.0),
            "fd_ratio": mean_std([g["fd_ratio"] for g in gs]), "accuracy": mean_std([g["accuracy"] for g in gs]),
            "kid": mean_std([g["kid"] for g in gs]), "precision": mean_std([g["precision"] for g in gs]),
            "recall": mean_std([g["recall"] for g in gs]),
            "sample_images_per_s": mean_std([g["sample_images_per_s"] for g in gs]),
        }  # fmt: skip
    return out


def markdown(summary: dict[str, Any]) -> str:
    """The EP@k and guidance tables of ``docs/rae.md`` (mean ± sd over seeds)."""

    def ms(v: tuple[float, float], fmt: str = ".2f") -> str:
        return f"{v[0]:{fmt}} ± {v[1]:{fmt}}"

    ks = next(iter(summary["ep"].values()))["ep_steps"]
    header = ["recipe", *(f"EP@{k} (steps)" for k in ks), "best FD_eval / floor", "sample accuracy at stop",
              "training images/s"]  # fmt: skip
    lines = ["| " + " | ".join(header) + " |", "|---" * len(header) + "|"]
    for recipe, e in summary["ep"].items():
        eps = [", ".join("—" if v is None else str(v) for v in steps) for steps in e["ep_steps"].values()]
        lines.append(f"| {recipe} | " + " | ".join(eps) + f" | {ms(e['best_fd_ratio'])} | "
                     f"{ms(e['accuracy_at_stop'], '.3f')} | {ms(e['train_images_per_s'], '.0f')} |")  # fmt: skip
    if summary["guidance"]:
        lines += ["", "| guidance | NFE | FD_eval | FD_eval − none (same seed) | FD_eval / floor | accuracy | KID | "
                  "precision | recall | images/s |", "|---" * 10 + "|"]  # fmt: skip
        for name, g in summary["guidance"].items():
            lines.append(f"| {name} | {g['nfe']} | {ms(g['fd_eval'])} | {ms(g['fd_minus_none'])} | "
                         f"{ms(g['fd_ratio'])} | "
                         f"{ms(g['accuracy'], '.3f')} | {ms(g['kid'])} | {ms(g['precision'])} | {ms(g['recall'])} | "
                         f"{ms(g['sample_images_per_s'], '.1f')} |")  # fmt: skip
    return "\n".join(lines)


def figure(runs: list[dict[str, Any]], thresholds: list[float], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(10, 3.8))
    colours = {"raev2": "C0", "v1": "C1", "pixels": "C2"}
    for r in runs:
        steps = [h["step"] for h in r["history"]]
        label = r["recipe"] if r["seed"] == runs[0]["seed"] else None
        ax.plot(steps, [h["fd_ratio"] for h in r["history"]], color=colours[r["recipe"]], alpha=0.8, label=label)
        ax2.plot(steps, [h["accuracy"] for h in r["history"]], color=colours[r["recipe"]], alpha=0.8, label=label)
        if all("repa" in h for h in r["history"]):
            ax.plot(steps, [h["repa"]["fd_ratio"] for h in r["history"]], color=colours[r["recipe"]], ls=":",
                    alpha=0.8, label=f"{r['recipe']} + REPA guidance" if label else None)  # fmt: skip
    for k in thresholds:
        ax.axhline(k, color="k", ls="--", lw=0.8)
    ax.set(yscale="log", xlabel="optimizer step", ylabel="FD_eval / real-vs-real floor", title="EP@k (dashed: k)")
    ax2.set(xlabel="optimizer step", ylabel="sample accuracy", title="class accuracy of samples (no guidance)")
    ax.legend()
    ax2.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def gpu_throughput(args: argparse.Namespace) -> None:
    """Part c, GPU tier: DiT-DH-S (RAE v1's, head 2048) / B training and sampling images/s on synthetic
    768 x 16 x 16 latents (DINOv2-B at 256 px), bf16 autocast, with and without ``torch.compile``."""
    from lightning_papers.methods.rae.dit import DiTDH, build_dit_config
    from lightning_papers.methods.rae.guidance import GuidanceConfig, sample
    from lightning_papers.methods.rae.transport import TransportConfig, training_loss

    dev = torch.device(args.device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--tier gpu needs a CUDA device (or --device cpu for a smoke run of this code path)")
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    shape, rows = tuple(args.latent), []
    for name in args.sizes:
        for compiled in (False, True) if args.compile else (False,):
            net = DiTDH(shape, 1000, build_dit_config(name)).to(dev)
            fwd = torch.compile(net) if compiled else net
            opt = torch.optim.AdamW(net.parameters(), lr=1e-4)
            cfg = TransportConfig(prediction=net.prediction, sample_steps=args.sample_steps)
            batch = args.batch
            x, y = torch.randn(batch, *shape, device=dev), torch.randint(0, 1000, (batch,), device=dev)
            times = []
            for _ in range(args.iters):
                sync()
                t0 = time.perf_counter()
                with torch.autocast(dev.type, dtype=torch.bfloat16):
                    loss = training_loss(fwd, x, y, cfg)["loss"]
                loss.backward()
                opt.step()
                opt.zero_grad(set_to_none=True)
                sync()
                times.append(time.perf_counter() - t0)
            train = batch / statistics.median(times[len(times) // 5:])
            sync()
            t0 = time.perf_counter()
            with torch.autocast(dev.type, dtype=torch.bfloat16):
                sample(fwd, y, shape, cfg, GuidanceConfig(mode="none"))
            sync()
            sampling = batch / (time.perf_counter() - t0)
            rows.append({"dit": name, "compile": compiled, "batch": batch, "train_images_per_s": train,
                         "sample_steps": args.sample_steps, "sample_images_per_s": sampling})  # fmt: skip
            print(rows[-1], flush=True)
    env = {"device": torch.cuda.get_device_name() if dev.type == "cuda" else platform.processor() or "cpu",
           "torch": torch.__version__,
           "date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "command": " ".join(sys.argv)}  # fmt: skip
    out = Path(args.out) if args.out != parser_default_out() else ROOT / "benchmarks/results/rae_stage2_gpu.json"
    out.write_text(json.dumps({"env": env, "rows": rows}, indent=1))
    print(f"[rae_stage2] wrote {out}")


def parser_default_out() -> str:
    return str(ROOT / "benchmarks/results/rae_stage2.json")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--tier", choices=("cpu", "gpu"), default="cpu")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--recipes", nargs="+", choices=sorted(RECIPES), default=list(RECIPES))
    parser.add_argument("--max-steps", type=int, default=2500)
    parser.add_argument("--eval-every", type=int, default=250)
    parser.add_argument("--per-class", type=int, default=15, help="samples per class in every evaluation")
    parser.add_argument("--thresholds", type=float, nargs="+", default=[2.0, 4.0, 8.0, 16.0],
                        help="EP@k: steps until FD_eval <= k x floor, for each k")
    parser.add_argument("--merge", nargs="+", default=None, help="merge result files of split runs into --out")
    parser.add_argument("--out", default=parser_default_out())
    gpu = parser.add_argument_group("--tier gpu (throughput on synthetic 768 x 16 x 16 latents)")
    gpu.add_argument("--device", default="cuda")
    gpu.add_argument("--sizes", nargs="+", default=["s_v1", "b"],
                     help="DiT-DH sizes (head width >= the token dimension: 2048 for DINOv2-B's 768)")
    gpu.add_argument("--latent", type=int, nargs=3, default=[768, 16, 16], metavar=("C", "H", "W"))
    gpu.add_argument("--batch", type=int, default=64)
    gpu.add_argument("--iters", type=int, default=25, help="timed training steps (the first fifth is warm-up)")
    gpu.add_argument("--sample-steps", type=int, default=50)
    gpu.add_argument("--no-compile", dest="compile", action="store_false", help="skip the torch.compile rows")
    args = parser.parse_args()
    if args.tier == "gpu":
        gpu_throughput(args)
        return
    if args.merge:
        parts = [json.loads(Path(f).read_text()) for f in args.merge]
        runs = [r for p in parts for r in p["runs"]]
        guidance = [g for p in parts for g in p["guidance"]]
        write(runs, guidance, args, {"merged": args.merge, "envs": [p["env"] for p in parts]})
        return
    torch.set_num_threads(1)
    if args.quick:
        args.seeds, args.max_steps, args.eval_every, args.per_class = args.seeds[:1], 60, 30, 3
    ensure_caches()
    runs, guidance = [], []
    for seed in args.seeds:
        for recipe in args.recipes:
            result, module, recorder = fit_recipe(recipe, seed, args)
            runs.append(result)
            if recipe == "raev2":
                guidance += [{"seed": seed, **g} for g in guidance_study(module, recorder, args)]
    write(runs, guidance, args, {})


def write(runs: list[dict[str, Any]], guidance: list[dict[str, Any]], args: argparse.Namespace,
          extra: dict[str, Any]) -> None:  # fmt: skip
    summary = summarise(runs, guidance, args)
    print(markdown(summary))
    env = {**extra, "machine": platform.machine(), "processor": platform.processor(), "torch": torch.__version__,
           "threads": torch.get_num_threads(), "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
           "command": " ".join(["python", *sys.argv])}  # fmt: skip
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"env": env, "args": vars(args), "summary": summary, "runs": runs,
                               "guidance": guidance}, indent=1, default=str))  # fmt: skip
    if not args.quick:
        figure(runs, args.thresholds, FIG / "rae_stage2_ep.png")
    print(f"[rae_stage2] wrote {out}")


if __name__ == "__main__":
    main()
