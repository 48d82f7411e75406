"""Write class-balanced sample folders from a stage-2 checkpoint (``python -m lightning_papers.methods.rae.sample``).

    python -m lightning_papers.methods.rae.sample --ckpt_path runs/rae/dit_debug/checkpoints/last.ckpt \\
        --out runs/rae/samples --per_class 50 --guidance repa --repa_scale 1.78 --steps 100

writes ``<out>/<class>/<index>.png`` (decoded by the stage-1 decoder named in the training cache, or un-patched
for a pixel cache) and
``<out>/samples.npz`` (latents, labels, NFE per sample). The checkpoint's EMA weights are used when an
``EMAWeightAveraging`` callback wrote it (Lightning then stores the average as the model's ``state_dict``).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch


def load_dit(ckpt_path: str) -> tuple:
    """The trained ``DiTDH``, its transport config and the latent cache meta of an ``RAEDiTModule`` checkpoint."""
    from lightning_papers.methods.rae.dit import DiTDH, build_dit_config
    from lightning_papers.methods.rae.transport import TransportConfig

    if not Path(ckpt_path).is_file():
        raise FileNotFoundError(f"--ckpt_path {ckpt_path!r} does not exist")
    ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=False)
    spec = ckpt.get("rae_dit")
    if spec is None:
        raise ValueError(f"{ckpt_path!r} is not an RAEDiTModule checkpoint (no 'rae_dit' entry)")
    transport = TransportConfig(**spec["transport"])
    config = build_dit_config(spec["dit"], **{**spec["dit_overrides"], "prediction": transport.prediction})
    model = DiTDH(tuple(spec["latent_shape"]), spec["num_classes"], config)
    model.load_state_dict({k[len("model."):]: v for k, v in ckpt["state_dict"].items() if k.startswith("model.")})
    meta = dict(spec["meta"])
    if "stats_state" in spec:
        meta["stats_state"] = spec["stats_state"]
    return model.eval(), transport, meta


def main(argv: list[str] | None = None) -> None:
    from lightning_papers.methods.rae.guidance import GuidanceConfig, sample
    from lightning_papers.methods.rae.tokenizer import RAETokenizer

    parser = argparse.ArgumentParser(prog="python -m lightning_papers.methods.rae.sample", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument("--ckpt_path", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--per_class", type=int, default=50)
    parser.add_argument("--guidance", default="none", choices=["none", "cfg", "autoguidance", "repa", "repa_cfg"])
    parser.add_argument("--scale", type=float, default=1.5, help="CFG / AutoGuidance scale")
    parser.add_argument("--guide_ckpt", default=None, help="AutoGuidance: a smaller stage-2 model's checkpoint")
    parser.add_argument("--repa_scale", type=float, default=1.78, help="REPA-head guidance scale s")
    parser.add_argument("--repa_interval", type=float, nargs=2, default=(0.1, 1.0))
    parser.add_argument("--steps", type=int, default=None, help="Euler steps (default: the training config's)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch_size", type=int, default=250)
    args = parser.parse_args(argv)
    if args.per_class < 1:
        parser.error(f"--per_class must be >= 1, got {args.per_class}")
    model, transport, meta = load_dit(args.ckpt_path)
    guide = None
    if args.guidance == "autoguidance":
        if args.guide_ckpt is None:
            parser.error("--guidance autoguidance needs --guide_ckpt (a smaller, shorter-trained stage-2 model)")
        guide = load_dit(args.guide_ckpt)[0]
    if args.steps is not None:
        transport.sample_steps = args.steps
    guidance = GuidanceConfig(mode=args.guidance, scale=args.scale, repa_scale=args.repa_scale,
                              repa_interval=tuple(args.repa_interval))  # fmt: skip
    tokenizer = None
    if meta.get("pixel_patch") and "stats_state" in meta:  # the pixel-space baseline: un-patch
        from lightning_papers.methods.rae.pixels import PixelTokenizer

        tokenizer = PixelTokenizer(meta["stats_state"], int(meta["pixel_patch"]), float(meta.get("norm_eps", 1e-6)))
    elif meta.get("decoder_checkpoint"):
        tokenizer = RAETokenizer.from_checkpoint(meta["decoder_checkpoint"])
    labels = torch.arange(model.num_classes).repeat_interleave(args.per_class)
    g = torch.Generator().manual_seed(args.seed)
    latents, nfe = [], 0
    for i in range(0, len(labels), args.batch_size):
        z, nfe = sample(model, labels[i:i + args.batch_size], tuple(model.latent_shape), transport, guidance, g,
                        guide_model=guide)
        latents.append(z)
    z = torch.cat(latents)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    np.savez(out / "samples.npz", latents=z.numpy(), labels=labels.numpy(), nfe=nfe)
    if tokenizer is not None:
        from PIL import Image

        images = tokenizer.decode(z)
        names = meta.get("class_names") or [str(c) for c in range(model.num_classes)]
        for k, (img, c) in enumerate(zip(images, labels.tolist())):
            folder = out / str(names[c]).replace("/", "_")
            folder.mkdir(exist_ok=True)
            array = (img.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
            Image.fromarray(array).save(folder / f"{k:06d}.png")
    (out / "sampling.json").write_text(json.dumps({"guidance": vars(guidance), "steps": transport.sample_steps,
                                                   "nfe_per_sample": nfe, "checkpoint": args.ckpt_path}, default=str))
    print(f"[RAE sample] {len(labels)} samples ({args.guidance}, {nfe} NFE each) -> {out}")


if __name__ == "__main__":
    main()
