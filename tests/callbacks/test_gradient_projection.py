"""GradientProjection: exact removal of the subspace component, optimizer guarantees, resume, DDP, bad input."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_papers.callbacks import GradientProjection
from lightning_papers.callbacks.gradient_projection import project_in_place
from lightning_papers.methods.grasp.subspace import SpuriousSubspace, remove_input, remove_output
from tests.helpers.ddp import ddp_cpu_kwargs

D_IN, D_OUT = 6, 5


def basis(n: int, r: int = 1, seed: int = 0) -> torch.Tensor:
    return torch.linalg.qr(torch.randn(n, r, generator=torch.Generator().manual_seed(seed))).Q


class Regression(LightningModule):
    """A two-layer net whose `head` (Linear D_IN -> D_OUT) must move in every direction to fit the target."""

    def __init__(self, optimizer: str = "sgd", weight_decay: float = 0.0, n: int = 64) -> None:
        super().__init__()
        self.body = nn.Linear(D_IN, D_IN)
        self.head = nn.Linear(D_IN, D_OUT)
        self.optimizer, self.weight_decay, self.n = optimizer, weight_decay, n

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.tanh(self.body(x)))

    def training_step(self, batch: list[torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch
        return nn.functional.mse_loss(self(x), y)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        if self.optimizer == "sgd":
            return torch.optim.SGD(self.parameters(), lr=0.1, momentum=0.5)
        return torch.optim.AdamW(self.parameters(), lr=0.05, weight_decay=self.weight_decay)

    def train_dataloader(self) -> DataLoader:
        g = torch.Generator().manual_seed(1 + self.global_rank)
        x = torch.randn(self.n, D_IN, generator=g)
        y = x @ (3 * torch.randn(D_IN, D_OUT, generator=torch.Generator().manual_seed(7)))
        return DataLoader(TensorDataset(x, y), batch_size=16)


def fit(model: LightningModule, callbacks: list, ckpt_path: str | None = None, **kw) -> Trainer:
    args = dict(max_steps=40, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                enable_model_summary=False, accelerator="cpu", devices=1)
    args.update(kw)
    trainer = Trainer(callbacks=callbacks, **args)
    trainer.fit(model, ckpt_path=ckpt_path)
    return trainer


def test_projection_removes_exactly_the_subspace_component() -> None:
    u, v = basis(D_OUT, 2), basis(7, 1, seed=1)
    m = torch.randn(D_OUT, 7)
    p = remove_output(m, u)
    assert torch.allclose(u.T @ p, torch.zeros(2, 7), atol=1e-6)  # nothing left along span(U)
    assert torch.allclose(m - p, u @ u.T @ m, atol=1e-6)  # what was removed is exactly the projection
    assert torch.allclose(remove_output(p, u), p, atol=1e-6)  # idempotent
    q = remove_input(m, v)
    assert torch.allclose(q @ v, torch.zeros(D_OUT, 1), atol=1e-6)
    assert torch.allclose(m - q, m @ v @ v.T, atol=1e-6)
    # the in-place kernel the callback uses: both sides, and the squared norm it reports is what it removed
    t = m.clone()
    removed = project_in_place(t, u, v)
    expected = remove_input(remove_output(m, u), v)
    assert torch.allclose(t, expected, atol=1e-6)
    assert float(removed) == pytest.approx(float((m - expected).square().sum()), rel=1e-5)


@pytest.mark.parametrize(
    ("optimizer", "mode", "weight_decay"), [("sgd", "grad", 0.0), ("adamw", "update", 0.1), ("sgd", "update", 0.0)]
)
def test_output_change_has_no_component_along_subspace(optimizer: str, mode: str, weight_decay: float) -> None:
    model = Regression(optimizer, weight_decay)
    u = basis(D_OUT)
    model.body.requires_grad_(False)  # so the whole output change comes from the projected head
    x = torch.randn(32, D_IN)
    out0 = model(x).detach()
    w0 = model.head.weight.detach().clone()
    fit(model, [GradientProjection({"head": u}, side="output", mode=mode)])
    change = model(x).detach() - out0
    # the fine-tuned module's output change has no component along u (float tolerance) ...
    assert (change @ u).abs().max() < 1e-5 * change.norm()
    # ... while the other output directions still learned
    assert remove_output(change.T, u).norm() > 1.0
    assert (model.head.weight.detach() - w0).norm() > 0.1


def test_unprojected_run_does_move_along_the_subspace() -> None:
    """The control for the test above: without the callback the same fit changes the output along u."""
    model = Regression("adamw", 0.1)
    model.body.requires_grad_(False)
    x = torch.randn(32, D_IN)
    out0 = model(x).detach()
    fit(model, [])
    change = model(x).detach() - out0
    assert (change @ basis(D_OUT)).abs().max() > 0.1


def test_input_side_keeps_response_along_subspace() -> None:
    model = Regression("adamw", 0.1)
    v = basis(D_IN)
    w0 = model.head.weight.detach().clone()
    fit(model, [GradientProjection({"head": v}, side="input", mode="update")])
    dw = model.head.weight.detach() - w0
    assert (dw @ v).abs().max() < 1e-5 * dw.norm()
    assert dw.norm() > 0.1


def test_grad_mode_is_not_enough_for_adamw_with_weight_decay() -> None:
    """Why `mode="update"` exists: AdamW's decoupled weight decay also shrinks W along u (and it warns)."""
    model = Regression("adamw", weight_decay=0.5)
    u = basis(D_OUT)
    w0 = model.head.weight.detach().clone()
    with pytest.warns(UserWarning, match="mode='update'"):
        fit(model, [GradientProjection({"head": u}, mode="grad")])
    assert (u.T @ (model.head.weight.detach() - w0)).abs().max() > 1e-3


