"""GRASP's gradient projection as a drop-in callback: fine-tuning cannot write anything new along a subspace.

For a targeted module with weight ``W`` ``[out, in]`` and orthonormal bases ``U`` (output side) / ``V`` (input side):

* ``side="output"`` keeps ``Uᵀ·ΔW = 0`` and ``Uᵀ·Δb = 0``: for the same input, the module's output changes by
  nothing along ``span(U)``. On residual-stream writers, the fine-tune writes nothing new along the direction.
* ``side="input"`` keeps ``ΔW·V = 0``: the module reacts to inputs along ``span(V)`` exactly as before.
* ``side="both"`` does both (``ΔW -> P_U ΔW P_V``; the left and right projections commute).

The pretrained part of the weights is untouched, so the model keeps its own use of the direction: the paper's
point is to remove the spurious *correlation* the fine-tune would learn, not the latent factor itself.

``mode="grad"`` projects gradients in ``on_before_optimizer_step``, where Lightning has accumulated, AMP-unscaled
and DDP-averaged them (and not yet clipped them). That is exact for plain SGD (with or without momentum). Adam and
AdamW rescale every coordinate and weight decay shrinks every direction, so their *update* leaves the allowed
subspace again. ``mode="update"`` therefore projects the parameter change of every ``optimizer.step()`` (an
optimizer step post-hook): ``W <- W - U (UᵀW - UᵀW₀)``, where ``UᵀW₀`` (``[r, in]``, tiny) is stored once at the
start of training. No copy of the weights before each step is needed, and the guarantee holds for any optimizer.

Under FSDP (Lightning's ``FSDPStrategy`` or ``ModelParallelStrategy`` with ``fully_shard``) every rank projects its
own shard with one all-reduce of the subspace components per step (:mod:`.sharded_projection`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_warn
from torch import nn
from typing_extensions import override

from lightning_papers.callbacks.sharded_projection import (
    Layout,
    ShardedTarget,
    anchors_of,
    clean_name,
    fsdp1_layouts,
    is_sharded,
    layout_of,
    project_sharded,
    refuse_unsupported,
)
from lightning_papers.methods.grasp.subspace import SpuriousSubspace, orthonormalize, resolve_module

Side = Literal["output", "input", "both"]
Mode = Literal["grad", "update"]
_SIDES = ("output", "input", "both")
_MODES = ("grad", "update")


class _Target:
    """One targeted module: its weight (and bias on the output side), bases on the device, and anchors."""

    def __init__(self, name: str, module: nn.Module, out_basis: torch.Tensor | None, in_basis: torch.Tensor | None,
                 fsdp1: dict[int, Layout] | None = None):
        weight = getattr(module, "weight", None)
        layout = None
        if isinstance(weight, torch.Tensor) and fsdp1 is not None:  # sharded: the checks use the global shape
            layout = layout_of(weight, name, fsdp1)
        shape = layout.shape if layout is not None else getattr(weight, "shape", ())
        if not isinstance(weight, torch.Tensor) or len(shape) < 2:
            raise ValueError(f"module {name!r} ({type(module).__name__}) has no weight of shape [out, in, ...]; "
                             "GradientProjection targets nn.Linear-like modules")
        if not weight.requires_grad:
            raise ValueError(f"module {name!r}: its weight does not require grad, so there is nothing to project "
                             "(for a peft model, target the adapter factor, e.g. '...o_proj.lora_B.default')")
        if out_basis is not None and out_basis.shape[0] != shape[0]:
            raise ValueError(f"module {name!r}: output-side basis has {out_basis.shape[0]} rows but the weight "
                             f"{tuple(shape)} has {shape[0]} output features (expected [out, r])")
        if in_basis is not None and (len(shape) != 2 or in_basis.shape[0] != shape[1]):
            raise ValueError(f"module {name!r}: input-side basis of shape {tuple(in_basis.shape)} does not match the "
                             f"weight {tuple(shape)} (expected a 2-D weight and a basis [in_features, r])")
        bias = getattr(module, "bias", None)
        self.name = name
        self.weight: torch.Tensor = weight
        self.bias = bias if out_basis is not None and isinstance(bias, torch.Tensor) and bias.requires_grad else None
        dtype = torch.float64 if weight.dtype == torch.float64 else torch.float32
        self.u = None if out_basis is None else out_basis.to(weight.device, dtype)
        self.v = None if in_basis is None else in_basis.to(weight.device, dtype)
        self.anchor: dict[str, torch.Tensor] = {}
        self.sharded = None if fsdp1 is None else ShardedTarget(name, weight, self.bias, self.u, self.v, fsdp1)
        if self.sharded is not None:  # each rank keeps only the rows of U its shards hold
            self.u = None

    def anchors(self) -> dict[str, torch.Tensor]:
        """The subspace components of the current weights (``UᵀW``, ``Uᵀb``, ``W V``): kept fixed in update mode."""
        out: dict[str, torch.Tensor] = {}
        basis = self.u if self.u is not None else self.v
        w = self.weight.detach().to(basis.dtype)
        if self.u is not None:
            out["w_u"] = self.u.T @ w.reshape(w.shape[0], -1)
            if self.bias is not None:
                out["b_u"] = self.u.T @ self.bias.detach().to(basis.dtype)
        if self.v is not None:
            out["w_v"] = w @ self.v
        return out

    def project_grads(self, with_total: bool) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """Project the gradients in place; the squared norms (removed, total) summed over weight and bias."""
        removed = total = None
        for p, v in ((self.weight, self.v), (self.bias, None)):
            if p is None or p.grad is None:
                continue
            if with_total:
                sq = p.grad.detach().to(self.u.dtype if self.u is not None else self.v.dtype).square().sum()
                total = sq if total is None else total + sq
            r = project_in_place(p.grad, self.u, v)
            removed = r if removed is None else removed + r
        return removed, total

    def project_params(self) -> torch.Tensor:
        """Reset the parameters' subspace components to the anchors; the squared norm of the change removed."""
        a = self.anchor
        removed = project_in_place(self.weight, self.u, self.v, a.get("w_u"), a.get("w_v"))
        if self.bias is not None:
            removed = removed + project_in_place(self.bias, self.u, None, a.get("b_u"))
        return removed


