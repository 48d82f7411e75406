"""The spurious subspace GRASP removes, and the projections that remove it (plain torch, no Trainer needed).

Convention (the usual ``nn.Linear`` one, weight ``[out, in]``):

* an **output-side** basis ``U [out, r]`` acts on the weight's *rows*: ``W <- (I - U Uᵀ) W``
  (and ``b <- (I - U Uᵀ) b``), so nothing the module adds to its output lies along ``span(U)``;
* an **input-side** basis ``V [in, r]`` acts on the weight's *columns*: ``W <- W (I - V Vᵀ)``, so the module ignores
  the part of its input along ``span(V)``.

For a peft LoRA module ``y = W0 x + s·B A x`` the projected modules are the factors themselves: the output side
acts on ``B`` (``lora_B.<adapter>``, weight ``[out, r]``) and the input side on ``A`` (``lora_A.<adapter>``, weight
``[r, in]``). peft initialises ``B = 0``, so keeping ``Uᵀ B = 0`` keeps the whole adapter delta ``s·B A`` out of
``span(U)`` while the frozen ``W0`` keeps its own use of it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

_FORMAT = "lightning_papers.grasp.SpuriousSubspace/1"


def orthonormalize(basis: torch.Tensor, name: str = "basis") -> torch.Tensor:
    """``[d]`` or ``[d, r]`` -> ``[d, r]`` float32 orthonormal columns with the same span (QR).

    Only the span matters for a projection, so a single unnormalised direction is accepted. Raises ValueError on
    a non-finite, zero or rank-deficient input, or when ``r > d``.
    """
    if not isinstance(basis, torch.Tensor):
        raise ValueError(f"{name}: expected a tensor, got {type(basis).__name__}")
    b = basis.detach().to("cpu", torch.float64)
    if b.ndim == 1:
        b = b[:, None]
    if b.ndim != 2 or b.shape[1] == 0 or b.shape[1] > b.shape[0]:
        raise ValueError(f"{name}: expected shape [features] or [features, r] with 1 <= r <= features, "
                         f"got {tuple(basis.shape)}")
    if not torch.isfinite(b).all():
        raise ValueError(f"{name}: basis has non-finite entries")
    q, r = torch.linalg.qr(b)
    diag = r.diagonal().abs()
    if (diag <= 1e-6 * max(float(b.norm()), 1e-30)).any() or float(b.norm()) == 0.0:
        raise ValueError(f"{name}: basis columns are zero or linearly dependent (shape {tuple(basis.shape)})")
    return (q * torch.sign(r.diagonal())[None, :]).to(torch.float32).contiguous()


def output_component(t: torch.Tensor, basis: torch.Tensor) -> torch.Tensor:
    """``U Uᵀ t`` for ``t`` of shape ``[out, ...]`` (rows of a weight, or a bias) and ``U`` ``[out, r]``."""
    flat = t.reshape(t.shape[0], -1)
    return (basis @ (basis.T @ flat)).reshape(t.shape)


def input_component(t: torch.Tensor, basis: torch.Tensor) -> torch.Tensor:
    """``t V Vᵀ`` for a 2-D weight ``t`` ``[out, in]`` and ``V`` ``[in, r]``."""
    return (t @ basis) @ basis.T


def remove_output(t: torch.Tensor, basis: torch.Tensor) -> torch.Tensor:
    """``(I - U Uᵀ) t``: ``t`` without its component along the output-side subspace (returns a new tensor)."""
    return t - output_component(t, basis)


def remove_input(t: torch.Tensor, basis: torch.Tensor) -> torch.Tensor:
    """``t (I - V Vᵀ)``: ``t`` without its component along the input-side subspace (returns a new tensor)."""
    return t - input_component(t, basis)


def resolve_module(named: Mapping[str, nn.Module], key: str) -> tuple[str, nn.Module]:
    """The module called ``key``: an exact ``named_modules()`` name or, failing that, a unique dotted suffix.

    ``layers.3.self_attn.o_proj.lora_B.default`` matches ``model.base_model.model.model.layers.3.self_attn.o_proj
    .lora_B.default``. Raises ValueError naming ``key`` when it matches nothing or several modules.
    """
    if key in named:
        return key, named[key]
    hits = [n for n in named if n.endswith("." + key)]
    if len(hits) == 1:
        return hits[0], named[hits[0]]
    if not hits:
        last = key.split(".")[-1]
        near = [n for n in named if n.split(".")[-1] == last][:5]
        hint = f" Modules with the same last name: {near}." if near else ""
        raise ValueError(f"subspace key {key!r} matches no module of the LightningModule (exact name or dotted "
                         f"suffix of a `named_modules()` name).{hint}")
    raise ValueError(f"subspace key {key!r} is ambiguous: it is a suffix of {len(hits)} modules {hits[:5]}; "
                     "use a longer (or the full) module name")


@dataclass
class SpuriousSubspace:
    """Per-module bases of the spurious subspace found by ``identify`` (or built by hand).

    Attributes:
        output: module name -> ``[out_features, r]`` orthonormal columns; acts on the weight's rows (writers).
        input: module name -> ``[in_features, r]`` orthonormal columns; acts on the weight's columns (readers).
        singular_values: per LoRA-targeted module (its name without ``.lora_A/B``), the singular values of the
            scaled update ``s·B·A``, descending.
        direction: the aggregated residual-stream basis ``[d_model, r]`` found by ``identify`` (writer side).
        report: diagnostics: spectral gap σ1/σ2 of the stacked writer updates, per-module rows, settings.
    """

    output: dict[str, torch.Tensor] = field(default_factory=dict)
    input: dict[str, torch.Tensor] = field(default_factory=dict)
    singular_values: dict[str, torch.Tensor] = field(default_factory=dict)
    direction: torch.Tensor | None = None
    report: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.output = {k: orthonormalize(v, f"output[{k!r}]") for k, v in dict(self.output).items()}
        self.input = {k: orthonormalize(v, f"input[{k!r}]") for k, v in dict(self.input).items()}
        if self.direction is not None:
            self.direction = orthonormalize(self.direction, "direction")

    def bases(self, side: str) -> dict[str, torch.Tensor]:
        """The bases of one side (``"output"`` or ``"input"``)."""
        if side not in ("output", "input"):
            raise ValueError(f"side must be 'output' or 'input', got {side!r}")
        return self.output if side == "output" else self.input

    # ---- files ---------------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """Plain CPU tensors / Python values (what ``save`` writes)."""
        return {
            "format": _FORMAT,
            "output": {k: v.cpu() for k, v in self.output.items()},
            "input": {k: v.cpu() for k, v in self.input.items()},
            "singular_values": {k: v.cpu() for k, v in self.singular_values.items()},
            "direction": None if self.direction is None else self.direction.cpu(),
            "report": self.report,
        }

    def save(self, path: str | Path) -> None:
        """Write the subspace with ``torch.save`` (loadable with ``weights_only=True``)."""
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        torch.save(self.to_dict(), str(path))

    @classmethod
    def load(cls, path: str | Path) -> SpuriousSubspace:
        """Read a file written by ``save`` (or by ``python -m lightning_papers.methods.grasp.identify``)."""
        if not Path(path).is_file():
            raise FileNotFoundError(
                f"subspace file {str(path)!r} does not exist; create it with "
                "`python -m lightning_papers.methods.grasp.identify --ckpt <naive.ckpt> --out <file>`"
            )
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
        if not isinstance(obj, dict) or obj.get("format") != _FORMAT:
            raise ValueError(f"{path}: not a SpuriousSubspace file (expected a dict with format={_FORMAT!r})")
        return cls(
            output=obj["output"],
            input=obj["input"],
            singular_values=obj["singular_values"],
            direction=obj["direction"],
            report=obj["report"],
        )

    def report_text(self) -> str:
        """A human-readable summary: the spectral gaps, and singular values per module."""
        rep = self.report
        lines = ["GRASP spurious subspace"]
        for side in ("output", "input"):
            b = self.bases(side)
            ranks = sorted({v.shape[1] for v in b.values()})
            lines.append(f"  {side}-side bases: {len(b)} modules, rank {ranks or '-'}")
        for group in ("writers", "readers"):
            g = rep.get(group)
            if not g:
                continue
            sv = ", ".join(f"{s:.4g}" for s in g["stacked_singular_values"][:8])
            lines.append(f"  {group} ({len(g['modules'])} modules) stacked singular values: {sv}")
            lines.append(f"  {group} spectral gap sigma1/sigma2 = {_fmt(g['gap'])}"
                         + (f", sigma_r/sigma_(r+1) = {_fmt(g['gap_at_rank'])}" if g.get("rank", 1) > 1 else ""))
        rows = rep.get("modules", [])
        if rows:
            lines.append(f"  {'module':<60} {'role':<7} {'sigma1':>9} {'s1/s2':>7} {'|cos| dir':>9}")
            for row in rows:
                cos = "" if row.get("cos_direction") is None else f"{row['cos_direction']:.3f}"
                lines.append(f"  {row['module'][-60:]:<60} {row['role']:<7} {row['sv'][0]:>9.4g} "
                             f"{_fmt(row['gap']):>7} {cos:>9}")
        elif self.singular_values:
            for k, sv in self.singular_values.items():
                lines.append(f"  {k}: " + ", ".join(f"{s:.4g}" for s in sv[:6].tolist()))
        return "\n".join(lines)


def _fmt(x: float) -> str:
    return "inf" if math.isinf(x) else f"{x:.3g}"
