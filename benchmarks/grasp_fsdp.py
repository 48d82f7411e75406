"""Overhead of GradientProjection under FSDP2 (Lightning's ModelParallelStrategy): step time with and without it.

Two CPU processes (gloo), started here the way ``torchrun`` would start them (one process per rank with
``LOCAL_RANK`` etc. set), each running, for ``--repeats`` rounds, one fit per variant in interleaved order:
``none`` (plain LoRA fine-tune), ``update`` (GradientProjection mode="update", AdamW) and ``grad``
(mode="grad"). The model is :class:`~lightning_papers.methods.grasp.module.LoRACausalLM` on a randomly initialised
Llama (``--hidden``, ``--layers``), sharded with ``fully_shard`` per decoder layer and at the root on the
data-parallel mesh, with LoRA on o_proj/down_proj of every layer: the GRASP writers, each with a rank-1 output-side
subspace. A step is timed from ``on_train_batch_start`` to ``on_train_batch_end`` (forward, backward, optimizer step
and the projection) after ``--warmup`` steps; the medians go to ``benchmarks/results/grasp_fsdp.json`` together
with the number of subspace all-reduces per optimizer step. The GPU tier (not measured here) is the same script
with ``--accelerator gpu`` and a larger ``--hidden``.

    flock /tmp/bench.lock .venv/bin/python benchmarks/grasp_fsdp.py
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import statistics
import sys
import time
from datetime import date
from pathlib import Path
from typing import Any

import torch
import torch.multiprocessing as mp
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.strategies import ModelParallelStrategy
from torch.utils.data import DataLoader

ROOT = Path(__file__).resolve().parents[1]
VARIANTS = ("none", "update", "grad")


class Timer(Callback):
    """Seconds per training batch (one optimizer step), after the warm-up steps."""

    def __init__(self, warmup: int) -> None:
        self.warmup, self.times, self._t0 = warmup, [], 0.0

    def on_train_batch_start(self, trainer: Trainer, *args: Any) -> None:
        self._t0 = time.perf_counter()

    def on_train_batch_end(self, trainer: Trainer, *args: Any) -> None:
        if trainer.global_step > self.warmup:
            self.times.append(time.perf_counter() - self._t0)


def sharded_lm(args: argparse.Namespace) -> LightningModule:
    """LoRACausalLM (FSDP2-sharded in its ``configure_model``: one unit per decoder layer, plus the root) on random
    token batches."""
    from lightning_papers.methods.grasp.module import LoRACausalLM

    class ShardedLoRA(LoRACausalLM):
        def configure_model(self) -> None:
            if self.model is not None:
                return
            torch.manual_seed(0)
            super().configure_model()  # sharded with FSDP2 by LoRACausalLM under ModelParallelStrategy

        def train_dataloader(self) -> DataLoader:
            g = torch.Generator().manual_seed(1 + self.global_rank)
            ids = torch.randint(1, args.vocab, (args.batch * (args.warmup + args.steps + 1), args.seq), generator=g)
            labels = ids.clone()
            labels[:, : args.seq // 2] = -100
            rows = [{"input_ids": i, "attention_mask": torch.ones_like(i), "labels": y} for i, y in zip(ids, labels)]
            return DataLoader(rows, batch_size=args.batch)

    config = {"model_type": "llama", "vocab_size": args.vocab, "hidden_size": args.hidden,
              "intermediate_size": int(args.hidden * 2.75), "num_hidden_layers": args.layers,
              "num_attention_heads": max(1, args.hidden // 64), "max_position_embeddings": args.seq, "pad_token_id": 0}
    return ShardedLoRA(model_config=config, lora_rank=args.rank, lora_alpha=2.0 * args.rank, lr=1e-3,
                       weight_decay=0.01, target_modules=["o_proj", "down_proj"])


def one_fit(variant: str, args: argparse.Namespace) -> tuple[float, float, float]:
    """Median step seconds of one fit, the subspace all-reduces per optimizer step (0 without the callback), and
    the median seconds the projection itself takes per step (its all-reduce included)."""
    from lightning_papers.callbacks import GradientProjection
    from lightning_papers.callbacks import gradient_projection as gpm
    from lightning_papers.callbacks import sharded_projection as sp

    calls, spent = {"n": 0}, []
    original, project = sp.reduce_components, gpm.project_sharded

    def counted(*a: Any, **kw: Any) -> Any:
        calls["n"] += 1
        return original(*a, **kw)

    def timed(*a: Any, **kw: Any) -> Any:
        t0 = time.perf_counter()
        out = project(*a, **kw)
        spent.append(time.perf_counter() - t0)
        return out

    sp.reduce_components, gpm.project_sharded = counted, timed
    timer = Timer(args.warmup)
    callbacks: list[Callback] = [timer]
    if variant != "none":
        bases = {f"layers.{i}.{m}.lora_B.default": torch.linalg.qr(torch.randn(args.hidden, 1)).Q
                 for i in range(args.layers) for m in ("self_attn.o_proj", "mlp.down_proj")}
        callbacks.append(GradientProjection(bases, mode=variant, log_every_n_steps=0))
    trainer = Trainer(accelerator=args.accelerator, devices=2, max_steps=args.warmup + args.steps, logger=False,
                      enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                      strategy=ModelParallelStrategy(data_parallel_size=2, tensor_parallel_size=1),
                      use_distributed_sampler=False, callbacks=callbacks)
    trainer.fit(sharded_lm(args))
    sp.reduce_components, gpm.project_sharded = original, project
    steps = args.warmup + args.steps
    extra = 1 if variant == "update" else 0  # update mode reduces once at fit start for the anchors
    return statistics.median(timer.times), (calls["n"] - extra) / steps, statistics.median(spent or [0.0])


def worker(rank: int, port: int, args: argparse.Namespace) -> None:
    os.environ.update({"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "WORLD_SIZE": "2", "NODE_RANK": "0",
                       "LOCAL_RANK": str(rank), "RANK": str(rank), "WANDB_MODE": "disabled"})
    torch.set_num_threads(1)
    results: dict[str, list] = {v: [] for v in VARIANTS}
    collectives: dict[str, float] = {}
    projection: dict[str, list] = {v: [] for v in VARIANTS[1:]}
    for r in range(args.repeats):
        order = VARIANTS if r % 2 == 0 else VARIANTS[::-1]  # interleaved, alternating order against drift
        for v in order:
            t, c, p = one_fit(v, args)
            results[v].append(t)
            collectives[v] = c
            if v != "none":
                projection[v].append(p)
    if rank == 0:
        med = {v: statistics.median(ts) for v, ts in results.items()}
        out = {
            "command": "flock /tmp/bench.lock .venv/bin/python benchmarks/grasp_fsdp.py " + " ".join(args.argv),
            "date": date.today().isoformat(), "hardware": args.hardware, "platform": platform.platform(),
            "torch": torch.__version__, "strategy": "ModelParallelStrategy (FSDP2 fully_shard), 2 processes, gloo",
            "model": {"hidden": args.hidden, "layers": args.layers, "vocab": args.vocab, "seq": args.seq,
                      "batch_per_rank": args.batch, "lora_rank": args.rank, "targets": 2 * args.layers},
            "steps_timed_per_fit": args.steps, "repeats": args.repeats,
            "step_seconds": results, "median_step_seconds": med,
            "overhead_percent": {v: 100.0 * (med[v] / med["none"] - 1.0) for v in ("update", "grad")},
            "projection_seconds_per_step": {v: statistics.median(ts) for v, ts in projection.items()},
            "projection_percent_of_step": {v: 100.0 * statistics.median(ts) / med["none"]
                                           for v, ts in projection.items()},
            "subspace_allreduces_per_step": collectives,
        }
        path = ROOT / "benchmarks" / "results" / args.out
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(out, indent=2) + "\n")
        print(json.dumps({k: out[k] for k in ("median_step_seconds", "overhead_percent", "projection_percent_of_step",
                                              "subspace_allreduces_per_step")}, indent=2))
    import torch.distributed as dist

    if dist.is_initialized():  # leave with every rank done, the process group destroyed (tests/helpers/ddp.py)
        dist.barrier()
        dist.destroy_process_group()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--vocab", type=int, default=1024)
    p.add_argument("--seq", type=int, default=64)
    p.add_argument("--batch", type=int, default=8, help="rows per rank and step")
    p.add_argument("--rank", type=int, default=8, help="LoRA rank")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--accelerator", default="cpu")
    p.add_argument("--hardware", default="shared 2-core x86_64 CPU")
    p.add_argument("--out", default="grasp_fsdp.json")
    args = p.parse_args()
    args.argv = sys.argv[1:]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(worker, args=(port, args), nprocs=2, join=True)


if __name__ == "__main__":
    main()