def test_removed_norm_is_logged_and_steps_counted() -> None:
    class Capture(Callback):
        def __init__(self) -> None:
            self.values: list[float] = []

        def on_train_batch_end(self, trainer: Trainer, *args: object) -> None:
            if "grasp/removed_norm" in trainer.callback_metrics:
                self.values.append(float(trainer.callback_metrics["grasp/removed_norm"]))

    gp, cap = GradientProjection({"head": basis(D_OUT)}, log_every_n_steps=1), Capture()
    fit(Regression(), [gp, cap], max_steps=5)
    assert gp.num_steps == 5
    assert len(cap.values) == 5 and all(v > 0 for v in cap.values)


def test_accumulation_projects_once_per_optimizer_step() -> None:
    u = basis(D_OUT)
    gp = GradientProjection({"head": u}, mode="update")
    model = Regression("adamw")
    w0 = model.head.weight.detach().clone()
    fit(model, [gp], max_steps=6, accumulate_grad_batches=2)
    assert gp.num_steps == 6
    assert (u.T @ (model.head.weight.detach() - w0)).abs().max() < 1e-5


def test_resume_matches_uninterrupted_run(tmp_path: Path) -> None:
    """Crash at step 8 (an epoch boundary: 4 batches per epoch) and resume: same weights as the run that went on."""
    u = basis(D_OUT)
    init = Regression("adamw", 0.1).state_dict()

    def model() -> Regression:
        m = Regression("adamw", 0.1)
        m.load_state_dict(init)
        return m

    full = model()
    every = ModelCheckpoint(dirpath=tmp_path, filename="mid", every_n_train_steps=8, save_top_k=1)
    fit(full, [GradientProjection({"head": u}, mode="update"), every], max_steps=12, enable_checkpointing=True)

    resumed = model()
    gp = GradientProjection({"head": basis(D_OUT, seed=5)}, mode="update")  # resuming must use the checkpoint's
    with pytest.warns(UserWarning, match="differs from the one given"):
        fit(resumed, [gp], max_steps=12, ckpt_path=str(tmp_path / "mid.ckpt"))
    assert gp.num_steps == 12
    for a, b in zip(full.parameters(), resumed.parameters()):
        assert torch.equal(a, b)
    # the anchor (Uᵀ W₀ of the first run) survived the restart: the invariant holds against the original weights
    assert (u.T @ (resumed.head.weight.detach() - init["head.weight"])).abs().max() < 1e-5


class _RankBasis(Callback):
    """Gives every rank a different basis before GradientProjection.setup: the callback must broadcast rank 0's."""

    def __init__(self, gp: GradientProjection) -> None:
        self.gp = gp

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        self.gp.subspace = {"head": basis(D_OUT, seed=trainer.global_rank)}


class _CheckReplicas(Callback):
    def __init__(self, gp: GradientProjection) -> None:
        self.gp = gp

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.w0 = pl_module.head.weight.detach().clone()

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        w = pl_module.head.weight.detach()
        gathered = trainer.strategy.all_gather(w)
        assert torch.equal(gathered[0], gathered[1]), "replicas diverged"
        u = self.gp._targets[0].u
        bases = trainer.strategy.all_gather(u)
        assert torch.equal(bases[0], bases[1]), "ranks projected with different bases"
        assert torch.allclose(u, basis(D_OUT, seed=0)), "rank 0's basis was not the one used"
        assert (u.T @ (w - self.w0)).abs().max() < 1e-5


