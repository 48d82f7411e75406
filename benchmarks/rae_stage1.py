"""RAE stage 1 benchmark (RAEv2 Finding 1, as orderings): reconstruction and probe accuracy vs the latent's K.

Every run is ``lightning-papers fit`` on a ``configs/rae/decoder_*.yaml`` config with overrides (the same
RAEDecoderModule, datamodule and step functions), followed by the module's own validation:

a  E-sup (a CPU-sized ViT trained in-process as a classifier for 600 steps, then frozen): K in {1, 2, 4, all} of its
   6 blocks,
   latent noise augmentation tau in {0, 0.8}, seeds 0-2 (decoder initialisation and noise draws; the data split and
   the encoder are the same): val PSNR / SSIM on clean latents, PSNR with latent noise
   sigma = 0.5 (``val/psnr_noisy``: why stage 2 needs tau), linear-probe accuracy of the K-latent.
b  Controls at tau = 0.8, seed 0: E-rand (the same ViT, random and frozen) at K = 1 and all; E-real (ImageNet
   MobileNetV2, the weights of ``make assets``) at K = 1 (block 15) and 3 (blocks 13-15) -- skipped without them.
d  ``--loss-sweep``: the perceptual term's weight (feature matching in the encoder's own blocks) at 0 / 0.1 / 1
   for E-sup, K = all, tau = 0.8, seed 0 (writes ``rae_stage1_loss.json``).
c  Images/s of each whole fit (statistics, probe and validation included) are in the JSON; the decoder step's own
   throughput, on the CPU and on a GPU in bf16 with and without ``torch.compile``, is ``benchmarks/rae_throughput.py``.

    .venv/bin/python benchmarks/rae_stage1.py                 # CPU tier, digits (about 30 min on a shared 2-core CPU)
    .venv/bin/python benchmarks/rae_stage1.py --quick         # smoke run: 1 seed, 2 K values, 20 steps

Writes ``benchmarks/results/rae_stage1.json`` and ``docs/figures/rae_stage1_k_sweep.png``.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from lightning_papers.cli import cli_main

ROOT = Path(__file__).resolve().parents[1]
FIG = ROOT / "docs" / "figures"
CONFIGS = ROOT / "configs" / "rae"
METRICS = ("val/psnr", "val/ssim", "val/psnr_noisy", "val/probe_accuracy")


def fit(config: str, overrides: dict[str, Any], steps: int, out: Path,
        data: list[str] | None = None) -> dict[str, float]:  # fmt: skip
    """One fit of ``config`` with ``--model.init_args.<k> v`` overrides (and ``data`` CLI flags) for ``steps``
    steps; its val metrics."""
    args = ["--config", str(CONFIGS / config), "--trainer.logger", "false", "--trainer.callbacks", "[]",
            "--trainer.enable_checkpointing", "false", "--trainer.enable_progress_bar", "false",
            "--trainer.enable_model_summary", "false", "--trainer.default_root_dir", str(out),
            "--trainer.max_steps", str(steps), "--trainer.max_epochs", "-1", "--trainer.val_check_interval", str(steps),
            "--trainer.check_val_every_n_epoch", "null", "--model.init_args.stats_path", "null"]  # fmt: skip
    args += ["--seed_everything", str(overrides.get("seed", 0)), *(data or [])]  # seed: the decoder's initialisation
    for key, value in overrides.items():
        args += [f"--model.init_args.{key}", json.dumps(value) if not isinstance(value, str) else value]
    cli = cli_main(args, run=False)
    start = time.perf_counter()
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    seconds = time.perf_counter() - start
    row = {k.split("/")[1]: float(cli.trainer.callback_metrics[k]) for k in METRICS}
    row["seconds"] = seconds
    row["images_per_s"] = steps * cli.datamodule.batch_size / seconds
    return row


def summarise(rows: list[dict[str, Any]], keys: tuple[str, ...]) -> list[dict[str, Any]]:
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault(tuple(r[k] for k in keys), []).append(r)
    out = []
    for key, rs in groups.items():
        s = dict(zip(keys, key))
        for m in ("psnr", "ssim", "psnr_noisy", "probe_accuracy", "images_per_s"):
            vals = [r[m] for r in rs]
            s[m] = statistics.mean(vals)
            s[m + "_std"] = statistics.stdev(vals) if len(vals) > 1 else 0.0
        s["seeds"] = len(rs)
        out.append(s)
    return out


def figure(summary: list[dict[str, Any]], path: Path, dataset: str) -> None:
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    for tau, marker in ((0.0, "o"), (0.8, "s")):
        pts = sorted((s for s in summary if s["encoder"] == "E-sup" and s["tau"] == tau), key=lambda s: s["k"])
        ks = [s["k"] for s in pts]
        for ax, m in zip(axes, ("psnr", "psnr_noisy", "probe_accuracy")):
            ax.errorbar(ks, [s[m] for s in pts], yerr=[s[m + "_std"] for s in pts], marker=marker,
                        label=f"E-sup, tau = {tau}", capsize=3)  # fmt: skip
    for s in summary:
        if s["encoder"] != "E-sup":
            for ax, m in zip(axes, ("psnr", "psnr_noisy", "probe_accuracy")):
                ax.scatter([s["k"]], [s[m]], marker="x", s=60, label=f"{s['encoder']} K={s['k']}")
    for ax, title in zip(axes, ("val PSNR, clean latent (dB)", "val PSNR, latent noise sigma = 0.5 (dB)",
                                "linear-probe accuracy")):  # fmt: skip
        ax.set_xlabel("K (blocks averaged into the latent)")
        ax.set_title(title)
    handles, labels = axes[0].get_legend_handles_labels()
    uniq = dict(zip(labels, handles))
    fig.legend(uniq.values(), uniq.keys(), loc="lower center", ncol=4, fontsize=8)
    fig.suptitle(f"RAE stage 1 on {dataset} (32 px): decoder quality and latent semantics vs K")
    fig.tight_layout(rect=(0, 0.12, 1, 1))
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--steps", type=int, default=144)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--loss-sweep", action="store_true", help="only part d")
    parser.add_argument("--dataset", default="digits", choices=["digits", "fashion_mnist"],
                        help="fashion_mnist (make assets): seed 0, K in {1, 2, 4, all} at tau 0.8, K = all at tau 0")
    args = parser.parse_args()
    torch.set_num_threads(1)
    steps, seeds, ks = (20, 1, (1, 6)) if args.quick else (args.steps, args.seeds, (1, 2, 4, 6))
    out = ROOT / "runs" / "bench_rae_stage1"
    rows: list[dict[str, Any]] = []

    esup = {"encoder_pretraining.steps": 30 if args.quick else 600, "encoder_pretraining.batch_size": 64,
            "encoder_pretraining.lr": 0.002,
            "encoder_pretraining.path": f"runs/rae/encoders/esup_vit96x6_digits_{'quick' if args.quick else 600}.pt"}

    def run(encoder: str, config: str, k: int, layers: Any, tau: float, seed: int, data: list[str]) -> None:
        overrides = {"encoder.init_args.layers": layers, "noise_tau": tau, "seed": seed,
                     **(esup if encoder == "E-sup" else {})}
        row = fit(config, overrides, steps, out, data)
        row.update(encoder=encoder, k=k, tau=tau, seed=seed)
        rows.append(row)
        print(f"{encoder:6s} K={k} tau={tau} seed={seed}: PSNR {row['psnr']:.2f} (noisy {row['psnr_noisy']:.2f}) "
              f"SSIM {row['ssim']:.3f} probe {row['probe_accuracy']:.3f} [{row['seconds']:.0f} s]", flush=True)

    if args.loss_sweep:
        for weight in (0.0, 0.1, 1.0):
            row = fit("decoder_debug.yaml", {**esup, "encoder.init_args.layers": 6, "noise_tau": 0.8, "seed": 0,
                                             "loss.feature_weight": weight}, steps, out)  # fmt: skip
            rows.append({**row, "feature_weight": weight})
            print(f"feature_weight {weight}: PSNR {row['psnr']:.2f} SSIM {row['ssim']:.3f} [{row['seconds']:.0f} s]")
        (ROOT / "benchmarks" / "results" / "rae_stage1_loss.json").write_text(json.dumps(
            {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "steps": steps, "rows": rows,
             "command": "python benchmarks/rae_stage1.py --loss-sweep"}, indent=1))  # fmt: skip
        return
    data: list[str] = []
    if args.dataset == "fashion_mnist":  # 10,000 training and 2,000 validation images of the real data set
        data = ["--data.init_args.source", "fashion_mnist", "--data.init_args.num_train", "10000",
                "--data.init_args.num_val", "2000"]
        esup["encoder_pretraining.path"] = "runs/rae/encoders/esup_vit96x6_fashion_600.pt"
        esup["encoder_pretraining.samples"] = 10000
        grid = [(k, 0.8, 0) for k in ks] + [(ks[-1], 0.0, 0)]
    else:
        grid = [(k, tau, seed) for k in ks for tau in (0.0, 0.8) for seed in range(seeds)]
    for k, tau, seed in grid:  # a: E-sup (the pretrained encoder file is made once, by the first fit)
        run("E-sup", "decoder_debug.yaml", k, k, tau, seed, data)
    for k in (ks[0], ks[-1]) if args.dataset == "digits" else (ks[-1],):  # b: controls
        run("E-rand", "decoder_erand.yaml", k, k, 0.8, 0, data)
    try:
        from lightning_papers.methods.rae.encoder import mobilenet_v2_weights_path

        mobilenet_v2_weights_path()
        for k, layers in ((1, [15]), (3, [13, 14, 15])) if args.dataset == "digits" else ((3, [13, 14, 15]),):
            run("E-real", "decoder_ereal.yaml", k, layers, 0.8, 0, data)
    except FileNotFoundError as err:
        print(f"E-real skipped: {err}")
    summary = summarise(rows, ("encoder", "k", "tau"))
    print(f"\n{'encoder':8s}{'K':>3s}{'tau':>5s}  {'PSNR':>13s}  {'PSNR@0.5':>13s}  {'SSIM':>6s}  {'probe':>6s}")
    for s in summary:
        print(f"{s['encoder']:8s}{s['k']:>3d}{s['tau']:>5.1f}  {s['psnr']:6.2f} ± {s['psnr_std']:4.2f}  "
              f"{s['psnr_noisy']:6.2f} ± {s['psnr_noisy_std']:4.2f}  {s['ssim']:6.3f}  {s['probe_accuracy']:6.3f}")
    result = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "machine": platform.machine(),
              "cpus": torch.get_num_threads(), "steps": steps, "seeds": seeds, "quick": args.quick,
              "dataset": args.dataset, "command": "python benchmarks/rae_stage1.py" + (" --quick" if args.quick else "")
              + ("" if args.dataset == "digits" else f" --dataset {args.dataset}"),
              "rows": rows, "summary": summary}  # fmt: skip
    name = f"rae_stage1{'' if args.dataset == 'digits' else '_' + args.dataset}{'_quick' if args.quick else ''}.json"
    (ROOT / "benchmarks" / "results" / name).write_text(json.dumps(result, indent=1))
    if not args.quick:
        FIG.mkdir(parents=True, exist_ok=True)
        figure(summary, FIG / f"rae_stage1_k_sweep{'' if args.dataset == 'digits' else '_' + args.dataset}.png",
               args.dataset)


if __name__ == "__main__":
    main()
