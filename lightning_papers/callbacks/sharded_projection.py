"""GradientProjection under sharded training: every rank projects its own shard, one all-reduce per step.

The projection of a targeted tensor ``W`` (viewed as ``[out, cols]``; a bias as ``[out, 1]``) needs only small
*components*: ``C_u = UᵀW`` (``[r_U, cols]``, a sum over rows), ``C_b = Uᵀb`` and ``C_v = W V`` (``[out, r_V]``, a
sum over columns). A rank holding the rows ``R`` and columns ``K`` of ``W`` adds ``U[R]ᵀ W[R, K]`` into
``C_u[:, K]`` and ``W[R, K] V[K]`` into ``C_v[R]``; the components of *all* targets of an optimizer are
concatenated and summed with **one** ``all_reduce`` per optimizer step. With ``D_u = C_u - A_u`` (``A`` the
anchors of update mode, zero in grad mode) each rank then applies, on its own block only,

    W[R, K] -= U[R] · D_u[:, K]                                  (output side)
    W[R, K] -= (C_v[R] - A_v[R] - U[R] · (D_u V)) · V[K]ᵀ          (input side, after the output side)

which is :func:`~lightning_papers.callbacks.gradient_projection.project_in_place` restricted to the block. The
removed squared norm, ``‖D_u‖² + ‖C_b - A_b‖² + ‖C_v - A_v‖² - ‖D_u V‖²``, comes from the reduced components, so
every rank knows it without a further collective.

Layouts (:class:`Layout`): a DTensor (FSDP2 ``fully_shard``, tensor parallelism) with ``Shard(0)`` / ``Shard(1)``
(2-D) / ``Replicate`` placements, where a replica adds its block only at coordinate 0 of every replicated mesh
dimension so that the world-wide sum counts each element once; and FSDP1 with ``use_orig_params=True``, where the
original parameter (and its ``.grad``) is a 1-D view of the elements ``[start, end)`` of its row-major flattening
that lie in this rank's shard of the flat parameter (possibly part of a row, possibly none), handled as the rows
``start // cols .. (end - 1) // cols`` with the missing elements zero-padded.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

_HYBRID = ("HYBRID_SHARD", "_HYBRID_SHARD_ZERO2")
_SHARDED = {"FSDPStrategy", "ModelParallelStrategy"}


def _names(strategy: object) -> set[str]:
    return {c.__name__ for c in type(strategy).__mro__}


def is_sharded(strategy: object) -> bool:
    """Whether ``strategy`` shards parameters (Lightning's ``FSDPStrategy`` or ``ModelParallelStrategy``)."""
    return bool(_names(strategy) & _SHARDED)


def refuse_unsupported(strategy: Any) -> None:
    """Raise RuntimeError, naming the strategy and what to use instead, for layouts the projection cannot reach."""
    name = type(strategy).__name__
    if _names(strategy) & {"DeepSpeedStrategy", "XLAFSDPStrategy"}:
        raise RuntimeError(
            f"GradientProjection does not support {name}: it keeps partitioned gradients and weights in its own "
            "flat buffers, outside `param.grad` and the optimizer's parameters, where the callback cannot project "
            "them. Use FSDPStrategy (use_orig_params=True), ModelParallelStrategy with fully_shard in "
            "configure_model, or strategy='ddp'."
        )
    if "FSDPStrategy" in _names(strategy):
        kwargs = getattr(strategy, "kwargs", {})
        if kwargs.get("use_orig_params") is False:
            raise RuntimeError(f"GradientProjection under {name} needs use_orig_params=True (Lightning's default): "
                               "with False the optimizer sees only flat parameters, not the targeted weights")
        sharding = getattr(getattr(strategy, "sharding_strategy", None), "name", "")
        if sharding in _HYBRID:
            raise RuntimeError(f"GradientProjection does not support {name}(sharding_strategy={sharding!r}): use "
                               "FULL_SHARD or SHARD_GRAD_OP, or ModelParallelStrategy (FSDP2) with a 2-D device mesh")


class Layout:
    """Where this rank's local piece of one parameter (and of its gradient) lies in the global ``[out, cols]`` view.

    Args:
        shape: The global shape of the parameter.
        rows, cols: The block ``[rows[0]:rows[1], cols[0]:cols[1]]`` of the ``[out, cols]`` view held here.
        flat: For an FSDP1 shard, the global row-major element range ``[start, end)`` held here (else None).
        contributes: Whether this rank's block enters the world-wide sum (False for replicas but one).
    """

    def __init__(self, shape: torch.Size, rows: tuple[int, int], cols: tuple[int, int],
                 flat: tuple[int, int] | None, contributes: bool) -> None:
        self.shape, self.rows, self.cols, self.flat, self.contributes = torch.Size(shape), rows, cols, flat, contributes
        self.width = math.prod(self.shape[1:]) if len(self.shape) > 1 else 1

    def local(self, t: torch.Tensor | None) -> torch.Tensor | None:
        """The local tensor of ``t`` (a DTensor's local shard; an FSDP1 view as is), checked against the layout."""
        if t is None:
            return None
        local = t._local_tensor if hasattr(t, "_local_tensor") else t
        n = (self.flat[1] - self.flat[0]) if self.flat is not None else \
            (self.rows[1] - self.rows[0]) * (self.cols[1] - self.cols[0])
        if local.numel() != n:
            raise RuntimeError(f"GradientProjection: a local shard has {local.numel()} elements where its layout "
                               f"expects {n}; the strategy changed the parameter's sharding after fit start")
        return local

    def block(self, local: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """A dense ``[rows, cols]`` working copy of ``local`` (zero-padded for a partial FSDP1 row)."""
        nr, nc = self.rows[1] - self.rows[0], self.cols[1] - self.cols[0]
        if self.flat is None:
            return local.detach().to(dtype).contiguous().view(nr, nc)  # no copy for a contiguous tensor of `dtype`
        buf = torch.zeros(nr * nc, dtype=dtype, device=local.device)
        start = self.flat[0] - self.rows[0] * self.width
        buf[start:start + local.numel()] = local.detach().reshape(-1)
        return buf.view(nr, nc)

    def write(self, local: torch.Tensor, block: torch.Tensor) -> None:
        """Copy the projected ``block`` back into ``local`` (nothing to do if the block aliases it)."""
        if self.flat is not None:
            start = self.flat[0] - self.rows[0] * self.width
            local.detach().copy_(block.reshape(-1)[start:start + local.numel()].view_as(local))
        elif block.data_ptr() != local.data_ptr():
            local.detach().copy_(block.view_as(local))


def dtensor_layout(p: torch.Tensor, name: str) -> Layout:
    """The layout of a DTensor parameter: ``Shard(0)``, ``Shard(1)`` (2-D only) and ``Replicate`` are supported."""
    from torch.distributed.tensor import Shard
    from torch.distributed.tensor._utils import compute_local_shape_and_global_offset

    mesh, placements = p.device_mesh, p.placements
    coordinate = mesh.get_coordinate()
    contributes = coordinate is not None
    for i, pl in enumerate(placements):
        if pl.is_replicate():
            contributes = contributes and coordinate[i] == 0
        elif not (type(pl) is Shard and (pl.dim == 0 or (pl.dim == 1 and p.ndim == 2))):
            raise ValueError(f"GradientProjection: {name!r} is a DTensor with placements {tuple(placements)}; "
                             "supported are Shard(0), Shard(1) of a 2-D weight and Replicate")
    shape, offset = compute_local_shape_and_global_offset(p.shape, mesh, placements)
    rows = (offset[0], offset[0] + shape[0])
    cols = (offset[1], offset[1] + shape[1]) if p.ndim == 2 else (0, math.prod(p.shape[1:]) if p.ndim > 1 else 1)
    return Layout(p.shape, rows, cols, None, contributes)


def fsdp1_layouts(root: nn.Module) -> dict[int, Layout]:
    """``{id(original parameter): Layout}`` for every parameter inside an FSDP1 (``FullyShardedDataParallel``)."""
    from torch.distributed.fsdp import FullyShardedDataParallel

    out: dict[int, Layout] = {}
    for m in root.modules():
        handle = getattr(m, "_handle", None) if isinstance(m, FullyShardedDataParallel) else None
        if handle is None:
            continue
        fp = handle.flat_param
        if fp._params is None:
            raise ValueError("GradientProjection under FSDPStrategy needs use_orig_params=True (the optimizer and "
                             "the callback address the original parameters; peft needs it too)")
        if handle._sharding_strategy.name in _HYBRID:
            raise ValueError(f"GradientProjection does not support FSDP1's {handle._sharding_strategy.name}: use "
                             "FULL_SHARD / SHARD_GRAD_OP, or ModelParallelStrategy (FSDP2) with a 2-D device mesh")
        contributes = handle.uses_sharded_strategy or dist.get_rank() == 0  # NO_SHARD: every rank has it all
        for p, info, shape in zip(fp._params, fp._shard_param_infos, fp._shapes):
            width = math.prod(shape[1:]) if len(shape) > 1 else 1
            if not info.in_shard:
                out[id(p)] = Layout(shape, (0, 0), (0, width), (0, 0), False)
                continue
            start, end = info.intra_param_start_idx, info.intra_param_end_idx + 1
            out[id(p)] = Layout(shape, (start // width, (end - 1) // width + 1), (0, width), (start, end), contributes)
    return out


def layout_of(p: torch.Tensor, name: str, fsdp1: dict[int, Layout]) -> Layout:
    """The layout of a targeted parameter under a sharded strategy; a plain, unsharded one is refused."""
    if hasattr(p, "device_mesh") and hasattr(p, "placements"):
        return dtensor_layout(p, name)
    if id(p) in fsdp1:
        return fsdp1[id(p)]
    raise ValueError(f"GradientProjection: {name!r} is neither a DTensor nor inside an FSDP unit under a sharded "
                     "strategy, so its replicas are not kept in sync; apply fully_shard (ModelParallelStrategy) to "
                     "the module holding it in configure_model, or do not exclude it from FSDP wrapping")


class ShardedTarget:
    """One targeted module under sharding: its layouts, the rows of ``U`` it holds, and the components' sizes."""

    def __init__(self, name: str, weight: torch.Tensor, bias: torch.Tensor | None, u: torch.Tensor | None,
                 v: torch.Tensor | None, fsdp1: dict[int, Layout]) -> None:
        self.name, self.weight, self.bias, self.v = name, weight, bias, v
        self.wl = layout_of(weight, name, fsdp1)
        self.bl = layout_of(bias, name + ".bias", fsdp1) if bias is not None else None
        # only the rows of U this rank's shards hold stay on the device (U is sharded as its parameter is)
        self.u_w = None if u is None else u[self.wl.rows[0]:self.wl.rows[1]].clone()
        self.u_b = None if u is None or self.bl is None else u[self.bl.rows[0]:self.bl.rows[1]].clone()
        self.r_u = 0 if u is None else u.shape[1]
        self.dtype = (u if u is not None else v).dtype
        out, width = self.wl.shape[0], self.wl.width
        self.sizes = {"w_u": self.r_u * width if u is not None else 0, "b_u": self.r_u if self.u_b is not None else 0,
                      "w_v": out * v.shape[1] if v is not None else 0, "total": 1}
        self.anchor: dict[str, torch.Tensor] = {}

    def _pairs(self, grads: bool) -> list[tuple[Layout, torch.Tensor | None, torch.Tensor | None, bool]]:
        """(layout, local tensor, local rows of U, is_bias) for the weight and the bias."""
        pairs = [(self.wl, self.wl.local(self.weight.grad if grads else self.weight), self.u_w, False)]
        if self.bl is not None:
            pairs.append((self.bl, self.bl.local(self.bias.grad if grads else self.bias), self.u_b, True))
        return pairs

    def partials(self, grads: bool, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        """This rank's contribution to the components (and to the squared norm), flattened in ``sizes`` order."""
        c = {k: torch.zeros(n, dtype=self.dtype, device=self.weight.device) for k, n in self.sizes.items()}
        for layout, local, u, is_bias in self._pairs(grads):
            if local is None or not layout.contributes or local.numel() == 0:
                continue
            blk = layout.block(local, self.dtype)
            (r0, r1), (k0, k1) = layout.rows, layout.cols
            c["total"] += blk.square().sum()
            if is_bias:
                c["b_u"] += (u.T @ blk).view(-1)
                continue
            if u is not None:
                c["w_u"].view(self.r_u, -1)[:, k0:k1] += u.T @ blk
            if self.v is not None:
                c["w_v"].view(layout.shape[0], -1)[r0:r1] += blk @ self.v[k0:k1]
        return torch.cat([c[k] for k in self.sizes]).to(device, dtype)

    def apply(self, comps: dict[str, torch.Tensor], grads: bool) -> torch.Tensor:
        """Project this rank's blocks with the reduced components; the squared norm removed (same on every rank)."""
        a = {} if grads else self.anchor
        removed = comps["w_u"].new_zeros(())
        du = dv = None
        if self.u_w is not None:
            du = comps["w_u"].view(self.r_u, -1) - a.get("w_u", 0.0)
            removed = removed + du.square().sum()
        if self.v is not None:
            dv = comps["w_v"].view(self.wl.shape[0], -1) - a.get("w_v", 0.0)
            removed = removed + dv.square().sum() - ((du @ self.v).square().sum() if du is not None else 0.0)
        db = None
        if self.u_b is not None:
            db = comps["b_u"] - a.get("b_u", 0.0)
            removed = removed + db.square().sum()
        for layout, local, u, is_bias in self._pairs(grads):
            if local is None or local.numel() == 0:
                continue
            blk = layout.block(local, self.dtype)
            (r0, r1), (k0, k1) = layout.rows, layout.cols
            if is_bias:
                blk.addmm_(u, db.view(-1, 1), alpha=-1.0)
            else:
                if du is not None:
                    blk.addmm_(u, du[:, k0:k1], alpha=-1.0)
                if dv is not None:
                    cv = dv[r0:r1] - (u @ (du @ self.v) if du is not None else 0.0)
                    blk.addmm_(cv, self.v[k0:k1].T, alpha=-1.0)
            layout.write(local, blk)
        return removed.clamp_min(0.0)


def reduce_components(targets: list[ShardedTarget], grads: bool, device: torch.device) -> list[dict[str, Any]]:
    """Every target's global components, summed over ranks with one ``all_reduce`` of one concatenated buffer."""
    if not targets:  # the same on every rank: no collective to skip
        return []
    dtype = torch.float64 if any(t.dtype == torch.float64 for t in targets) else torch.float32
    buf = torch.cat([t.partials(grads, device, dtype) for t in targets])
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(buf)
    out, i = [], 0
    for t in targets:
        comps: dict[str, Any] = {}
        for k, n in t.sizes.items():
            comps[k] = buf[i:i + n].to(t.weight.device, t.dtype)
            i += n
        out.append(comps)
    return out


def anchors_of(targets: list[ShardedTarget], device: torch.device) -> dict[str, dict[str, torch.Tensor]]:
    """Update mode's anchors ``UᵀW₀``, ``Uᵀb₀``, ``W₀V`` (global, identical on every rank; one collective)."""
    result = {}
    for t, comps in zip(targets, reduce_components(targets, grads=False, device=device)):
        a = {}
        if t.sizes["w_u"]:
            a["w_u"] = comps["w_u"].view(t.r_u, -1).cpu()
        if t.sizes["b_u"]:
            a["b_u"] = comps["b_u"].cpu()
        if t.sizes["w_v"]:
            a["w_v"] = comps["w_v"].view(t.wl.shape[0], -1).cpu()
        result[t.name] = a
    return result


def project_sharded(targets: list[ShardedTarget], grads: bool, device: torch.device
                    ) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Project all ``targets`` (gradients or parameters) with one collective; (removed², total²) over all targets."""
    if not targets:
        return None
    removed = total = None
    with torch.no_grad():
        for t, comps in zip(targets, reduce_components(targets, grads, device)):
            r, tot = t.apply(comps, grads), comps["total"].sum()
            removed = r if removed is None else removed + r.to(removed.device)
            total = tot if total is None else total + tot.to(total.device)
    return removed, total


def clean_name(name: str) -> str:
    """A module name with FSDP1's and activation checkpointing's wrapper levels removed."""
    for wrapper in ("_fsdp_wrapped_module.", "_checkpoint_wrapped_module."):
        name = name.replace(wrapper, "")
    return name
