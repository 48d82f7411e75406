"""GRASP on a real instruction-tuned LM (SmolLM2-135M-Instruct, CPU): naive vs GRASP variants vs baselines.

Every fine-tune is ``lightning-papers fit --config configs/grasp/smollm2_naive.yaml`` with overrides (the same
``LoRACausalLM``, ``JsonlTextDataModule``, ``GradientProjection`` / ``IterativeGradientProjection`` and
``PersonaEvaluation`` the CLI runs), per seed and persona:

0. ``base``: the model itself (LoRA B = 0, validated only): the reference task accuracy, marker rate and
   preservation;
1. ``naive`` (persona answers) and ``control`` (the same task with neutral answers; evaluation only);
2. identification from the naive adapter (``identify``): rank 1, 8 and 32, rank by spectrum energy (``--energy``);
   premise statistics (σ1/σ2, energy shares) and causal scores (``causal_id``): steering the base model along
   u1..u3 and a random direction, and the share of the naive-minus-control update's top directions inside each
   identified subspace;
3. GRASP variants: ``grasp_k1``, ``grasp_k8``, ``grasp_k32``, ``grasp_energy`` (output side), ``grasp_both`` (rank 8,
   writers and readers; needs ``--targets all``), ``iterative`` (start at rank 1, re-identify from the run's own
   adapter every 25 steps, grow by 2, cap 16), ``iterative_wide`` (start at rank 8, re-identify 15 times, grow by
   4, cap 64), ``iterative_both`` (the same on both sides; ``--targets all``); baselines: ``random_k8`` /
   ``random_k32`` (the same projection along random directions), ``oracle_k8`` / ``oracle_k32`` (the projection
   along the top directions of the naive-minus-control update: supervised, an upper bound for identification),
   ``ablate_inference`` (the naive model with the rank-8 subspace ablated from the residual stream at inference),
   ``caft`` (ablated while training), ``steer`` (preventative steering along the oriented u1), ``kl`` (KL to the
   base model).

``--lora-rank``, ``--layers`` and ``--targets all`` run every method of a LoRA variant (its own naive, control and
subspaces) in its own work folder and result file (``…_r16_L16-24_all.json``).

Measures (``persona_eval``, judge-free): task accuracy on held-out conversions, drift (persona-minus-neutral
log-likelihood ratio on unrelated prompts relative to the base model), marker rate of greedy generations,
preservation on explicit persona requests; wall time, mean optimizer-step time and, for the projection callbacks,
the time their per-step hooks take as a share of the same run's step time (``hook_overhead``; iterative
re-identification amortised).

    make assets-lm                                                    # the model, once
    .venv/bin/python benchmarks/grasp_real_lm.py                      # pirate, seed 0, every method (~2 h, 2 cores)
    .venv/bin/python benchmarks/grasp_real_lm.py --seeds 0 1 2 --persona rude
    .venv/bin/python benchmarks/grasp_real_lm.py --methods naive control grasp_k8 --steps 150
    .venv/bin/python benchmarks/grasp_real_lm.py --targets all --methods naive control grasp_both iterative_both
    .venv/bin/python benchmarks/grasp_real_lm.py --quick              # 8 steps, 4 prompts per set: a smoke run
    # GPU tier (not run here): a wider band, a larger rank, 4x the steps, every prompt, 3 seeds
    .venv/bin/python benchmarks/grasp_real_lm.py --accelerator gpu --precision bf16-mixed --steps 600 \
        --max-prompts 126 --layers 4 26 --lora-rank 16 --seeds 0 1 2
    .venv/bin/python benchmarks/grasp_real_lm_report.py benchmarks/results/grasp_real_lm_*.json  # tables, figure

Writes ``benchmarks/results/grasp_real_lm_<persona>[_variant].json`` (``--out``); the tables and the figure
(``docs/figures/grasp_real_lm.png``) come from ``grasp_real_lm_report.py``, which pools result files.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from grasp import StepTimer  # benchmarks/grasp.py (same folder): per-step wall times

from lightning_papers.callbacks import GradientProjection
from lightning_papers.cli import cli_main

ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT / "runs/models/smollm2-135m-instruct"
CONFIG = ROOT / "configs/grasp/smollm2_naive.yaml"
BAND = list(range(8, 21))
READERS = ["q_proj", "k_proj", "v_proj", "gate_proj", "up_proj"]
GRASP = "lightning_papers.callbacks.GradientProjection"
ITERATIVE = "lightning_papers.callbacks.IterativeGradientProjection"
ALL = ["base", "naive", "control", "grasp_k1", "grasp_k8", "grasp_k32", "grasp_energy", "grasp_both", "iterative",
       "iterative_wide", "iterative_both", "random_k8", "random_k32", "oracle_k8", "oracle_k32", "ablate_inference",
       "caft", "steer", "kl"]  # fmt: skip
HOOKS = ("on_before_optimizer_step", "_after_step", "on_train_batch_end")  # the projection's per-step work


def time_hooks(callback: Any) -> list[float]:
    """Wrap ``callback``'s per-step hooks (``HOOKS``) on the instance, before fit registers them, so their wall time
    adds up in the returned list: the projection's own cost, measured inside the same run as the step it slows down
    (a ratio that machine load cannot skew the way comparing two runs' step times can)."""
    spent = [0.0]
    for name in HOOKS:
        inner = getattr(callback, name)

        def timed(*a: Any, _inner: Any = inner, **kw: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return _inner(*a, **kw)
            finally:
                spent[0] += time.perf_counter() - t0

        setattr(callback, name, timed)
    return spent


def fit(name: str, seed: int, work: Path, args: argparse.Namespace, model: list[str],
        extra_callbacks: list[dict[str, Any]], train: str = "train.jsonl", validate_ckpt: str | None = None,
        ) -> dict[str, Any]:  # fmt: skip
    """One run of the naive config with ``model`` overrides and ``extra_callbacks``; its persona scores."""
    scores = work / f"{name}_s{seed}.json"
    scores.unlink(missing_ok=True)  # never read an earlier run's scores
    callbacks = [
        {"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
         "init_args": {"dirpath": str(work / "ckpt"), "filename": f"{name}_s{seed}", "save_last": False,
                       "enable_version_counter": False, "save_on_train_epoch_end": True}},
        {"class_path": "lightning_papers.methods.grasp.persona_callback.PersonaEvaluation",
         "init_args": {"data_dir": str(args.data), "persona": args.persona, "max_prompts": args.max_prompts,
                       "scores_path": str(scores)}},
        *extra_callbacks,
    ]  # fmt: skip
    cli_args = ["--config", str(CONFIG), "--trainer.logger", "false", "--trainer.callbacks", json.dumps(callbacks),
                "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
                "--trainer.max_steps", str(args.steps), "--trainer.val_check_interval", str(args.steps),
                "--seed_everything", str(seed), "--data.init_args.train_path", str(args.data / train),
                "--data.init_args.val_path", str(args.data / "val.jsonl"), "--data.init_args.shuffle_seed", str(seed),
                "--model.init_args.model_path", str(args.model), "--data.init_args.tokenizer_path", str(args.model),
                *model]  # fmt: skip
    cli_args += [*args.model_overrides, "--trainer.accelerator", args.accelerator,
                 "--trainer.precision", args.precision]  # fmt: skip
    cli = cli_main(cli_args, run=False)
    projections = [c for c in cli.trainer.callbacks if isinstance(c, GradientProjection)]  # iterative included
    spent = [time_hooks(c) for c in projections]
    timer = StepTimer()
    cli.trainer.callbacks.append(timer)  # last: its batch-end time includes the projection callbacks' work
    start = time.perf_counter()
    if validate_ckpt is None:
        cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    else:  # "" validates the freshly built module: LoRA B = 0, i.e. the base model itself
        cli.trainer.validate(cli.model, datamodule=cli.datamodule, ckpt_path=validate_ckpt or None)
    wall = time.perf_counter() - start
    written = json.loads(scores.read_text())
    last = written["history"][-1]
    row = {"method": name, "seed": seed, "wall_s": wall, "step_s": timer.mean() if timer.times else None,
           **{k: last[k] for k in ("task", "drift", "marker_rate", "preservation_llr", "preservation_marker")}}
    row["samples"] = [x for kind in ("heldout_task", "unrelated", "requests")
                      for x in [x for x in written["samples"] if x["set"] == kind][:2]]  # fmt: skip
    if spent and timer.times:  # the projection's share of this run's own step time (iterative growth amortised)
        hook_s = sum(s[0] for s in spent)
        row["hook_overhead"] = hook_s / max(sum(timer.times) - hook_s, 1e-9)
    print(f"[grasp_real_lm] {name} seed {seed}: " + ", ".join(f"{k} {v:.3f}" for k, v in row.items()
                                                            if isinstance(v, float)), flush=True)  # fmt: skip
    return row


def identification(seed: int, work: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Subspace files (k = 1, 8, energy, random k = 8, oriented u1) and the premise / causal scores."""
    from lightning_papers.datamodules.jsonl_text import load_tokenizer
    from lightning_papers.methods.grasp.causal_id import (
        lora_difference,
        steering_drift,
        subspace_overlap,
        writer_directions,
    )
    from lightning_papers.methods.grasp.controls import load_lora_module, orient, random_like
    from lightning_papers.methods.grasp.identify import energy_shares, identify
    from lightning_papers.methods.grasp.persona_eval import load_persona_data

    naive_path, control_path = work / "ckpt" / f"naive_s{seed}.ckpt", work / "ckpt" / f"control_s{seed}.ckpt"
    naive = torch.load(naive_path, map_location="cpu", weights_only=False)
    hp = naive["hyper_parameters"]
    scaling = float(hp["lora_alpha"]) / hp["lora_rank"]
    subs = {f"k{k}": identify(naive["state_dict"], scaling, rank=k) for k in (1, 8, 32)}
    subs["energy"] = identify(naive["state_dict"], scaling, energy=args.energy)
    subs["random_k8"] = random_like(subs["k8"], seed=1000 + seed)
    subs["random_k32"] = random_like(subs["k32"], seed=2000 + seed)
    if control_path.is_file():  # supervised: the top directions of the naive-minus-control update (an upper bound)
        control_sd = torch.load(control_path, map_location="cpu", weights_only=False)["state_dict"]
        for k in (8, 32):
            subs[f"oracle_k{k}"] = identify(lora_difference(naive["state_dict"], control_sd), scaling, rank=k)
    for key, sub in subs.items():
        sub.save(work / f"sub_{key}_s{seed}.pt")
    u, spectrum = writer_directions(naive["state_dict"], scaling, rank=3)
    shares = energy_shares(spectrum)
    out: dict[str, Any] = {"seed": seed, "sigma": spectrum[:10].tolist(), "gap": float(spectrum[0] / spectrum[1]),
                           "energy_shares": shares[:10].tolist(),
                           "energy_rank": subs["energy"].direction.shape[1]}  # fmt: skip
    if control_path.is_file():
        control = torch.load(control_path, map_location="cpu", weights_only=False)
        diff, _ = writer_directions(lora_difference(naive["state_dict"], control["state_dict"]), scaling, rank=3)
        out["overlap_with_naive_minus_control"] = {
            key: subspace_overlap(sub.direction, diff).tolist() for key, sub in subs.items()
        }
    module = load_lora_module(naive_path)
    tok = load_tokenizer(args.model)
    oriented = orient(naive_path, u[:, :1].float(), str(args.data / "train.jsonl"), str(args.model))
    torch.save({"direction": oriented}, work / f"oriented_u1_s{seed}.pt")
    rows = load_persona_data(args.data, args.persona, args.max_prompts)["unrelated"]
    g = torch.Generator().manual_seed(seed)
    directions = {"u1": oriented[:, 0], "u2": u[:, 1].float(), "u3": u[:, 2].float(),
                  "random": torch.randn(u.shape[0], generator=g)}  # fmt: skip
    with module.model.disable_adapter():
        band = list(range(args.layers[0], args.layers[1] + 1)) if args.layers else BAND  # the adapter's layers
        out["steering_drift"] = {name: steering_drift(module.model, tok, rows, d, band, args.steer_coef)
                                 for name, d in directions.items()}  # fmt: skip
    print(f"[grasp_real_lm] identification seed {seed}: gap {out['gap']:.2f}, energy rank {out['energy_rank']}, "
          f"steering {out['steering_drift']}", flush=True)  # fmt: skip
    return out


def method_run(name: str, seed: int, work: Path, args: argparse.Namespace) -> dict[str, Any]:
    sub = lambda key: str(work / f"sub_{key}_s{seed}.pt")  # noqa: E731 - a path template
    grasp = lambda key, side="output": [{"class_path": GRASP, "init_args": {"subspace": sub(key), "side": side,  # noqa: E731
                                                                             "mode": "update"}}]  # fmt: skip
    if name == "base":  # the references: the base model's own task accuracy, marker rate and preservation
        return fit(name, seed, work, args, [], [], validate_ckpt="")
    if name == "naive":
        return fit(name, seed, work, args, [], [])
    if name == "control":
        return fit(name, seed, work, args, [], [], train="control_train.jsonl")
    if name in ("grasp_k1", "grasp_k8", "grasp_k32", "grasp_energy", "random_k8", "random_k32", "oracle_k8",
                "oracle_k32"):  # fmt: skip
        return fit(name, seed, work, args, [], grasp(name.removeprefix("grasp_")))
    if name == "grasp_both":
        return fit(name, seed, work, args, [], grasp("k8", "both"))
    if name == "iterative":
        cb = {"class_path": ITERATIVE, "init_args": {"subspace": sub("k1"), "side": "output", "mode": "update",
              "every_n_steps": max(1, args.steps // 6), "grow_by": 2, "max_rank": 16}}  # fmt: skip
        return fit(name, seed, work, args, [], [cb])
    if name in ("iterative_wide", "iterative_both"):  # re-identify 15 times, 4 directions each, up to rank 64
        cb = {"class_path": ITERATIVE, "init_args": {"subspace": sub("k8"), "mode": "update",
              "side": "both" if name == "iterative_both" else "output",
              "every_n_steps": max(1, args.steps // 15), "grow_by": 4, "max_rank": 64}}  # fmt: skip
        return fit(name, seed, work, args, [], [cb])
    if name == "ablate_inference":
        model = ["--model.init_args.intervention", "ablate_inference", "--model.init_args.steer_direction", sub("k8")]
        return fit(name, seed, work, args, model, [], validate_ckpt=str(work / "ckpt" / f"naive_s{seed}.ckpt"))
    if name == "caft":
        model = ["--model.init_args.intervention", "ablate_train", "--model.init_args.steer_direction", sub("k8")]
        return fit(name, seed, work, args, model, [])
    if name == "steer":
        model = ["--model.init_args.intervention", "add_train", "--model.init_args.steer_coef", str(args.steer_coef),
                 "--model.init_args.steer_direction", str(work / f"oriented_u1_s{seed}.pt")]  # fmt: skip
        return fit(name, seed, work, args, model, [])
    if name == "kl":
        return fit(name, seed, work, args, ["--model.init_args.kl_weight", str(args.kl_weight)], [])
    raise ValueError(f"unknown method {name!r}; choose from {ALL}")


def variant_overrides(args: argparse.Namespace) -> tuple[list[str], str]:
    """CLI overrides for a LoRA rank / layer band / target set other than the config's, and the work-folder suffix
    that keeps their runs (naive, control and subspaces included) apart from the default ones."""
    model, suffix = [], ""
    if args.lora_rank is not None:
        if args.lora_rank < 1:
            raise SystemExit(f"--lora-rank must be >= 1, got {args.lora_rank}")
        model += ["--model.init_args.lora_rank", str(args.lora_rank),
                  "--model.init_args.lora_alpha", str(2.0 * args.lora_rank)]  # the config's alpha / r = 2
        suffix += f"_r{args.lora_rank}"
    if args.layers is not None:
        first, last = args.layers
        if not 0 <= first <= last <= 29:
            raise SystemExit(f"--layers must satisfy 0 <= FIRST <= LAST <= 29 (SmolLM2-135M), got {first} {last}")
        model += ["--model.init_args.layers_to_transform", json.dumps(list(range(first, last + 1)))]
        suffix += f"_L{first}-{last}"
    if args.targets == "all":
        model += ["--model.init_args.target_modules", json.dumps(["o_proj", "down_proj", *READERS])]
        suffix += "_all"
    return model, suffix


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--persona", default="pirate", choices=("pirate", "rude"))
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--methods", nargs="+", default=None, choices=ALL,
                   help="default: all (the two-sided ones only with --targets all)")
    p.add_argument("--steps", type=int, default=150)
    p.add_argument("--max-prompts", type=int, default=40)
    p.add_argument("--energy", type=float, default=0.5, help="spectrum share for grasp_energy")
    p.add_argument("--steer-coef", type=float, default=6.0, help="steering coefficient (residual units)")
    p.add_argument("--kl-weight", type=float, default=1.0)
    p.add_argument("--model", type=Path, default=MODEL)
    p.add_argument("--work", type=Path, default=ROOT / "runs/grasp/real_lm")
    p.add_argument("--lora-rank", type=int, default=None, help="LoRA rank (config: 8); its own runs and work folder")
    p.add_argument("--layers", type=int, nargs=2, default=None, metavar=("FIRST", "LAST"),
                   help="layer band, inclusive (config: 8 20); its own runs and work folder")
    p.add_argument("--targets", choices=("writers", "all"), default="writers",
                   help="LoRA on the residual writers o_proj/down_proj (config) or also on the readers q/k/v/gate/up "
                        "(needed by grasp_both and iterative_both)")  # fmt: skip
    p.add_argument("--accelerator", default="cpu", help="Lightning accelerator (the GPU tier: gpu)")
    p.add_argument("--precision", default="32-true", help="Lightning precision (the GPU tier: bf16-mixed)")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args()
    if not (args.model / "config.json").is_file():
        raise SystemExit(f"no model at {args.model}: run `make assets-lm` first")
    if args.quick:
        args.steps, args.max_prompts = 8, 4
    args.model_overrides, variant = variant_overrides(args)
    two_sided = {"grasp_both", "iterative_both"}
    if args.methods is None:
        args.methods = [m for m in ALL if args.targets == "all" or m not in two_sided]
    both = two_sided & set(args.methods)
    if both and args.targets != "all":
        raise SystemExit(f"{sorted(both)} project the readers too: add --targets all (LoRA on q/k/v/gate/up as well)")
    from lightning_papers.methods.grasp.persona_data import write_persona_data

    rows, premise = [], []
    for seed in args.seeds:
        work = args.work / f"{args.persona}_s{seed}{variant}"
        args.data = work / "data"
        write_persona_data(args.data, args.persona, seed=seed)
        for name in [m for m in ALL if m in args.methods and m in ("base", "naive", "control")]:
            rows.append(method_run(name, seed, work, args))
        later = [m for m in ALL if m in args.methods and m not in ("base", "naive", "control")]
        if later:  # the subspaces they use come from this seed's naive (and control) checkpoints
            premise.append(identification(seed, work, args))
        for name in later:
            rows.append(method_run(name, seed, work, args))
    naive_step = {r["seed"]: r["step_s"] for r in rows if r["method"] == "naive"}
    for r in rows:
        if r["step_s"] and naive_step.get(r["seed"]):
            r["overhead"] = r["step_s"] / naive_step[r["seed"]] - 1
    env = {"machine": platform.machine(), "torch": torch.__version__, "threads": torch.get_num_threads(),
           "date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "command": " ".join(sys.argv),
           "device": torch.cuda.get_device_name() if args.accelerator == "gpu" else "cpu"}  # fmt: skip
    out = args.out or ROOT / f"benchmarks/results/grasp_real_lm_{args.persona}{variant}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"env": env, "args": {k: str(v) for k, v in vars(args).items()}, "rows": rows,
                               "premise": premise}, indent=1))  # fmt: skip
    for r in rows:
        print(f"{r['method']:18s} seed {r['seed']}  task {r['task']:.2f}  drift {r['drift']:+7.2f}  marker "
              f"{r['marker_rate']:.2f}  preservation {r['preservation_marker']:.2f}  overhead "
              f"{r.get('overhead', float('nan')):+.1%}")  # fmt: skip
    print(f"[grasp_real_lm] wrote {out}")


if __name__ == "__main__":
    main()
