"""GradientProjection under sharded training: shard maths against the dense kernel, FSDP1/FSDP2 fine-tunes of a tiny
Llama with LoRA (2 gloo processes) against a single-process run, and resume from a sharded checkpoint."""

from __future__ import annotations

import functools
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.strategies import FSDPStrategy
from torch import nn
from torch.utils.data import DataLoader

from lightning_papers.callbacks import GradientProjection
from lightning_papers.callbacks.gradient_projection import project_in_place
from lightning_papers.callbacks.sharded_projection import Layout, ShardedTarget, anchors_of, project_sharded
from lightning_papers.methods.grasp.module import LoRACausalLM
from tests.helpers.fsdp import CPUFSDPSpawn, CPUModelParallelSpawn, sharded_cpu_kwargs

TINY = {"model_type": "llama", "vocab_size": 20, "hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 2,
        "num_attention_heads": 2, "num_key_value_heads": 2, "max_position_embeddings": 16, "pad_token_id": 0,
        "initializer_range": 0.5}
WRITERS = [f"layers.{i}.{m}.lora_B.default" for i in range(2) for m in ("self_attn.o_proj", "mlp.down_proj")]
ROWS, BATCH, BATCHES = 8, 4, 3  # global batch of 8 rows (4 per rank), 3 batches per epoch
STEPS, CKPT_AT = 5, 3  # one checkpoint, at the end of the first epoch (the next save would be at 6)


