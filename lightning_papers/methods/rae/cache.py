"""Encode a stage-1 config's dataset once into latent caches for stage 2 (``python -m ...methods.rae.cache``).

    python -m lightning_papers.methods.rae.cache --config configs/rae/decoder_debug.yaml \\
        --ckpt_path runs/rae/decoder_debug/checkpoints/last.ckpt --out runs/rae/latents/digits_esup

reads the stage-1 config (encoder, datamodule), the decoder checkpoint (latent statistics, decoder weights) and
writes, under ``--out``:

    train/, val/           latent caches (``lightning_papers.datamodules.latents``): normalised latents + labels
                           + the statistics + meta (the decoder checkpoint is named in ``meta.json``)
    train_images.npy,      the real images as uint8 ``[N, 3, S, S]`` (at most ``--max_images`` each): the reference
    val_images.npy         set of stage 2's image metrics
    eval_classifier.pt     an independent CNN classifier trained on the training images (a different architecture
                           and seed from the encoder): the feature space of FD_eval and sample accuracy

With ``--pixels P`` the "latents" are the images' P x P pixel patches (``pixels.py``; the pixel-space baseline of
stage 2), with statistics fitted in the same pass and no decoder checkpoint.

The encoder runs once per image, never per stage-2 step (fast-DiT keeps pre-encoded latents in one array for the
same reason). Without ``--ckpt_path`` the statistics are read from the config's ``stats_path`` or fitted exactly in
the encoding pass.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

EVAL_CLASSIFIER_SEED = 1234  # not the encoder's seed: FD_eval's features must be independent of the encoder


def load_stage1(config: str, ckpt_path: str | None, overrides: list[str]) -> tuple:
    """Instantiate a stage-1 config's module and datamodule; load the decoder checkpoint if given."""
    from lightning_papers.cli import cli_main
    from lightning_papers.methods.rae.module import RAEDecoderModule
    from lightning_papers.methods.rae.normalizer import LatentStatistics

    cli = cli_main(["--config", config, "--trainer.logger", "false", *overrides], run=False)
    model, dm = cli.model, cli.datamodule
    if not isinstance(model, RAEDecoderModule):
        raise TypeError(f"{config!r} configures {type(model).__name__}, expected an RAEDecoderModule (stage 1)")
    if model.hparams.num_threads is not None:
        torch.set_num_threads(model.hparams.num_threads)
    dm.setup("fit")
    if model.encoder_pretraining is not None:
        if not Path(model.encoder_pretraining.path).exists():
            raise FileNotFoundError(f"the pretrained encoder {model.encoder_pretraining.path!r} does not exist: "
                                    f"run `lightning-papers fit --config {config}` first")  # fmt: skip
        model.prepare_encoder(model.encoder_pretraining, dm)
    if ckpt_path is not None:
        if not Path(ckpt_path).is_file():
            raise FileNotFoundError(f"--ckpt_path {ckpt_path!r} does not exist")
        ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=False)
        model.on_load_checkpoint(ckpt)
        model.load_state_dict(ckpt["state_dict"])
    elif model.hparams.stats_path and Path(model.hparams.stats_path).is_file():
        model.statistics = LatentStatistics.load(model.hparams.stats_path)
    return model, dm


def _uint8(images: torch.Tensor) -> np.ndarray:
    return (images.clamp(0, 1) * 255).round().to(torch.uint8).numpy()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m lightning_papers.methods.rae.cache", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument("--config", required=True, help="a stage-1 config (RAEDecoderModule + an image datamodule)")
    parser.add_argument("--ckpt_path", default=None, help="the stage-1 checkpoint (statistics + decoder)")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--batch_size", type=int, default=256)
    parser.add_argument("--max_images", type=int, default=20000, help="real images kept per split for metrics")
    parser.add_argument("--classifier_steps", type=int, default=300, help="steps of the FD_eval classifier (0: none)")
    parser.add_argument("--pixels", type=int, default=0, metavar="P",
                        help="write P x P pixel patches instead of encoder latents (the pixel-space baseline)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--overwrite", action="store_true")
    args, overrides = parser.parse_known_args(argv)
    from lightning_papers.datamodules.latents import write_latent_cache
    from lightning_papers.methods.rae.normalizer import LatentStatistics

    out = Path(args.out)
    if out.exists() and not args.overwrite:
        raise FileExistsError(f"--out {str(out)!r} exists (pass --overwrite to replace it)")
    if args.pixels < 0:
        raise ValueError(f"--pixels must be >= 0 (0: encoder latents), got {args.pixels}")
    if args.pixels and args.ckpt_path:
        raise ValueError("--pixels writes pixel patches, which need no stage-1 checkpoint: drop --ckpt_path")
    model, dm = load_stage1(args.config, args.ckpt_path, overrides)
    if args.pixels:
        from lightning_papers.methods.rae.pixels import PixelPatches

        encoder = PixelPatches(args.pixels, model.encoder.image_size)
    else:
        encoder = model.encoder.to(args.device)
    meta = {"encoder": encoder.model_name, "layers": list(encoder.block_ids), "image_size": encoder.image_size,
            "num_classes": dm.num_classes, "decoder_checkpoint": args.ckpt_path, "stage1_config": args.config,
            "class_names": list(getattr(dm, "class_names", []) or [])}  # fmt: skip
    if args.pixels:
        meta["pixel_patch"] = args.pixels
    fit = args.pixels > 0 or model.statistics.count == 0
    stats = LatentStatistics(encoder.latent_shape) if fit else model.statistics
    real = {}
    for split in ("train", "val"):
        loader = dm.shard_dataloader(split, 0, 1, args.batch_size)
        cache = write_latent_cache(encoder, loader, stats, out / split, {**meta, "split": split},
                                   fit_stats=fit and split == "train", overwrite=True)  # fmt: skip
        print(f"[RAE cache] {split}: {len(cache)} latents {tuple(cache.meta['latent_shape'])} -> {out / split}")
        images, labels = real[split] = dm.labelled_subset(split, args.max_images)
        np.save(out / f"{split}_images.npy", _uint8(images))
        np.save(out / f"{split}_image_labels.npy", labels.numpy())
    if args.classifier_steps > 0:
        from lightning_papers.metrics.feature_classifier import train_feature_classifier

        images, labels = real["train"]
        clf, acc = train_feature_classifier(images, labels, dm.num_classes, steps=args.classifier_steps,
                                            seed=EVAL_CLASSIFIER_SEED)  # fmt: skip
        clf.save(out / "eval_classifier.pt")
        (out / "eval_classifier.json").write_text(json.dumps({"held_out_accuracy": acc,
                                                              "steps": args.classifier_steps}))  # fmt: skip
        print(f"[RAE cache] FD_eval classifier: held-out accuracy {acc:.3f} -> {out / 'eval_classifier.pt'}")


if __name__ == "__main__":
    main()
