"""RAE decoder training throughput (images/s): the decoder step of ``RAEDecoderModule`` (noise augmentation, decoder
forward, L1 loss, backward, AdamW) on latents of a fixed shape, with and without ``torch.compile``.

    .venv/bin/python benchmarks/rae_throughput.py                          # CPU tier: XS decoder, 32 px, 96x8x8
    .venv/bin/python benchmarks/rae_throughput.py --tier gpu               # GPU tier: ViT-B decoder, 256 px, bf16,
                                                                           # DINOv2-B latent 768x16x16, +/- compile

The frozen encoder's forward is not included (it is the same for every decoder and cached in stage 2). Writes
``benchmarks/results/rae_throughput.json`` (``rae_throughput_gpu.json``).
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from contextlib import nullcontext
from datetime import datetime, timezone
from pathlib import Path

import torch

from lightning_papers.methods.rae.decoder import ViTDecoder, add_latent_noise, build_decoder_config

ROOT = Path(__file__).resolve().parents[1]
TIERS = {  # decoder size, image size, latent (C, grid), batch, steps
    "cpu": ("xs", 32, (96, 8), 64, 20),
    "gpu": ("b", 256, (768, 16), 256, 50),
}


def measure(decoder: str, image_size: int, latent: tuple[int, int], batch: int, steps: int, device: torch.device,
            bf16: bool, compile_: bool) -> float:  # fmt: skip
    channels, grid = latent
    model = ViTDecoder(channels, grid, image_size, build_decoder_config(decoder)).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-4, betas=(0.9, 0.95))
    step_model = torch.compile(model) if compile_ else model
    z = torch.randn(batch, channels, grid, grid, device=device)
    x = torch.rand(batch, 3, image_size, image_size, device=device)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else nullcontext()

    def step() -> None:
        with autocast:
            loss = (step_model(add_latent_noise(z, 0.8)) - x).abs().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for _ in range(3):  # warm-up (and compilation)
        step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return steps * batch / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tier", default="cpu", choices=sorted(TIERS))
    args = parser.parse_args()
    decoder, size, latent, batch, steps = TIERS[args.tier]
    if args.tier == "gpu":
        if not torch.cuda.is_available():
            raise SystemExit("--tier gpu needs a CUDA GPU")
        device, settings = torch.device("cuda"), [(True, False), (True, True)]
    else:
        torch.set_num_threads(1)
        device, settings = torch.device("cpu"), [(False, False)]
    rows = []
    for bf16, compile_ in settings:
        ips = measure(decoder, size, latent, batch, steps, device, bf16, compile_)
        rows.append({"decoder": decoder, "image_size": size, "latent": list(latent), "batch": batch, "bf16": bf16,
                     "compile": compile_, "images_per_s": ips})  # fmt: skip
        print(f"decoder {decoder} {size}px latent {latent} batch {batch} bf16={bf16} compile={compile_}: "
              f"{ips:,.0f} images/s")
    hardware = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{platform.machine()} CPU, 1 thread"
    result = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "hardware": hardware,
              "torch": torch.__version__, "command": f"python benchmarks/rae_throughput.py --tier {args.tier}",
              "rows": rows}  # fmt: skip
    name = "rae_throughput.json" if args.tier == "cpu" else "rae_throughput_gpu.json"
    (ROOT / "benchmarks" / "results" / name).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