def project_in_place(t: torch.Tensor, u: torch.Tensor | None, v: torch.Tensor | None,
                     anchor_u: torch.Tensor | None = None, anchor_v: torch.Tensor | None = None) -> torch.Tensor:
    """In place: ``t -> t - U(Uᵀt - a_u)`` then ``t -> t - (tV - a_v)Vᵀ``; returns the squared norm removed.

    The arithmetic runs in the bases' dtype (float32, or float64), so half-precision tensors are projected in
    float32 and rounded once when written back.
    """
    target = t.detach()
    basis = u if u is not None else v
    work = target.to(basis.dtype).contiguous()  # no copy for a contiguous float32 tensor
    flat = work.view(work.shape[0], -1)
    removed = flat.new_zeros(())
    if u is not None:
        c = u.T @ flat
        if anchor_u is not None:
            c = c - anchor_u.view(c.shape)
        flat.addmm_(u, c, alpha=-1.0)
        removed = removed + c.square().sum()
    if v is not None:
        c = flat @ v
        if anchor_v is not None:
            c = c - anchor_v
        flat.addmm_(c, v.T, alpha=-1.0)
        removed = removed + c.square().sum()
    if work.data_ptr() != target.data_ptr():
        target.copy_(work)
    return removed


class GradientProjection(Callback):
    """Keep a fine-tune's changes to chosen modules out of a subspace (GRASP, arXiv 2605.27676).

    Args:
        subspace: A :class:`~lightning_papers.methods.grasp.subspace.SpuriousSubspace`, the path of one saved by
            ``identify`` (read in ``setup``, so configs can name a file made later), or a plain mapping
            ``{module name: basis [features, r]}`` used for the one side given by ``side``. Module names are those
            of ``pl_module.named_modules()``; a key may also be a unique dotted suffix of one. Bases are
            orthonormalised (only their span matters).
        side: ``"output"`` (rows of the weight, plus the bias: nothing new written along the subspace),
            ``"input"`` (columns: nothing new read from it) or ``"both"`` (needs a ``SpuriousSubspace``).
        mode: ``"grad"`` projects gradients before each optimizer step (exact for SGD); ``"update"`` projects each
            step's parameter change after it (exact for Adam/AdamW and weight decay too).
        log_every_n_steps: Log ``grasp/removed_norm`` (norm of the removed gradient or update component, over all
            targets) every this many optimizer steps; in grad mode also ``grasp/removed_frac`` (removed norm / norm
            of the targeted gradients). 0 turns logging off.

    Example::

        from lightning_papers.callbacks import GradientProjection
        basis = torch.linalg.qr(torch.randn(64, 1)).Q            # a direction in the 64-d output space of `head`
        trainer = Trainer(callbacks=[GradientProjection({"head": basis}, mode="update")])
    """

    def __init__(
        self,
        subspace: SpuriousSubspace | str | Mapping[str, torch.Tensor],
        side: Side = "output",
        mode: Mode = "grad",
        log_every_n_steps: int = 50,
    ) -> None:
        if side not in _SIDES:
            raise ValueError(f"side must be one of {_SIDES}, got {side!r}")
        if mode not in _MODES:
            raise ValueError(f"mode must be one of {_MODES}, got {mode!r}")
        if not isinstance(log_every_n_steps, int) or log_every_n_steps < 0:
            raise ValueError(f"log_every_n_steps must be an integer >= 0, got {log_every_n_steps!r}")
        if isinstance(subspace, Path):
            subspace = str(subspace)
        if isinstance(subspace, Mapping) and not isinstance(subspace, SpuriousSubspace):
            if side == "both":
                raise ValueError("side='both' needs a SpuriousSubspace (separate output and input bases); a plain "
                                 "mapping {module: basis} applies to one side: pass side='output' or 'input'")
            subspace = {str(k): orthonormalize(v, f"basis for {k!r}") for k, v in subspace.items()}
            if not subspace:
                raise ValueError("the subspace mapping is empty: give {module name: basis [features, r]}")
        elif not isinstance(subspace, (SpuriousSubspace, str)):
            raise ValueError(f"subspace must be a SpuriousSubspace, a file path or a mapping, got {type(subspace)}")
        self.subspace = subspace
        self.side, self.mode, self.log_every_n_steps = side, mode, log_every_n_steps
        self._bases: dict[str, dict[str, torch.Tensor]] | None = None  # {"output": {...}, "input": {...}} on CPU
        self._anchors: dict[str, dict[str, torch.Tensor]] | None = None  # update mode: per module, CPU
        self._targets: list[_Target] = []
        self._by_optimizer: dict[int, list[_Target]] = {}
        self._handles: list[Any] = []
        self._pending: tuple[torch.Tensor, torch.Tensor] | None = None
        self._device: torch.device | None = None  # the collective's device, under a sharded strategy only
        self.num_steps = 0  # optimizer steps projected so far (resumes with the checkpoint)

    @property
    @override
    def state_key(self) -> str:
        if isinstance(self.subspace, str):
            ident = self.subspace
        else:
            keys = sorted(self.subspace) if isinstance(self.subspace, dict) else sorted(
                [f"o:{k}" for k in self.subspace.output] + [f"i:{k}" for k in self.subspace.input])
            ident = hashlib.sha1("|".join(keys).encode()).hexdigest()[:12]
        return self._generate_state_key(side=self.side, mode=self.mode, subspace=ident)

    # ---- bases -----------------------------------------------------------------------------------------------
    def _load_bases(self) -> dict[str, dict[str, torch.Tensor]]:
        """The bases of the sides in use, as CPU float32 tensors, from whatever ``subspace`` was given."""
        sub = self.subspace
        if isinstance(sub, str):
            sub = SpuriousSubspace.load(sub)
        if isinstance(sub, SpuriousSubspace):
            bases = {s: dict(sub.bases(s)) for s in ("output", "input") if self.side in (s, "both")}
        else:
            bases = {self.side: dict(sub)}
        for s, b in bases.items():
            if not b:
                raise ValueError(f"side={self.side!r} but the subspace has no {s}-side bases "
                                 f"(identify puts writers on the output side, readers on the input side)")
        return bases

    @override
    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        refuse_unsupported(trainer.strategy)
        # Every rank loads (so a bad file fails everywhere, not as a hang), then all take rank 0's copy: the
        # projection must use bitwise the same basis on every rank, or the replicas drift apart.
        self._bases = trainer.strategy.broadcast(self._load_bases(), src=0)

    @override
    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Match names to modules (built by now, also in ``configure_model``), check shapes, hook the optimizers."""
        named = {clean_name(n): m for n, m in pl_module.named_modules()}
        sharded = is_sharded(trainer.strategy)
        fsdp1 = fsdp1_layouts(trainer.strategy.model) if sharded else None
        found: dict[str, tuple[nn.Module, dict[str, torch.Tensor]]] = {}
        for side, bases in self._bases.items():
            for key, basis in bases.items():
                full, module = resolve_module(named, key)
                entry = found.setdefault(full, (module, {}))[1]
                if side in entry:
                    raise ValueError(f"two subspace keys resolve to module {full!r} on the {side} side")
                entry[side] = basis
        self._device = trainer.strategy.root_device if sharded else None
        self._targets = [_Target(n, m, b.get("output"), b.get("input"), fsdp1) for n, (m, b) in found.items()]
        self._by_optimizer = {}
        trained = {id(p) for opt in trainer.optimizers for g in opt.param_groups for p in g["params"]}
        idle = [t.name for t in self._targets if id(t.weight) not in trained]
        if idle:
            rank_zero_warn(f"GradientProjection: {idle} are not trained by any optimizer; nothing to project there")
        if self.mode == "grad":
            _warn_if_grad_mode_inexact(trainer.optimizers)
        if self.mode == "update":
            if self._anchors is None and sharded:  # a fresh run: the weights now are W₀ (one collective)
                self._anchors = anchors_of([t.sharded for t in self._targets], trainer.strategy.root_device)
            if self._anchors is None:  # a fresh run: the weights now are W₀ (a resumed run restored its anchors)
                self._anchors = {t.name: {k: a.cpu() for k, a in t.anchors().items()} for t in self._targets}
            for t in self._targets:
                holder = t.sharded if t.sharded is not None else t
                dtype = holder.dtype if t.sharded is not None else (t.u if t.u is not None else t.v).dtype
                holder.anchor = {k: a.to(t.weight.device, dtype) for k, a in self._anchors[t.name].items()}
            self._remove_hooks()
            self._handles = [opt.register_step_post_hook(self._after_step) for opt in trainer.optimizers]

    @torch.no_grad()
    def set_subspace(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        bases: Mapping[str, Mapping[str, torch.Tensor]],
        anchors: Mapping[str, Mapping[str, torch.Tensor]] | None = None,
    ) -> None:
        """Swap the projected subspace during a fit, between optimizer steps (e.g. from ``on_train_batch_end``).

        Args:
            trainer: The running Trainer.
            pl_module: The LightningModule being fitted.
            bases: ``{"output" | "input": {module name: basis [features, r]}}`` for the sides in use (a side may map
                to no modules); names as for ``subspace``. Replaces the current bases (targets are re-resolved).
            anchors: Update mode: per target (full ``named_modules()`` name), the subspace components the weights
                are held at from now on (``w_u = UᵀW₀``, ``b_u = Uᵀb₀``, ``w_v = W₀V``; a missing key holds that
                component at zero); ``None`` holds them at the current weights. The next step's projection moves
                the weights to them. Ignored in grad mode.
        """
        if self._bases is None:
            raise RuntimeError("set_subspace needs a running fit (call it after on_fit_start)")
        if is_sharded(trainer.strategy):
            raise ValueError(f"set_subspace is not supported under {type(trainer.strategy).__name__}")
        if not set(bases) <= set(self._bases):
            raise ValueError(f"bases for sides {sorted(bases)}, but side={self.side!r} uses {sorted(self._bases)}")
        new = {s: {str(k): orthonormalize(b, f"{s} basis for {k!r}") for k, b in bases.get(s, {}).items()}
               for s in self._bases}  # fmt: skip
        if self.mode == "update" and anchors is not None:
            named = {clean_name(n): m for n, m in pl_module.named_modules()}
            missing = sorted({resolve_module(named, k)[0] for b in new.values() for k in b} - set(anchors))
            if missing:
                raise ValueError(f"set_subspace: no anchors for targets {missing}")
            anchors = {n: {k: a.detach().cpu() for k, a in anchors[n].items()} for n in anchors}
        self._bases, self._anchors = new, None if self.mode != "update" else anchors
        GradientProjection.on_fit_start(self, trainer, pl_module)  # re-resolve targets, anchors and step hooks

    def _remove_hooks(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    @override
    def teardown(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        self._remove_hooks()
        self._targets, self._by_optimizer, self._pending, self._device = [], {}, None, None
        self._anchors = None  # a later fit starts from its own weights (which keep the invariant if continued)

    # ---- projection ------------------------------------------------------------------------------------------
    def _targets_of(self, optimizer: Any) -> list[_Target]:
        key = id(getattr(optimizer, "_optimizer", optimizer))  # LightningOptimizer wraps the torch optimizer
        if key not in self._by_optimizer:
            ids = {id(p) for g in optimizer.param_groups for p in g["params"]}
            self._by_optimizer[key] = [t for t in self._targets if id(t.weight) in ids]
        return self._by_optimizer[key]

    def _log_now(self) -> bool:
        return self.log_every_n_steps > 0 and self.num_steps % self.log_every_n_steps == 0

    @override
    @torch.no_grad()
    def on_before_optimizer_step(self, trainer: Trainer, pl_module: LightningModule, optimizer: Any) -> None:
        if self.mode != "grad":
            return
        log = self._log_now()
        removed = total = None
        targets = self._targets_of(optimizer)
        if self._device is not None:  # sharded: one collective for all targets of this optimizer
            removed, total = project_sharded([t.sharded for t in targets], True, self._device) or (None, None)
        else:
            for t in targets:
                r, tot = t.project_grads(with_total=log)
                if r is not None:
                    removed = r if removed is None else removed + r
                    total = tot if total is None else total + tot
        if log and removed is not None:
            self._pending = (removed.sqrt(), removed.sqrt() / total.sqrt().clamp_min(1e-30))
        self.num_steps += 1

    @torch.no_grad()
    def _after_step(self, optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        removed = None
        targets = self._targets_of(optimizer)
        if self._device is not None:  # sharded: one collective for all targets of this optimizer
            removed = (project_sharded([t.sharded for t in targets], False, self._device) or (None,))[0]
        else:
            for t in targets:
                r = t.project_params()
                removed = r if removed is None else removed + r
        if removed is not None and self._log_now():
            self._pending = (removed.sqrt(), None)
        self.num_steps += 1

    @override
    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if self._pending is None:
            return
        (norm, frac), self._pending = self._pending, None
        kw: dict[str, Any] = {"on_step": True, "on_epoch": False, "batch_size": 1, "logger": bool(trainer.loggers)}
        pl_module.log("grasp/removed_norm", norm, **kw)
        if frac is not None:
            pl_module.log("grasp/removed_frac", frac, **kw)

    # ---- checkpoints -----------------------------------------------------------------------------------------
    @override
    def state_dict(self) -> dict[str, Any]:
        return {"bases": self._bases, "anchors": self._anchors, "num_steps": self.num_steps}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Resume with the checkpoint's bases and anchors (restored before ``on_fit_start``)."""
        loaded = state_dict["bases"]
        if self._bases is not None and loaded is not None and not _same(self._bases, loaded):
            rank_zero_warn("GradientProjection: the checkpoint's subspace differs from the one given; resuming with "
                           "the checkpoint's (the run it continues was trained with it)")
        if loaded is not None:
            self._bases = loaded
        self._anchors = state_dict.get("anchors")
        self.num_steps = int(state_dict.get("num_steps", 0))


def _warn_if_grad_mode_inexact(optimizers: list[torch.optim.Optimizer]) -> None:
    """Grad mode is exact only for SGD (momentum included) without weight decay (see the module docstring)."""
    inexact = sorted({
        type(opt).__name__
        for opt in optimizers
        if not isinstance(opt, torch.optim.SGD) or any(g.get("weight_decay", 0.0) for g in opt.param_groups)
    })
    if inexact:
        rank_zero_warn(
            f"GradientProjection(mode='grad') with {inexact}: adaptive scaling or weight decay moves the update "
            "out of the allowed subspace again; use mode='update' for an exact guarantee with this optimizer"
        )


def _same(a: dict[str, dict[str, torch.Tensor]], b: dict[str, dict[str, torch.Tensor]]) -> bool:
    if a.keys() != b.keys() or any(a[s].keys() != b[s].keys() for s in a):
        return False
    return all(torch.equal(a[s][k], b[s][k]) for s in a for k in a[s])
