"""Iterative GRASP: a :class:`GradientProjection` whose subspace grows from the run's own LoRA adapter.

GRASP (arXiv 2605.27676) removes the spurious factor's direction, found once from a naive fine-tune's adapter. With a
weak spectral gap the optimiser can *re-route* the factor through the next directions once the first is removed
(``docs/grasp.md``, "A real LM"). This callback (our extension; the paper's body is not public) keeps looking: every
``every_n_steps`` optimizer steps it

1. reads the live adapter's LoRA factors and stacks them as ``identify`` does
   (:func:`~lightning_papers.methods.grasp.identify.stacked_factors`: writers ``C = [s·B_k R_{A_k}ᵀ]_k``, output side;
   readers ``[(s·R_{B_k} A_k)ᵀ]_k``, input side);
2. takes the top ``grow_by`` left singular vectors of the part orthogonal to the current basis, ``(I - UUᵀ) C``
   (:func:`~lightning_papers.methods.grasp.identify.top_directions`), orthonormalises them against ``U`` and appends
   them, up to ``max_rank`` columns per side;
3. removes the factors' components along the whole new basis, ``B <- (I - UUᵀ)B`` on writers and
   ``A <- A(I - VVᵀ)`` on readers (this takes out what the run had already written or read along the new
   directions), and from then on projects as :class:`GradientProjection` does with the grown basis.

The factors' components along the subspace are held at **zero** (the same at the start of the fit), so after every
optimizer step ``UᵀB = 0`` for every writer and ``AV = 0`` for every reader (``side="both"``/``"input"``), for every
direction found so far: the adapter's delta ``s·B·A`` writes nothing along ``U`` and reads nothing along ``V``,
exactly, whatever the init. With peft's ``B₀ = 0`` this is GRASP's ``Uᵀ·ΔW = 0`` on writers. On readers it is
stronger than :class:`GradientProjection`'s input side, which holds ``AV`` at the random init's ``A₀V`` and so lets
``B`` scale up what ``A₀`` reads along ``V`` (``ΔW·V = s·B·A₀·V``). ``mode="update"`` (the default here) makes the
invariant exact for any optimizer; in grad mode, momentum built before a growth still moves the weights along new
directions. One basis per side is shared by all writers (all readers), as ``identify`` writes it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from lightning.pytorch import LightningModule, Trainer
from typing_extensions import override

from lightning_papers.callbacks.gradient_projection import GradientProjection, Mode, Side, project_in_place
from lightning_papers.callbacks.sharded_projection import is_sharded, refuse_unsupported
from lightning_papers.methods.grasp.identify import READERS, WRITERS, lora_pairs, stacked_factors, top_directions
from lightning_papers.methods.grasp.subspace import SpuriousSubspace, orthonormalize


class IterativeGradientProjection(GradientProjection):
    """GRASP with a subspace re-identified from the run's own adapter every ``every_n_steps`` steps (see module doc).

    Args:
        subspace: The initial subspace: a ``SpuriousSubspace``, a file written by ``identify``, a mapping
            ``{module: basis}`` (one side), or ``None`` (start with nothing projected). Its keys only have to agree
            on one basis per side; the basis is applied to every LoRA writer (reader) of the fitted module.
        side: ``"output"`` (writers' ``lora_B``), ``"input"`` (readers' ``lora_A``) or ``"both"``.
        mode: ``"update"`` (exact for any optimizer) or ``"grad"``, as in :class:`GradientProjection`.
        every_n_steps: Optimizer steps between two re-identifications.
        grow_by: Directions added per side at each re-identification.
        max_rank: Largest number of directions per side; must be at least the initial subspace's rank.
        writers: Last name components of residual-stream writers (default ``o_proj``, ``down_proj``).
        readers: Last name components of residual-stream readers (default ``q/k/v_proj``, ``gate/up_proj``).
        scaling: LoRA scale ``s`` (only the logged singular values depend on it); ``None`` reads peft's
            ``module.scaling[adapter]``.
        log_every_n_steps: As in :class:`GradientProjection` (``grasp/removed_norm``).

    Logs at every re-identification ``grasp/rank`` and, when directions were added, ``grasp/new_sigma`` (their
    largest singular value; ``grasp/new_sigma_2``, … for the others); with ``side="both"`` the input side's as
    ``grasp/rank_input``, ``grasp/new_sigma_input``. ``history`` lists every growth (step, side, rank, sigmas).
    """

    def __init__(
        self,
        subspace: SpuriousSubspace | str | Mapping[str, torch.Tensor] | None = None,
        side: Side = "output",
        mode: Mode = "update",
        every_n_steps: int = 50,
        grow_by: int = 1,
        max_rank: int = 8,
        writers: Sequence[str] = WRITERS,
        readers: Sequence[str] = READERS,
        scaling: float | None = None,
        log_every_n_steps: int = 50,
    ) -> None:
        super().__init__(SpuriousSubspace() if subspace is None else subspace, side, mode, log_every_n_steps)
        for name, value in (("every_n_steps", every_n_steps), ("grow_by", grow_by), ("max_rank", max_rank)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        if scaling is not None and not (isinstance(scaling, (int, float)) and math.isfinite(scaling) and scaling > 0):
            raise ValueError(f"scaling must be a finite number > 0 or None, got {scaling!r}")
        if set(writers) & set(readers):
            raise ValueError(f"a module cannot be both a writer and a reader: {sorted(set(writers) & set(readers))}")
        self.every_n_steps, self.grow_by, self.max_rank = every_n_steps, grow_by, max_rank
        self.writers, self.readers, self.scaling = tuple(writers), tuple(readers), scaling
        self.sides = [s for s in ("output", "input") if side in (s, "both")]
        self._shared: dict[str, torch.Tensor | None] | None = None  # side -> shared basis [features, k] (CPU)
        self._fresh = True  # a fit that does not resume: the factors' subspace components are removed at its start
        self._keys: dict[str, list[str]] = {}  # side -> LoRA factor modules of the fitted module
        self._last_grow = 0
        self._scale = 1.0
        self.history: list[dict[str, Any]] = []
        if not isinstance(self.subspace, str):
            self._check_rank(self._initial_shared())

    # ---- the shared bases ------------------------------------------------------------------------------------
    def _initial_shared(self) -> dict[str, torch.Tensor | None]:
        sub = SpuriousSubspace.load(self.subspace) if isinstance(self.subspace, str) else self.subspace
        groups = {s: sub.bases(s) for s in self.sides} if isinstance(sub, SpuriousSubspace) else {self.side: sub}
        shared: dict[str, torch.Tensor | None] = {}
        for s in self.sides:
            items = list((groups.get(s) or {}).items())
            shared[s] = items[0][1].clone() if items else None
            for key, b in items[1:]:
                first_key, first = items[0]
                if b.shape != first.shape or (b @ b.T - first @ first.T).abs().max() > 1e-4:
                    raise ValueError(f"IterativeGradientProjection grows one shared {s}-side basis (as identify "
                                     f"writes it), but the bases of {first_key!r} and {key!r} differ")  # fmt: skip
        return shared

    def _check_rank(self, shared: Mapping[str, torch.Tensor | None]) -> None:
        for s, b in shared.items():
            if b is not None and b.shape[1] > self.max_rank:
                raise ValueError(f"max_rank={self.max_rank} is below the initial subspace's {s}-side rank {b.shape[1]}")

    def _expanded(self) -> dict[str, dict[str, torch.Tensor]]:
        """``{side: {module: shared basis}}`` over the fitted module's LoRA factors (GradientProjection's bases)."""
        assert self._shared is not None
        out: dict[str, dict[str, torch.Tensor]] = {}
        for s in self.sides:
            basis = self._shared[s]
            out[s] = {} if basis is None else {k: basis for k in self._keys[s]}
        return out

    # ---- Lightning hooks -------------------------------------------------------------------------------------
    @override
    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        refuse_unsupported(trainer.strategy)
        if is_sharded(trainer.strategy):
            raise RuntimeError(f"IterativeGradientProjection does not support {type(trainer.strategy).__name__}: "
                               "re-identification reads whole LoRA factors; use strategy='ddp', or "
                               "GradientProjection with a fixed subspace")  # fmt: skip
        shared = trainer.strategy.broadcast(self._initial_shared(), src=0)  # bitwise the same basis on every rank
        self._check_rank(shared)
        self._shared, self._last_grow, self.history = shared, 0, []  # a resumed run's state replaces these next
        self._fresh = True

    @override
    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        params = {n: p for n, p in pl_module.named_parameters() if p.requires_grad}
        cols, rows = stacked_factors(lora_pairs(params), 1.0, self.writers, self.readers)
        self._keys = {"output": list(cols), "input": list(rows)}
        for s in self.sides:
            if not self._keys[s]:
                names = self.writers if s == "output" else self.readers
                raise ValueError(f"side={self.side!r}: the fitted module has no trainable LoRA pair on a "
                                 f"{'writer' if s == 'output' else 'reader'} {list(names)}")  # fmt: skip
        self._scale = self._lora_scaling(pl_module)
        self._bases = self._expanded()
        if self._fresh:  # (a resumed run restored its anchors: zero as well)
            self._anchors = self._zero_anchors()
        super().on_fit_start(trainer, pl_module)
        if self._fresh:
            self._remove_components()
            self._fresh = False

    @override
    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        if self.num_steps - self._last_grow >= self.every_n_steps:
            self._last_grow = self.num_steps
            self._grow(trainer, pl_module)

    # ---- growth ----------------------------------------------------------------------------------------------
    def _lora_scaling(self, pl_module: LightningModule) -> float:
        if self.scaling is not None:
            return float(self.scaling)
        named = dict(pl_module.named_modules())
        found = set()
        for key in (k for s in self.sides for k in self._keys[s]):
            module, adapter = key.rsplit(".lora_", 1)[0], key.rsplit(".", 1)[1]
            scale = getattr(named.get(module), "scaling", None)
            if isinstance(scale, Mapping) and adapter in scale:
                found.add(float(scale[adapter]))
        if len(found) != 1:
            raise ValueError(f"cannot read one LoRA scaling from the modules (found {sorted(found)}): pass scaling")
        return found.pop()

    def _zero_anchors(self) -> dict[str, dict[str, torch.Tensor]]:
        """GradientProjection's anchors that hold every factor's subspace components at zero (no key = zero)."""
        return {k: {} for s in self.sides for k in self._keys[s]}

    @torch.no_grad()
    def _remove_components(self) -> float:
        """``B <- (I - UUᵀ)B``, ``A <- A(I - VVᵀ)`` on every target now; the norm of what was removed."""
        removed = 0.0
        for t in self._targets:
            removed += float(project_in_place(t.weight, t.u, t.v))
            if t.bias is not None:
                removed += float(project_in_place(t.bias, t.u, None))
        return math.sqrt(removed)

    @torch.no_grad()
    def _grow(self, trainer: Trainer, pl_module: LightningModule) -> None:
        assert self._shared is not None
        found: dict[str, tuple[torch.Tensor, list[float]]] = {}
        if any(b is None or b.shape[1] < self.max_rank for b in self._shared.values()):
            params = {n: p for n, p in pl_module.named_parameters() if p.requires_grad}
            cols, rows = stacked_factors(lora_pairs(params), self._scale, self.writers, self.readers)
            for s, factors in (("output", cols), ("input", rows)):
                if s in self.sides:
                    new = _new_directions(list(factors.values()), self._shared[s], self.grow_by, self.max_rank)
                    if new is not None:
                        found[s] = new
            found = trainer.strategy.broadcast(found, src=0)
        for s, (new, _) in found.items():
            cur = self._shared[s]
            self._shared[s] = new if cur is None else torch.cat([cur, new], dim=1)
        removed = 0.0
        if found:
            self.set_subspace(trainer, pl_module, self._expanded(), self._zero_anchors())
            for s in found:  # keep exactly the (re-orthonormalised) basis projected, so a resume is bitwise equal
                self._shared[s] = next(iter(self._bases[s].values())).clone()
            removed = self._remove_components()
        kw: dict[str, Any] = {"on_step": True, "on_epoch": False, "batch_size": 1, "logger": bool(trainer.loggers)}
        for s in self.sides:
            suffix = "" if s == self.sides[0] else "_input"
            rank = 0 if self._shared[s] is None else self._shared[s].shape[1]
            pl_module.log(f"grasp/rank{suffix}", float(rank), **kw)
            if s in found:
                sigmas = found[s][1]
                for j, sigma in enumerate(sigmas):
                    pl_module.log(f"grasp/new_sigma{suffix}" + (f"_{j + 1}" if j else ""), sigma, **kw)
                self.history.append({"step": self.num_steps, "side": s, "rank": rank, "new_sigma": sigmas,
                                     "removed_norm": removed})  # fmt: skip

    # ---- checkpoints -----------------------------------------------------------------------------------------
    @override
    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "shared": self._shared, "last_grow": self._last_grow, "history": self.history}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Resume with the checkpoint's grown subspace and step counters (restored before ``on_fit_start``)."""
        self._bases = None  # the grown subspace differs from the initial one by design: no warning
        super().load_state_dict(state_dict)
        self._shared = state_dict["shared"]
        self._fresh = False
        self._last_grow = int(state_dict["last_grow"])
        self.history = list(state_dict["history"])


def _new_directions(
    factors: list[torch.Tensor], current: torch.Tensor | None, grow_by: int, max_rank: int
) -> tuple[torch.Tensor, list[float]] | None:
    """Up to ``grow_by`` orthonormal directions ``[d, j]`` (float32) of the stacked update orthogonal to ``current``,
    with their singular values; ``None`` when the rank is capped or the orthogonal part is (numerically) zero."""
    d, k = factors[0].shape[0], 0 if current is None else current.shape[1]
    n = min(grow_by, max_rank - k, d - k)
    if n <= 0:
        return None
    cur = None if current is None else current.to(torch.float64)
    basis, sv = top_directions(factors, n, exclude=cur)
    scale = math.sqrt(sum(float(f.double().square().sum()) for f in factors))  # ≥ σ1 of the full stacking
    keep = sv[: basis.shape[1]] > 1e-6 * max(scale, 1e-30)
    if not bool(keep.any()):
        return None
    new = basis[:, keep]
    if cur is not None:  # re-orthogonalise (twice is enough) before rounding to float32
        for _ in range(2):
            new = new - cur @ (cur.T @ new)
    return orthonormalize(new, "new directions"), sv[: basis.shape[1]][keep].tolist()
