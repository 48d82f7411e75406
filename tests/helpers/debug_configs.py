"""Every method's debug config, shrunk so a fit takes seconds: shared by the resume and the DDP tests."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import torch

from lightning_papers.cli import cli_main

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
#: A tiny synthetic latent cache (two classes of 8x4x4 latents) standing in for stage 1's output in RAE stage-2 cases.
RAE_CACHE = Path(tempfile.gettempdir()) / "lightning_papers_tests" / "rae_latents"

#: config -> (overrides that shrink it: "model.x" means --model.init_args.x, "trainer.x" --trainer.x; step to stop
#: at; total steps).
CASES: dict[str, tuple[dict[str, object], int, int]] = {
    "adaptive_calibration/debug.yaml": ({"data.length": 6000, "data.batch_size": 500}, 5, 12),
    "qdsb/debug.yaml": ({
        "data.n_train": 2048, "data.steps_per_epoch": 8, "model.n_anchors": 32, "model.refresh_every": 2,
        "model.n_eval": 64, "model.n_sample_steps": 5, "model.batch_size": 64,
        "trainer.check_val_every_n_epoch": 1, "trainer.max_epochs": 3,
    }, 13, 24),
    "pairs/debug.yaml": ({
        "data.batches_per_epoch": 5, "data.stage2_num_sets": 200,
        "data.val_num_sets": 20, "data.batch_size": 64, "model.stage1_epochs": 2, "model.grid_points": 200,
        "trainer.max_epochs": 4, "trainer.check_val_every_n_epoch": 1,
    }, 17, 20),
    "symbolic_regression/debug.yaml": ({
        "model.config.steps": 40, "model.config.max_points": 200, "model.config.cycle_steps": 20,
        "data.steps_per_epoch": 15, "data.t_end": 5.0, "trainer.check_val_every_n_epoch": 1,
    }, 35, 40),
    "drum/debug.yaml": ({
        "data.n_source": 400, "data.n_target": 400, "data.n_eval": 400, "data.steps_per_epoch": 10,
        "model.nuisance_steps": 40, "model.warm_start_steps": 10, "model.batch_size": 64,
        "trainer.max_epochs": 3, "trainer.check_val_every_n_epoch": 1,
    }, 15, 30),
    "shilled_auctions/debug.yaml": ({"data.replicas": 64, "data.horizon": 4000, "data.block": 250}, 7, 16),
    "rae/decoder_debug.yaml": ({
        "model.encoder_pretraining": "null", "model.stats_path": "null", "model.probe_samples": 40,
        "model.stats_batch_size": 64, "data.num_train": 96, "data.num_val": 32, "data.batch_size": 16,
        "trainer.max_epochs": 2, "trainer.check_val_every_n_epoch": 1,
    }, 9, 12),
    "rae/dit_debug.yaml": ({
        "data.root": str(RAE_CACHE / "train"), "data.val_root": str(RAE_CACHE / "val"), "data.batch_size": 16,
        "model.eval_root": str(RAE_CACHE), "model.eval_per_class": 4, "model.dit": "xs",
        "model.transport.sample_steps": 4, "trainer.val_check_interval": 5,
    }, 7, 12),
}


def ensure_rae_cache() -> Path:
    """Write :data:`RAE_CACHE` once (train: 64 latents, val: 16; class c has mean +-1, no decoder, no images)."""
    from lightning_papers.datamodules.latents import write_latent_cache

    if (RAE_CACHE / "val" / "meta.json").is_file():
        return RAE_CACHE
    g = torch.Generator().manual_seed(0)
    for split, n in (("train", 64), ("val", 16)):
        labels = torch.arange(n) % 2
        latents = (2.0 * labels - 1).view(n, 1, 1, 1) + 0.3 * torch.randn(n, 8, 4, 4, generator=g)
        batches = [(latents[i:i + 16], labels[i:i + 16]) for i in range(0, n, 16)]
        stats = {"mean": torch.zeros(8, 4, 4, dtype=torch.float64), "var": torch.ones(8, 4, 4, dtype=torch.float64),
                 "count": 64}
        write_latent_cache(lambda z: z, batches, stats, RAE_CACHE / split,
                           {"encoder": "synthetic", "num_classes": 2, "split": split}, num_items=n, overwrite=True)
    return RAE_CACHE


def flags(overrides: dict[str, object]) -> list[str]:
    out = []
    for key, value in overrides.items():
        group, name = key.split(".", 1)
        out += [f"--{group}.{name}" if group == "trainer" else f"--{group}.init_args.{name}", str(value)]
    return out


def build(config: str, root: Path, overrides: dict[str, object], max_steps: int) -> Any:
    """The CLI for ``config`` with ``overrides`` and ``max_steps``: no logger, no callbacks, no checkpoints."""
    if config.startswith("rae/dit"):
        ensure_rae_cache()
    args = ["--config", str(CONFIGS / config), *flags(overrides), "--trainer.logger", "false",
            "--trainer.callbacks", "[]", "--trainer.enable_checkpointing", "false",
            "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
            "--trainer.default_root_dir", str(root), "--trainer.max_steps", str(max_steps)]
    return cli_main(args, run=False)


def fit(config: str, root: Path, overrides: dict[str, object], max_steps: int, ckpt_path: Path | None = None) -> Any:
    """Fit :func:`build`'s CLI (resuming from ``ckpt_path`` if given) and return it."""
    cli = build(config, root, overrides, max_steps)
    cli.trainer.fit(cli.model, datamodule=cli.datamodule, ckpt_path=ckpt_path)
    return cli
