"""Judging an identified subspace causally, not by its cosine with one "true" vector (GRASP on a real LM).

On a real model a persona has no single ground-truth direction: two mean-difference vectors that are each causal
when steered (instruction-conditioned vs continuation-token differences) can be nearly orthogonal. So an
identification (``identify``, arXiv 2605.27676's unsupervised step) is judged by what it does and by an
independent fine-tune, three ways (``docs/grasp.md``, "A real LM"):

* **steering**: add ``coef · u`` to the base model's residual stream after the adapted layers and measure the
  persona log-likelihood ratio on unrelated prompts (``steering_drift``): a persona direction makes the base model
  drift towards the persona, a random one does not;
* **agreement with a control fine-tune**: the same task with neutral answers gives ``ΔW_control``; the top writer
  directions of ``ΔW_naive − ΔW_control`` are the persona part of the naive update, and ``subspace_overlap`` says
  how much of them the identified subspace holds (``lora_difference`` forms that difference in LoRA factors);
* **drift left after removal**: the persona measures of the GRASP run (or of the naive model with the subspace
  ablated at inference), from ``persona_eval``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from lightning_papers.methods.grasp.identify import WRITERS, lora_pairs, stacked_factors, top_directions


def lora_difference(naive: Mapping[str, torch.Tensor], control: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """LoRA pairs whose update ``B A`` is ``B_n A_n − B_c A_c`` for every module of both states (same scaling):
    ``A = [A_n; A_c]``, ``B = [B_n, −B_c]`` (rank ``r_n + r_c``), in float64."""
    pn, pc = lora_pairs(naive), lora_pairs(control)
    if set(pn) != set(pc):
        only = sorted({m for m, _ in set(pn) ^ set(pc)})
        raise ValueError(f"the two fine-tunes adapt different modules; only in one of them: {only[:4]}")
    if not pn:
        raise ValueError("no LoRA pairs (<module>.lora_A/lora_B.<adapter>.weight) in the naive state")
    out = {}
    for (module, adapter), (a_n, b_n) in pn.items():
        a_c, b_c = pc[(module, adapter)]
        out[f"{module}.lora_A.{adapter}.weight"] = torch.cat([a_n, a_c], 0)
        out[f"{module}.lora_B.{adapter}.weight"] = torch.cat([b_n, -b_c], 1)
    return out


def writer_directions(state: Mapping[str, torch.Tensor], scaling: float, rank: int,
                      writers: Sequence[str] = WRITERS) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """Top-``rank`` left singular vectors ``[d, rank]`` and the spectrum of the stacked writer updates of ``state``."""
    if rank < 1:
        raise ValueError(f"rank must be >= 1, got {rank}")
    cols, _ = stacked_factors(lora_pairs(state), scaling, writers, readers=())
    if not cols:
        raise ValueError(f"no writer modules {tuple(writers)} among the LoRA pairs")
    return top_directions(list(cols.values()), rank)


def subspace_overlap(basis: torch.Tensor, vectors: torch.Tensor) -> torch.Tensor:
    """Share of each column of ``vectors [d, j]`` that lies in ``span(basis [d, k])``: ``‖Qᵀ v‖² / ‖v‖²`` in [0, 1]
    (1: inside; a random k-dim subspace of R^d holds k/d on average)."""
    basis, vectors = torch.as_tensor(basis, dtype=torch.float64), torch.as_tensor(vectors, dtype=torch.float64)
    if basis.ndim == 1:
        basis = basis[:, None]
    if vectors.ndim == 1:
        vectors = vectors[:, None]
    if basis.shape[0] != vectors.shape[0]:
        raise ValueError(f"basis has {basis.shape[0]} features, vectors have {vectors.shape[0]}")
    q = torch.linalg.qr(basis)[0]
    return (q.T @ vectors).square().sum(0) / vectors.square().sum(0).clamp_min(1e-300)


@torch.no_grad()
def steering_drift(model: nn.Module, tok: Any, rows: Sequence[Mapping[str, str]], direction: torch.Tensor,
                   layers: Sequence[int], coef: float, batch_size: int = 8) -> float:  # fmt: skip
    """Persona LLR of ``model`` on ``rows`` (``prompt``/``persona``/``neutral``) with ``coef · v`` added to the residual
    stream after each of ``layers`` (``v`` = the unit column of ``direction``), minus the LLR without steering.

    Pass the base model (for a peft model, call this inside ``model.disable_adapter()``).
    """
    from lightning_papers.methods.grasp.persona_eval import persona_llr
    from lightning_papers.methods.grasp.steering import residual_intervention

    direction = torch.as_tensor(direction, dtype=torch.float32)
    if direction.ndim == 2:
        if direction.shape[1] != 1:
            raise ValueError(f"steer along one direction at a time, got {direction.shape[1]} columns")
        direction = direction[:, 0]
    cols = [[r[k] for r in rows] for k in ("prompt", "persona", "neutral")]
    was_training = model.training
    model.eval()
    try:
        plain = persona_llr(model, tok, *cols, batch_size=batch_size)
        with residual_intervention(model, direction / direction.norm(), layers, "add", coef):
            steered = persona_llr(model, tok, *cols, batch_size=batch_size)
    finally:
        model.train(was_training)
    return steered - plain