def orth(n: int, r: int, seed: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.linalg.qr(torch.randn(n, r, generator=torch.Generator().manual_seed(seed), dtype=dtype)).Q


def bases() -> dict[str, torch.Tensor]:
    return {k: orth(16, 1 + i % 2, seed=i) for i, k in enumerate(WRITERS)}  # rank 1 and rank 2 subspaces


# ---- the shard maths, without processes ------------------------------------------------------------------------
def _simulate(pieces: list[tuple[Layout, torch.Tensor]], bias_pieces: list[tuple[Layout, torch.Tensor]],
              u: torch.Tensor, v: torch.Tensor, anchors: dict | None) -> tuple[list[ShardedTarget], torch.Tensor]:
    """One ShardedTarget per simulated rank; the all-reduce is a plain sum over ranks. Returns targets, removed²."""
    targets = []
    for (wl, w), (bl, b) in zip(pieces, bias_pieces):
        t = ShardedTarget("m", w, b, u, v, {id(w): wl, id(b): bl})
        t.anchor = anchors or {}
        targets.append(t)
    grads = anchors is None
    summed = sum(t.partials(grads, torch.device("cpu"), torch.float64) for t in targets)
    removed = []
    for t in targets:
        comps, i = {}, 0
        for k, n in t.sizes.items():
            comps[k], i = summed[i:i + n], i + n
        removed.append(t.apply(comps, grads))
    assert all(torch.allclose(r, removed[0]) for r in removed), "ranks disagree on the removed norm"
    return targets, removed[0]


def _flat_pieces(full: torch.Tensor, cuts: list[int], replica: bool = False) -> list[tuple[Layout, torch.Tensor]]:
    """FSDP1-style shards: element ranges [cuts[i], cuts[i+1]) of the row-major flattening (1-D local views)."""
    shape, width = full.shape, full[0].numel()
    out = []
    for a, b in zip(cuts[:-1], cuts[1:]):
        rows = (a // width, (b - 1) // width + 1) if b > a else (0, 0)
        out.append((Layout(shape, rows, (0, width), (a, b), b > a), full.reshape(-1)[a:b].clone()))
    return out


def _assemble(pieces: list[tuple[Layout, torch.Tensor]]) -> torch.Tensor:
    return torch.cat([t.reshape(-1) for _, t in pieces])


@pytest.mark.parametrize("grads", [False, True])
def test_shards_project_exactly_like_the_dense_kernel(grads: bool) -> None:
    """Flat shards cutting rows (and an empty shard), both sides and the bias: the reassembled result, and the
    removed norm every rank reports, equal the single-tensor projection."""
    torch.manual_seed(0)
    w0, b0 = torch.randn(7, 5, dtype=torch.float64), torch.randn(7, dtype=torch.float64)
    w, b = w0 + torch.randn(7, 5, dtype=torch.float64), b0 + torch.randn(7, dtype=torch.float64)
    u, v = orth(7, 2, 1, torch.float64), orth(5, 1, 2, torch.float64)
    anchors = None if grads else {"w_u": u.T @ w0, "b_u": u.T @ b0, "w_v": w0 @ v}
    cuts_w, cuts_b = [0, 9, 9, 23, 35], [0, 4, 5, 5, 7]  # rank 1 holds no weight element; rows 1 and 4 are cut
    pw, pb = _flat_pieces(w, cuts_w), _flat_pieces(b, cuts_b)
    if grads:  # grad mode projects .grad: give each local view its gradient, the parameters stay as they are
        pw = [(lay, torch.zeros_like(t).requires_grad_()) for lay, t in pw]
        pb = [(lay, torch.zeros_like(t).requires_grad_()) for lay, t in pb]
        for (_, t), g in zip(pw + pb, [p for _, p in _flat_pieces(w, cuts_w) + _flat_pieces(b, cuts_b)]):
            t.grad = g
    _, removed = _simulate(pw, pb, u, v, anchors)
    got_w = _assemble([(lay, t.grad if grads else t) for lay, t in pw]).view(7, 5)
    got_b = _assemble([(lay, t.grad if grads else t) for lay, t in pb])
    ref_w, ref_b = w.clone(), b.clone()
    a = anchors or {}
    ref_removed = project_in_place(ref_w, u, v, a.get("w_u"), a.get("w_v"))
    ref_removed = ref_removed + project_in_place(ref_b, u, None, a.get("b_u"))
    assert torch.allclose(got_w, ref_w, atol=1e-12) and torch.allclose(got_b, ref_b, atol=1e-12)
    assert float(removed) == pytest.approx(float(ref_removed), rel=1e-9)


def test_block_shards_with_a_replica_count_each_element_once() -> None:
    """DTensor-style blocks (rows x columns, as Shard(0) x Shard(1)) plus a replica that must not add its copy."""
    torch.manual_seed(1)
    w0 = torch.randn(6, 4, dtype=torch.float64)
    w = w0 + torch.randn(6, 4, dtype=torch.float64)
    b = torch.zeros(6, dtype=torch.float64)
    u = orth(6, 1, 3, torch.float64)
    blocks = [((0, 3), (0, 2), True), ((0, 3), (2, 4), True), ((3, 6), (0, 4), True), ((3, 6), (0, 4), False)]
    pw = [(Layout(w.shape, r, c, None, keep), w[r[0]:r[1], c[0]:c[1]].clone()) for r, c, keep in blocks]
    pb = [(Layout(b.shape, (0, 6), (0, 1), None, i == 0), b.clone()) for i in range(4)]
    # anchors as the callback computes them at fit start: from the shards, with the same one reduction
    targets = [ShardedTarget("m", t, bb, u, None, {id(t): lay, id(bb): bl}) for (lay, t), (bl, bb) in zip(pw, pb)]
    summed = sum(t.partials(False, torch.device("cpu"), torch.float64) for t in targets)
    assert torch.allclose(summed[:4], (u.T @ w).view(-1))  # each element counted once despite the replica
    pw = [(lay, t + 0.5) for lay, t in pw]  # a change along every direction, applied to every copy
    _simulate(pw, pb, u, None, {"w_u": u.T @ w, "b_u": u.T @ b})
    top = torch.cat([pw[0][1], pw[1][1]], dim=1)
    new = torch.cat([top, pw[2][1]])
    assert torch.allclose(u.T @ new, u.T @ w, atol=1e-12)  # the subspace component is back at its anchor
    assert torch.allclose(pw[2][1], pw[3][1])  # the replica got the same correction
    assert anchors_of([], torch.device("cpu")) == {} and project_sharded([], False, torch.device("cpu")) is None


# ---- FSDP1 / FSDP2 fine-tunes on 2 gloo processes ------------------------------------------------------------
class TinyLoRA(LoRACausalLM):
    """The tiny Llama with LoRA on o_proj/down_proj; FSDP2-sharded per decoder layer under ModelParallelStrategy;
    rank k of n reads rows k*4..k*4+3 of each global batch of 8 (a single process reads all 8)."""

    def __init__(self, optimizer: str = "adamw") -> None:
        super().__init__(model_config=TINY, lora_rank=2, lora_alpha=4.0, lr=2e-2, weight_decay=0.1,
                         target_modules=["o_proj", "down_proj"])
        self.optimizer = optimizer

    def configure_model(self) -> None:
        if self.model is not None:
            return
        torch.manual_seed(0)  # every rank, and the single-process run, builds the same base model and adapters
        super().configure_model()  # LoRACausalLM shards itself with FSDP2 under ModelParallelStrategy
        from torch.distributed.tensor import DTensor

        self.b0 = {n: (p.full_tensor() if isinstance(p, DTensor) else p).detach().clone()
                   for n, p in self.named_parameters() if "lora_B" in n}  # fmt: skip

    def train_dataloader(self) -> DataLoader:
        g = torch.Generator().manual_seed(1)
        ids = torch.randint(1, 20, (BATCHES * ROWS, 8), generator=g)
        labels = ids.clone()
        labels[:, :3] = -100  # same number of loss tokens per row: the mean over ranks is the global mean
        n, k = self.trainer.world_size, self.trainer.global_rank
        per = ROWS // n
        rows = [i for b in range(BATCHES) for i in range(b * ROWS + k * per, b * ROWS + (k + 1) * per)]
        data = [{"input_ids": ids[i], "attention_mask": torch.ones(8, dtype=torch.long), "labels": labels[i]}
                for i in rows]
        return DataLoader(data, batch_size=per)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        if self.optimizer == "sgd":
            return torch.optim.SGD([p for p in self.parameters() if p.requires_grad], lr=0.2, momentum=0.5)
        return super().configure_optimizers()


class SaveFactors(Callback):
    """At the end of fit, gather the full LoRA B factors (a collective) and save them from rank 0."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        def full() -> dict[str, torch.Tensor]:
            out = {}
            for n, p in pl_module.named_parameters():
                if "lora_B" in n:
                    t = p.full_tensor() if hasattr(p, "full_tensor") else p
                    out[n.replace("_fsdp_wrapped_module.", "")] = t.detach().clone()
            return out

        if isinstance(trainer.strategy, FSDPStrategy):
            from torch.distributed.fsdp import FullyShardedDataParallel

            with FullyShardedDataParallel.summon_full_params(trainer.strategy.model):
                factors = full()
        else:
            factors = full()
        if trainer.global_rank == 0:
            torch.save({"factors": factors, "b0": pl_module.b0}, self.path)


def _fsdp1_unit(module: nn.Module) -> bool:
    """FSDP1 units: every decoder layer, and inside it every LoRA B factor (the only Linear with 2 inputs), whose
    flat parameter of 16 x 2 elements is then split across the 2 ranks (rows 0-7 and 8-15)."""
    from transformers.models.llama.modeling_llama import LlamaDecoderLayer

    return isinstance(module, LlamaDecoderLayer) or (isinstance(module, nn.Linear) and module.in_features == 2)


def _run(strategy: str | None, mode: str, out: Path, ckpt_dir: Path | None = None, resume: Path | None = None,
         optimizer: str = "adamw") -> dict:
    gp = GradientProjection(bases(), side="output", mode=mode, log_every_n_steps=1)
    callbacks: list = [gp, SaveFactors(out)]
    if ckpt_dir is not None:
        callbacks.append(ModelCheckpoint(dirpath=ckpt_dir, filename="mid", every_n_train_steps=CKPT_AT,
                                         save_top_k=1))
    if strategy is None:
        kw = {"accelerator": "cpu", "devices": 1, "logger": False, "enable_progress_bar": False,
              "enable_model_summary": False}
    elif strategy == "fsdp1":
        from torch.distributed.fsdp.wrap import lambda_auto_wrap_policy

        policy = functools.partial(lambda_auto_wrap_policy, lambda_fn=_fsdp1_unit)
        kw = sharded_cpu_kwargs(CPUFSDPSpawn(auto_wrap_policy=policy, state_dict_type="sharded"))
    else:
        kw = sharded_cpu_kwargs(CPUModelParallelSpawn(data_parallel_size=2, tensor_parallel_size=1))
    trainer = Trainer(callbacks=callbacks, max_steps=STEPS, enable_checkpointing=ckpt_dir is not None,
                      use_distributed_sampler=False, **kw)  # the loader splits the global batch itself
    trainer.fit(TinyLoRA(optimizer), ckpt_path=None if resume is None else str(resume))
    return torch.load(out)


def _check_projected(result: dict) -> None:
    """Uᵀ ΔB = 0 on every targeted writer, while B itself learned."""
    found = 0
    for key, u in bases().items():
        names = [n for n in result["factors"] if f"{key}.weight" in n]
        assert len(names) == 1, (key, list(result["factors"]))
        db = result["factors"][names[0]] - result["b0"][names[0]]
        assert db.norm() > 1e-2, f"{key} did not learn"
        assert (u.T @ db).abs().max() < 1e-5 * max(1.0, float(db.norm())), f"{key}: Uᵀ ΔB is not zero"
        found += 1
    assert found == len(WRITERS)


def _check_equal(a: dict, b: dict, atol: float) -> None:
    for n, t in a["factors"].items():
        assert torch.allclose(t, b["factors"][n], atol=atol), (n, float((t - b["factors"][n]).abs().max()))


@pytest.fixture(scope="module")
def single(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict]:
    """The single-process runs the sharded ones must reproduce (update mode with AdamW, grad mode with SGD)."""
    d = tmp_path_factory.mktemp("single")
    return {"update": _run(None, "update", d / "update.pt"), "grad": _run(None, "grad", d / "grad.pt", optimizer="sgd")}


@pytest.mark.ddp
@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["fsdp1", "fsdp2"])
def test_sharded_update_mode_matches_single_process_and_resumes(strategy: str, single: dict, tmp_path: Path) -> None:
    full = _run(strategy, "update", tmp_path / "full.pt", ckpt_dir=tmp_path / "ckpt")
    _check_projected(full)
    _check_equal(full, single["update"], atol=1e-5)
    _check_projected(single["update"])
    ckpt = tmp_path / "ckpt" / "mid.ckpt"
    assert ckpt.is_dir(), "expected a sharded (distributed) checkpoint: a directory with one file per rank"
    resumed = _run(strategy, "update", tmp_path / "resumed.pt", resume=ckpt)
    _check_equal(resumed, full, atol=1e-6)  # resumed from the sharded checkpoint = uninterrupted
    _check_projected(resumed)


@pytest.mark.ddp
@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["fsdp1", "fsdp2"])
def test_sharded_grad_mode_matches_single_process(strategy: str, single: dict, tmp_path: Path) -> None:
    result = _run(strategy, "grad", tmp_path / "grad.pt", optimizer="sgd")
    _check_projected(result)
    _check_equal(result, single["grad"], atol=1e-5)


def test_unsharded_target_under_a_sharded_strategy_is_refused() -> None:
    """A weight FSDP does not manage (e.g. ModelParallelStrategy without fully_shard in configure_model)."""
    from lightning_papers.callbacks.sharded_projection import layout_of

    with pytest.raises(ValueError, match="'head' is neither a DTensor nor inside an FSDP unit.*fully_shard"):
        layout_of(torch.zeros(3, 2), "head", {})


def test_deepspeed_is_refused_with_what_to_use_instead() -> None:
    deepspeed = type("DeepSpeedStrategy", (), {})()
    trainer = SimpleNamespace(strategy=deepspeed)
    with pytest.raises(RuntimeError, match="does not support DeepSpeedStrategy.*FSDPStrategy.*ModelParallelStrategy"):
        GradientProjection(bases()).setup(trainer, TinyLoRA(), "fit")  # type: ignore[arg-type]
    fsdp = object.__new__(FSDPStrategy)
    fsdp.kwargs = {"use_orig_params": False}
    with pytest.raises(RuntimeError, match="use_orig_params=True"):
        GradientProjection(bases()).setup(SimpleNamespace(strategy=fsdp), TinyLoRA(), "fit")  # type: ignore[arg-type]