@pytest.mark.ddp
def test_ddp_replicas_identical_and_basis_broadcast() -> None:
    gp = GradientProjection({"head": basis(D_OUT, seed=0)}, mode="update")
    trainer = Trainer(callbacks=[_RankBasis(gp), gp, _CheckReplicas(gp)], max_steps=6, **ddp_cpu_kwargs())
    trainer.fit(Regression("adamw", 0.1, n=32))


def test_loads_subspace_file_both_sides_and_resolves_suffix(tmp_path: Path) -> None:
    path = tmp_path / "s.pt"
    u, v = basis(D_OUT), basis(D_IN, seed=2)
    SpuriousSubspace(output={"head": u}, input={"head": v}).save(path)
    model = Regression("adamw")
    w0 = model.head.weight.detach().clone()
    fit(model, [GradientProjection(str(path), side="both", mode="update")], max_steps=5)
    dw = model.head.weight.detach() - w0
    assert (u.T @ dw).abs().max() < 1e-5 and (dw @ v).abs().max() < 1e-5
    assert remove_input(remove_output(dw, u), v).norm() > 1e-2

    class Wrapped(Regression):  # the key "head" is now a unique dotted suffix of "net.head"
        def __init__(self) -> None:
            super().__init__()
            self.net = nn.ModuleDict({"inner": nn.Linear(D_IN, D_IN), "head": nn.Linear(D_IN, D_OUT)})
            del self.head

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.net["head"](torch.tanh(self.net["inner"](self.body(x))))

    model = Wrapped()
    w0 = model.net["head"].weight.detach().clone()
    fit(model, [GradientProjection({"head": u}, mode="update")], max_steps=5)
    dw = model.net["head"].weight.detach() - w0
    assert (u.T @ dw).abs().max() < 1e-5 and dw.norm() > 1e-2


def test_missing_file_names_path_and_command(tmp_path: Path) -> None:
    gp = GradientProjection(str(tmp_path / "nope.pt"))
    with pytest.raises(FileNotFoundError, match="nope.pt.*identify"):
        fit(Regression(), [gp], max_steps=1)


@pytest.mark.parametrize(
    ("bases", "side", "message"),
    [
        ({"head": basis(D_IN)}, "output", r"'head': output-side basis has 6 rows but the weight \(5, 6\)"),
        ({"head": basis(D_OUT)}, "input", r"'head': input-side basis of shape \(5, 1\) does not match"),
        ({"tail": basis(D_OUT)}, "output", "'tail' matches no module"),
        ({"weight": basis(D_OUT)}, "output", "'weight' matches no module"),
    ],
)
def test_bad_subspace_raises_clear_error(bases: dict, side: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        fit(Regression(), [GradientProjection(bases, side=side)], max_steps=1)  # type: ignore[arg-type]


def test_bad_arguments_fail_at_construction() -> None:
    with pytest.raises(ValueError, match="linearly dependent"):
        GradientProjection({"head": torch.ones(D_OUT, 2)})
    with pytest.raises(ValueError, match="non-finite"):
        GradientProjection({"head": torch.full((D_OUT, 1), float("nan"))})
    with pytest.raises(ValueError, match="side must be one of"):
        GradientProjection({"head": basis(D_OUT)}, side="rows")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="mode must be one of"):
        GradientProjection({"head": basis(D_OUT)}, mode="adam")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="needs a SpuriousSubspace"):
        GradientProjection({"head": basis(D_OUT)}, side="both")
    with pytest.raises(ValueError, match="empty"):
        GradientProjection({})


def test_frozen_weight_is_refused() -> None:
    model = Regression()
    model.head.weight.requires_grad_(False)
    with pytest.raises(ValueError, match="does not require grad"):
        fit(model, [GradientProjection({"head": basis(D_OUT)})], max_steps=1)


def test_sharded_strategies_pass_setup() -> None:
    """FSDP is no longer refused (tests/callbacks/test_gradient_projection_fsdp.py runs it); DeepSpeed still is."""
    from lightning.pytorch.strategies import FSDPStrategy

    gp = GradientProjection({"head": basis(D_OUT)})
    gp.setup(SimpleNamespace(strategy=FSDPStrategy()), Regression(), "fit")  # type: ignore[arg-type]
    assert torch.allclose(gp._bases["output"]["head"], basis(D_OUT))
