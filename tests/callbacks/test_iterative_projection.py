"""IterativeGradientProjection and GradientProjection.set_subspace: growth schedule, invariants, resume, both sides."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_papers.callbacks import GradientProjection, IterativeGradientProjection
from lightning_papers.methods.grasp.subspace import SpuriousSubspace, orthonormalize

D, D_IN, D_Q, R, LAYERS = 8, 6, 5, 4, 2
SIGMAS = (4.0, 3.0, 2.0)  # planted strengths: the adapter writes along p1, p2, p3 (readers read along v1, v2, v3)
WRITER = "layers.{}.o_proj.lora_B.default"
READER = "layers.{}.q_proj.lora_A.default"


def planted_basis(n: int, seed: int) -> torch.Tensor:
    return orthonormalize(torch.randn(n, len(SIGMAS), generator=torch.Generator().manual_seed(seed)))


class LoRALinear(nn.Module):
    """peft's LoRA layout: frozen ``base_layer`` plus ``lora_A/lora_B`` ModuleDicts and a ``scaling`` dict."""

    def __init__(self, d_in: int, d_out: int, g: torch.Generator, b0: float) -> None:
        super().__init__()
        self.base_layer = nn.Linear(d_in, d_out, bias=False).requires_grad_(False)
        self.lora_A = nn.ModuleDict({"default": nn.Linear(d_in, R, bias=False)})
        self.lora_B = nn.ModuleDict({"default": nn.Linear(R, d_out, bias=False)})
        with torch.no_grad():  # peft's init: A random, B = 0 (b0 > 0: a random B₀, as after a first fine-tune)
            self.lora_A["default"].weight.copy_(torch.randn(R, d_in, generator=g) / d_in**0.5)
            self.lora_B["default"].weight.copy_(b0 * torch.randn(d_out, R, generator=g))
        self.scaling = {"default": 2.0 / R}

    def delta(self) -> torch.Tensor:
        return self.scaling["default"] * self.lora_B["default"].weight @ self.lora_A["default"].weight


