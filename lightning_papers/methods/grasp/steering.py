"""Residual-stream interventions used by the GRASP baselines: directional ablation and additive steering.

Hook convention (stated because it is the most common source of silent errors): the hooks sit
on the *output of whole decoder layers* (``model.layers[i]``), i.e. on the residual stream after layer ``i``,
which Hugging Face returns as ``hidden_states[i + 1]``.

* ``ablate``: h <- (I - V Vᵀ) h, with V [d_model, r] orthonormal (Soligo et al.; CAFT at training time).
* ``add``: h <- h + c · V[:, 0] (persona vectors' preventative steering, with coefficient c).

All functions work on any ``nn.Module`` that contains a decoder-layer ``nn.ModuleList`` named ``layers``/``h``.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Literal

import torch
from torch import nn

from lightning_papers.methods.grasp.subspace import SpuriousSubspace, orthonormalize

SteerMode = Literal["ablate", "add"]


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The decoder-layer list of a (possibly peft-wrapped) Hugging Face causal LM."""
    found = [
        m
        for name, m in model.named_modules()
        if isinstance(m, nn.ModuleList) and name.split(".")[-1] in ("layers", "h")
    ]
    if len(found) != 1:
        raise ValueError(f"expected exactly one decoder-layer ModuleList named 'layers' or 'h', found {len(found)}")
    return found[0]


def ablate(h: torch.Tensor, basis: torch.Tensor) -> torch.Tensor:
    """Remove the component of the last axis of ``h`` along the orthonormal columns of ``basis`` [d, r]."""
    b = basis.to(h.dtype)
    return h - (h @ b) @ b.T


def _edit(mode: SteerMode, basis: torch.Tensor, coef: float):  # noqa: ANN202 - a forward hook
    def hook(module: nn.Module, args: tuple, output: torch.Tensor | tuple) -> torch.Tensor | tuple:
        h = output[0] if isinstance(output, tuple) else output
        b = basis.to(device=h.device, dtype=h.dtype)
        new = ablate(h, b) if mode == "ablate" else h + coef * b[:, 0]
        return (new, *output[1:]) if isinstance(output, tuple) else new

    return hook


def add_residual_hooks(
    model: nn.Module, direction: torch.Tensor, layers: Sequence[int], mode: SteerMode, coef: float = 0.0
) -> list[torch.utils.hooks.RemovableHandle]:
    """Register forward hooks that ablate (``mode="ablate"``) or add ``coef·v`` (``mode="add"``) after ``layers``.

    Returns the hook handles; call ``.remove()`` on each to undo.
    """
    if mode not in ("ablate", "add"):
        raise ValueError(f"mode must be 'ablate' or 'add', got {mode!r}")
    blocks = decoder_layers(model)
    basis = orthonormalize(direction, "direction")
    d_model = getattr(getattr(model, "config", None), "hidden_size", None)
    if d_model is not None and basis.shape[0] != d_model:
        raise ValueError(f"direction has {basis.shape[0]} features but the model's hidden_size is {d_model}")
    bad = [i for i in layers if not -len(blocks) <= i < len(blocks)]
    if bad or not layers:
        raise ValueError(
            f"layers must be a non-empty list of indices into {len(blocks)} decoder layers, got {list(layers)}"
        )
    return [blocks[i].register_forward_hook(_edit(mode, basis, coef)) for i in layers]


@contextmanager
def residual_intervention(
    model: nn.Module, direction: torch.Tensor, layers: Sequence[int], mode: SteerMode, coef: float = 0.0
) -> Iterator[None]:
    """Context manager form of :func:`add_residual_hooks` (hooks removed on exit, also on error)."""
    handles = add_residual_hooks(model, direction, layers, mode, coef)
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def load_direction(path: str | Path) -> torch.Tensor:
    """A residual-stream direction [d_model, r] from a file.

    Accepts a subspace saved by ``identify`` (its ``direction`` field) or a ``torch.save``-d tensor / dict with a
    ``"direction"`` entry.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"direction file {str(path)!r} does not exist; make it with "
            "`python -m lightning_papers.methods.grasp.identify --ckpt <naive.ckpt> --out <file>`"
        )
    obj = torch.load(path, map_location="cpu", weights_only=False)
    if isinstance(obj, dict) and "direction" in obj:
        obj = obj["direction"]
    elif hasattr(obj, "direction"):
        obj = obj.direction
    elif not isinstance(obj, torch.Tensor):
        try:
            obj = SpuriousSubspace.load(path).direction
        except Exception as err:  # noqa: BLE001 - report the original format problem below
            raise ValueError(f"{path}: expected a SpuriousSubspace, a tensor or a dict with 'direction'") from err
    if obj is None or not isinstance(obj, torch.Tensor):
        raise ValueError(f"{path}: holds no residual-stream direction (identify stores it as `direction`)")
    return obj.float() if obj.ndim == 2 else obj.float()[:, None]


@torch.no_grad()
def mean_write_sign(
    model: nn.Module,
    base_forward: nn.Module | None,
    batches: Sequence[dict[str, torch.Tensor]],
    direction: torch.Tensor,
    layer: int,
) -> float:
    """Sign (+1/-1) that orients ``direction`` along the fine-tune's mean residual change (unsupervised).

    Compares the residual stream after ``layer`` of the fine-tuned ``model`` and of ``base_forward`` (the same
    model with its adapter disabled, or ``None`` to use ``model.disable_adapter()`` of a peft model) on completion
    tokens of training ``batches``, and orients v so that the adapter's mean write along it is positive (no labels).
    Needed only by baselines that *add* the direction.
    """
    v = orthonormalize(direction, "direction")[:, 0]
    tot = 0.0
    for batch in batches:
        mask = batch["labels"] != -100
        kw = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"], "output_hidden_states": True}
        h_ft = model(**kw).hidden_states[layer + 1]
        if base_forward is None:
            with model.disable_adapter():
                h_base = model(**kw).hidden_states[layer + 1]
        else:
            h_base = base_forward(**kw).hidden_states[layer + 1]
        tot += float(((h_ft - h_base)[mask] @ v.to(h_ft.device, h_ft.dtype)).sum())
    return 1.0 if tot >= 0 else -1.0