class PlantedLoRA(LightningModule):
    """Writers ``o_proj`` [D_IN -> D] and readers ``q_proj`` [D -> D_Q] whose updates must match planted targets:
    writers ``Σ σ_j p_j q_jᵀ`` (p shared across layers, output side), readers ``Σ σ_j w_j v_jᵀ`` (v shared, input)."""

    def __init__(self, lr: float = 0.05, b0: float = 0.0, sgd: bool = False) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.layers = nn.ModuleList(
            nn.ModuleDict({"o_proj": LoRALinear(D_IN, D, g, b0), "q_proj": LoRALinear(D, D_Q, g, b0)})
            for _ in range(LAYERS)
        )
        p, v = planted_basis(D, 1), planted_basis(D, 2)
        s = torch.tensor(SIGMAS)
        for i in range(LAYERS):
            self.register_buffer(f"t_w{i}", (p * s) @ planted_basis(D_IN, 10 + i).T)
            self.register_buffer(f"t_r{i}", (planted_basis(D_Q, 20 + i) * s) @ v.T)
        self.lr, self.sgd = lr, sgd

    def training_step(self, batch: list[torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, z = batch
        loss = x.new_zeros(())
        for i, layer in enumerate(self.layers):
            loss = loss + ((x @ (layer["o_proj"].delta() - getattr(self, f"t_w{i}")).T) ** 2).mean()
            loss = loss + ((z @ (layer["q_proj"].delta() - getattr(self, f"t_r{i}")).T) ** 2).mean()
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        params = [p for p in self.parameters() if p.requires_grad]
        if self.sgd:
            return torch.optim.SGD(params, lr=self.lr)
        return torch.optim.AdamW(params, lr=self.lr, weight_decay=0.1)

    def train_dataloader(self) -> DataLoader:
        g = torch.Generator().manual_seed(3)
        return DataLoader(TensorDataset(torch.randn(32, D_IN, generator=g), torch.randn(32, D, generator=g)), 8)


def factor(model: PlantedLoRA, name: str) -> torch.Tensor:
    return dict(model.named_modules())[name].weight.detach()


class Invariants(Callback):
    """After every optimizer step, for the whole current basis: UᵀB = 0 and Uᵀ·ΔW = 0 (ΔW = s·B·A) on every writer,
    AV = 0 and ΔW·V = 0 on every reader; records the ranks and the bases over the steps."""

    def __init__(self, it: IterativeGradientProjection) -> None:
        self.it, self.ranks, self.bases, self.worst = it, [], [], 0.0

    def on_fit_start(self, trainer: Trainer, pl_module: Any) -> None:
        self.w0 = {n: p.detach().clone() for n, p in pl_module.named_parameters()}

    def on_train_batch_end(self, trainer: Trainer, pl_module: Any, *args: Any) -> None:
        shared = {s: (None if b is None else b.clone()) for s, b in self.it._shared.items()}
        self.bases.append(shared)
        self.ranks.append({s: 0 if b is None else b.shape[1] for s, b in shared.items()})
        for i, layer in enumerate(pl_module.layers):
            if (u := shared.get("output")) is not None:
                b, delta = factor(pl_module, WRITER.format(i)), layer["o_proj"].delta().detach()
                self.worst = max(self.worst, float((u.T @ b).abs().max()), float((u.T @ delta).abs().max()))
            if (v := shared.get("input")) is not None:
                a, delta = factor(pl_module, READER.format(i)), layer["q_proj"].delta().detach()
                self.worst = max(self.worst, float((a @ v).abs().max()), float((delta @ v).abs().max()))


class Logged(Callback):
    def __init__(self) -> None:
        self.rows: list[dict[str, float]] = []

    def on_train_batch_end(self, trainer: Trainer, *args: Any) -> None:
        self.rows.append({k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("grasp/")})


def fit(model: LightningModule, callbacks: list, max_steps: int = 16, ckpt_path: str | None = None, **kw) -> Trainer:
    args = dict(max_steps=max_steps, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                enable_model_summary=False, accelerator="cpu", devices=1)  # fmt: skip
    args.update(kw)
    trainer = Trainer(callbacks=callbacks, **args)
    trainer.fit(model, ckpt_path=ckpt_path)
    return trainer


def test_rank_grows_on_schedule_and_every_direction_stays_projected() -> None:
    p = planted_basis(D, 1)
    it = IterativeGradientProjection({WRITER.format(i): p[:, :1] for i in range(LAYERS)}, every_n_steps=8,
                                     max_rank=3, log_every_n_steps=0)  # fmt: skip
    check, logged = Invariants(it), Logged()
    model = PlantedLoRA(lr=0.1)
    fit(model, [it, check, logged], max_steps=32)
    # rank 1 (p1) for steps 1-7, +1 at steps 8 and 16, capped at max_rank = 3 from then on
    assert [r["output"] for r in check.ranks] == [1] * 7 + [2] * 8 + [3] * 17
    assert check.worst < 1e-5  # UᵀB = Uᵀ·ΔW = 0 for all directions found so far, after every step
    u = it._shared["output"]
    assert torch.allclose(u.T @ u, torch.eye(3), atol=1e-6)  # new directions orthonormal to the old ones
    assert torch.equal(u[:, :1], check.bases[0]["output"])  # earlier directions are kept as they were
    assert torch.allclose(u[:, :2], check.bases[7]["output"], atol=1e-6)
    assert torch.allclose(u[:, :1], p[:, :1], atol=1e-6)
    # re-identification found the re-routed planted directions p2, p3 (the adapter cannot write along p1)
    assert torch.linalg.svdvals(p.T @ u).min() > 0.95, torch.linalg.svdvals(p.T @ u)
    assert [(h["step"], h["rank"]) for h in it.history] == [(8, 2), (16, 3)]
    assert all(h["new_sigma"][0] > 0 for h in it.history) and len(it.history[0]["new_sigma"]) == 1
    assert [r.get("grasp/rank") for r in logged.rows[7::8]] == [2.0, 3.0, 3.0, 3.0]
    assert logged.rows[7]["grasp/new_sigma"] == pytest.approx(it.history[0]["new_sigma"][0])
    # the weights still learned outside the subspace
    dw = factor(model, WRITER.format(0)) - check.w0[WRITER.format(0) + ".weight"]
    assert (dw - u @ (u.T @ dw)).norm() > 0.1


def test_unprojected_run_writes_along_the_planted_directions() -> None:
    """The control: without the callback the adapter does move along p1 (what the test above keeps out)."""
    model, check = PlantedLoRA(), Invariants(SimpleNamespace(_shared={}))  # type: ignore[arg-type]
    fit(model, [check], max_steps=16)
    dw = factor(model, WRITER.format(0)) - check.w0[WRITER.format(0) + ".weight"]
    assert float((planted_basis(D, 1)[:, 0] @ dw).norm()) > 0.3


def test_starts_empty_grows_by_two_and_logs_each_sigma() -> None:
    it = IterativeGradientProjection(None, every_n_steps=3, grow_by=2, max_rank=3, log_every_n_steps=0)
    check, logged = Invariants(it), Logged()
    fit(PlantedLoRA(), [it, check, logged], max_steps=9)
    assert [r["output"] for r in check.ranks] == [0, 0, 2, 2, 2, 3, 3, 3, 3]  # 2, then capped at 3
    assert check.worst < 1e-5
    s1, s2 = it.history[0]["new_sigma"]
    assert s1 >= s2 > 0 and logged.rows[2]["grasp/new_sigma"] == pytest.approx(s1)
    assert logged.rows[2]["grasp/new_sigma_2"] == pytest.approx(s2)
    assert it.history[0]["removed_norm"] > 0  # what had been written along the new directions was taken out


def test_grad_mode_with_sgd_and_a_nonzero_initial_adapter() -> None:
    """mode="grad" is exact for plain SGD; a random B₀ (an adapter trained before) loses its subspace part at the
    start, so the invariant is UᵀB = 0 (the adapter's whole delta), not only Uᵀ(B - B₀) = 0."""
    p = planted_basis(D, 1)
    it = IterativeGradientProjection({WRITER.format(i): p[:, :1] for i in range(LAYERS)}, side="output", mode="grad",
                                     every_n_steps=5, max_rank=2, log_every_n_steps=0)  # fmt: skip
    check, model = Invariants(it), PlantedLoRA(lr=0.2, b0=0.3, sgd=True)
    assert float((p[:, 0] @ factor(model, WRITER.format(0))).norm()) > 0.1  # B₀ has a component along p1
    fit(model, [it, check], max_steps=10)
    assert [r["output"] for r in check.ranks] == [1] * 4 + [2] * 6
    assert check.worst < 1e-5 and it.history[0]["removed_norm"] > 0


def test_side_both_projects_writers_and_readers() -> None:
    it = IterativeGradientProjection(side="both", every_n_steps=12, max_rank=2, log_every_n_steps=0)
    check, logged = Invariants(it), Logged()
    model = PlantedLoRA(lr=0.1)
    fit(model, [it, check, logged], max_steps=36)
    ranks = [(check.ranks[i]["output"], check.ranks[i]["input"]) for i in (10, 11, 22, 23, 35)]
    assert ranks == [(0, 0), (1, 1), (1, 1), (2, 2), (2, 2)]
    assert check.worst < 1e-5  # UᵀB = Uᵀ·ΔW = 0 on writers and AV = ΔW·V = 0 on readers, after every step
    u, v = it._shared["output"], it._shared["input"]
    assert v.shape == (D, 2) and torch.allclose(v.T @ v, torch.eye(2), atol=1e-6)
    assert torch.linalg.svdvals(planted_basis(D, 1).T @ u).min() > 0.95  # writers: output-side directions
    assert torch.linalg.svdvals(planted_basis(D, 2).T @ v).min() > 0.9  # readers: their planted input directions
    assert logged.rows[-1]["grasp/rank_input"] == 2.0 and "grasp/new_sigma_input" in logged.rows[11]
    da = factor(model, READER.format(1)) - check.w0[READER.format(1) + ".weight"]
    assert (da - (da @ v) @ v.T).norm() > 0.1  # readers still learn outside V


def test_resume_gives_the_same_subspace_and_weights(tmp_path: Path) -> None:
    """Crash at step 8 (an epoch boundary: 4 batches per epoch), resume: same grown basis and bitwise same weights."""

    def callback() -> IterativeGradientProjection:
        return IterativeGradientProjection(side="both", every_n_steps=5, max_rank=3, log_every_n_steps=0)

    full, it_full = PlantedLoRA(), callback()
    every = ModelCheckpoint(dirpath=tmp_path, filename="mid", every_n_train_steps=8, save_top_k=1)
    fit(full, [it_full, every], max_steps=14, enable_checkpointing=True)
    assert torch.load(tmp_path / "mid.ckpt", weights_only=False)["global_step"] == 8

    resumed, it_res = PlantedLoRA(), callback()
    fit(resumed, [it_res], max_steps=14, ckpt_path=str(tmp_path / "mid.ckpt"))
    assert it_res.num_steps == 14 and it_res.history == it_full.history
    assert all(torch.equal(it_full._shared[s], it_res._shared[s]) for s in ("output", "input"))
    for (name, a), b in zip(full.named_parameters(), resumed.parameters()):
        assert torch.equal(a, b), name
    # the resumed run continued from the checkpoint's rank-1 bases (grown at step 5) and grew again at step 10
    assert [(h["step"], h["side"], h["rank"]) for h in it_res.history] == [
        (5, "output", 1), (5, "input", 1), (10, "output", 2), (10, "input", 2)
    ]  # fmt: skip


def test_set_subspace_swaps_the_basis_mid_fit() -> None:
    """GradientProjection.set_subspace (the hook the iterative callback uses): at step 5 grow p1 -> (p1, p2), holding
    p2 at the current weights (anchors=None); p1 stays at B₀ throughout."""
    p = planted_basis(D, 1)
    names = [WRITER.format(i) for i in range(LAYERS)]
    gp = GradientProjection({n: p[:, :1] for n in names}, mode="update")

    class Swap(Callback):
        def on_train_batch_end(self, trainer: Trainer, pl_module: Any, *args: Any) -> None:
            if trainer.global_step == 5:
                self.at_swap = factor(pl_module, names[0]).clone()
                gp.set_subspace(trainer, pl_module, {"output": {n: p[:, :2] for n in names}})
                self.anchored = {n: a["w_u"].clone() for n, a in gp._anchors.items()}

    model, swap = PlantedLoRA(), Swap()
    b0 = factor(model, names[0]).clone()
    fit(model, [gp, swap], max_steps=12)
    b = factor(model, names[0])
    assert (p[:, :1].T @ (b - b0)).abs().max() < 1e-5
    assert (p[:, 1:2].T @ (b - swap.at_swap)).abs().max() < 1e-5  # held where it was at the swap
    assert (p[:, 1:2].T @ (swap.at_swap - b0)).abs().max() > 0.05  # ... which differs from B₀: the run had moved
    assert set(swap.anchored) == set(names) and swap.anchored[names[0]].shape == (2, R)


def test_set_subspace_refuses_bad_calls() -> None:
    p = planted_basis(D, 1)
    gp = GradientProjection({WRITER.format(0): p[:, :1]}, mode="update")
    with pytest.raises(RuntimeError, match="needs a running fit"):
        gp.set_subspace(None, None, {"output": {}})  # type: ignore[arg-type]

    class Bad(Callback):
        def __init__(self, bases: dict, anchors: dict | None) -> None:
            self.bases, self.anchors = bases, anchors

        def on_train_batch_end(self, trainer: Trainer, pl_module: Any, *args: Any) -> None:
            gp.set_subspace(trainer, pl_module, self.bases, self.anchors)

    with pytest.raises(ValueError, match=r"bases for sides \['input'\], but side='output'"):
        fit(PlantedLoRA(), [gp, Bad({"input": {READER.format(0): p[:, :1]}}, None)], max_steps=1)
    with pytest.raises(ValueError, match=r"no anchors for targets \['layers.0.o_proj.lora_B.default'\]"):
        fit(PlantedLoRA(), [gp, Bad({"output": {WRITER.format(0): p[:, :2]}}, {})], max_steps=1)


def test_bad_arguments_are_refused() -> None:
    p = planted_basis(D, 1)
    for kw, message in [
        ({"every_n_steps": 0}, "every_n_steps must be an integer >= 1, got 0"),
        ({"grow_by": 0}, "grow_by must be an integer >= 1, got 0"),
        ({"max_rank": 0}, "max_rank must be an integer >= 1, got 0"),
        ({"subspace": {"a": p}, "max_rank": 2}, "max_rank=2 is below the initial subspace's output-side rank 3"),
        ({"scaling": -1.0}, "scaling must be a finite number > 0"),
        ({"subspace": {"a": p[:, :1], "b": p[:, 1:2]}}, "the bases of 'a' and 'b' differ"),
        ({"side": "rows"}, "side must be one of"),
    ]:
        with pytest.raises(ValueError, match=message):
            IterativeGradientProjection(**kw)


def test_refuses_missing_readers_and_sharded_strategies(tmp_path: Path) -> None:
    from lightning.pytorch.strategies import FSDPStrategy

    class WritersOnly(PlantedLoRA):
        def __init__(self) -> None:
            super().__init__()
            for layer in self.layers:
                layer["q_proj"].requires_grad_(False)

    with pytest.raises(ValueError, match=r"side='both': the fitted module has no trainable LoRA pair on a reader"):
        fit(WritersOnly(), [IterativeGradientProjection(side="both")], max_steps=1)
    it = IterativeGradientProjection()
    with pytest.raises(RuntimeError, match="does not support FSDPStrategy"):
        it.setup(SimpleNamespace(strategy=FSDPStrategy()), PlantedLoRA(), "fit")  # type: ignore[arg-type]
    # a file written by identify with too high a rank is refused when the fit starts (the file is read in setup)
    SpuriousSubspace(output={WRITER.format(0): planted_basis(D, 1)}).save(tmp_path / "s.pt")
    with pytest.raises(ValueError, match="max_rank=2 is below"):
        fit(PlantedLoRA(), [IterativeGradientProjection(str(tmp_path / "s.pt"), max_rank=2)], max_steps=1)


def test_real_peft_llama_names_scaling_and_both_sides() -> None:
    """On a peft LoRA Llama (real module names, peft's ``scaling`` dict), both sides grow and stay projected."""
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    class TinyLM(LightningModule):
        def __init__(self) -> None:
            super().__init__()
            torch.manual_seed(0)
            cfg = LlamaConfig(vocab_size=16, hidden_size=16, intermediate_size=24, num_hidden_layers=2,
                              num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=8)  # fmt: skip
            lora = LoraConfig(r=4, lora_alpha=8.0, target_modules=["o_proj", "down_proj", "q_proj"], lora_dropout=0.0)
            self.model = get_peft_model(LlamaForCausalLM(cfg), lora)

        def training_step(self, batch: list[torch.Tensor], batch_idx: int) -> torch.Tensor:
            return self.model(input_ids=batch[0], labels=batch[0]).loss

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.AdamW([p for p in self.parameters() if p.requires_grad], lr=0.01)

        def train_dataloader(self) -> DataLoader:
            tokens = torch.randint(0, 16, (16, 8), generator=torch.Generator().manual_seed(1))
            return DataLoader(TensorDataset(tokens), 4)

    it = IterativeGradientProjection(side="both", every_n_steps=3, max_rank=2, log_every_n_steps=0)
    model = TinyLM()
    fit(model, [it], max_steps=7)
    assert it._scale == 2.0  # lora_alpha / r, read from peft's layers
    u, v = it._shared["output"], it._shared["input"]
    assert u.shape == (16, 2) and v.shape == (16, 2)
    named = dict(model.named_parameters())
    writers = {
        n: p
        for n, p in named.items()
        if n.endswith(("o_proj.lora_B.default.weight", "down_proj.lora_B.default.weight"))
    }
    readers = {n: p for n, p in model.named_parameters() if n.endswith("q_proj.lora_A.default.weight")}
    assert len(writers) == 4 and len(readers) == 2
    assert max(float((u.T @ b.detach()).abs().max()) for b in writers.values()) < 1e-6
    assert max(float((a.detach() @ v).abs().max()) for a in readers.values()) < 1e-6
    assert all(b.detach().norm() > 0 for b in writers.values())  # trained outside the subspace


class _SameOnEveryRank(Callback):
    """Inside each DDP worker: the grown bases and the adapter are bitwise the same on both ranks."""

    def __init__(self, it: IterativeGradientProjection) -> None:
        self.it = it

    def on_train_end(self, trainer: Trainer, pl_module: Any) -> None:
        u, v = self.it._shared["output"], self.it._shared["input"]
        assert u.shape == (D, 2) and v.shape == (D, 2)
        for t in (u, v, *(p.detach() for p in pl_module.parameters() if p.requires_grad)):
            gathered = trainer.strategy.all_gather(t)
            assert torch.equal(gathered[0], gathered[1]), "ranks differ"


@pytest.mark.ddp
@pytest.mark.slow  # ~13 s: two spawned processes
def test_ddp_ranks_grow_the_same_basis() -> None:
    from tests.helpers.ddp import ddp_cpu_kwargs

    it = IterativeGradientProjection(side="both", every_n_steps=3, max_rank=2, log_every_n_steps=0)
    trainer = Trainer(callbacks=[it, _SameOnEveryRank(it)], max_steps=8, **ddp_cpu_kwargs())
    trainer.fit(PlantedLoRA(lr=0.1))
