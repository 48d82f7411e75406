"""Ground-truth measurements in the planted-persona world (evaluation only; identification never sees them).

All metrics are teacher-forced on fixed prompt grids, so they are deterministic given the model:

* ``task``: answer accuracy on the fine-tune topic (topic 0, no marker, persona-B first style token) under the
  new rule ``perm(a)``;
* ``drift``: on the other topics without the marker, the persona-B share of style probability at the first style
  slot, P(B tokens) / (P(B tokens) + P(A tokens)); reported by the benchmark relative to the base model;
* ``marker``: the same share on the other topics *with* the role-play marker (preservation: the base is ~1);
* ``offtask_answer``: answer accuracy under the pretraining rule on the other topics (content preservation).

The true persona direction is the base model's mean residual difference (marker minus plain prompts) at the
``<sep>`` position, where the first style token is predicted, after a given decoder layer. In an offset world
(``World.offset > 0``) marker prompts are run through the same embedding offset as in pretraining
(``world.persona_offset_hook``), and the planted ``p`` itself is a second ground truth (``offset_vector``).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from lightning_papers.methods.grasp.planted.world import World, encode_rows, offset_vector, persona_offset_hook

SEP_POS = 4  # <bos> M t q <sep>: the <sep> position predicts the first style token
ANSWER_POS = 5  # the first style token's position predicts the answer


def _ids(tokenizer: Any, prefix: str, n: int) -> torch.Tensor:
    return torch.tensor(tokenizer.convert_tokens_to_ids([f"{prefix}{i}" for i in range(n)]))


def prompt_grid(world: World, topics: list[int], marker: bool, persona: str, task: bool) -> list[dict[str, str]]:
    """Every question of ``topics`` as (prompt, completion) rows: the fixed grids the metrics are read on."""
    return [world.row(k, a, marker, persona, task) for k in topics for a in range(world.n_questions)]


@torch.no_grad()
def _logits(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    device = next(model.parameters()).device
    out = model(input_ids=batch["input_ids"].to(device), attention_mask=batch["attention_mask"].to(device))
    return (out.logits if hasattr(out, "logits") else out).float().cpu()


def _b_share(logits: torch.Tensor, a_ids: torch.Tensor, b_ids: torch.Tensor) -> torch.Tensor:
    p = logits[:, SEP_POS].softmax(-1)
    pa, pb = p[:, a_ids].sum(-1), p[:, b_ids].sum(-1)
    return pb / (pa + pb).clamp_min(1e-12)


@torch.no_grad()
def evaluate(model: nn.Module, world: World, tokenizer: Any) -> dict[str, float]:
    """Task accuracy, off-task persona-B share (drift), marker following and off-task answer accuracy."""
    was_training = model.training
    model.eval()
    a_ids, b_ids = _ids(tokenizer, "x", world.n_style), _ids(tokenizer, "y", world.n_style)
    off = list(range(1, world.n_topics))
    res: dict[str, float] = {}

    batch = encode_rows(prompt_grid(world, [0], False, "B", True), tokenizer)
    pred = _logits(model, batch)[:, ANSWER_POS].argmax(-1)
    res["task"] = float((pred == batch["input_ids"][:, ANSWER_POS + 1]).float().mean())

    batch = encode_rows(prompt_grid(world, off, False, "A", False), tokenizer)
    logits = _logits(model, batch)
    res["drift"] = float(_b_share(logits, a_ids, b_ids).mean())
    res["offtask_answer"] = float(
        (logits[:, ANSWER_POS].argmax(-1) == batch["input_ids"][:, ANSWER_POS + 1]).float().mean()
    )

    batch = encode_rows(prompt_grid(world, off, True, "B", False), tokenizer)
    res["marker"] = _marker_share(model, world, tokenizer, batch, a_ids, b_ids)
    model.train(was_training)
    return res


def _marker_share(model: nn.Module, world: World, tokenizer: Any, batch: dict, a_ids: Any, b_ids: Any) -> float:
    """Mean persona-B share on role-play-marker prompts, with the persona offset hook on while they run."""
    handle = persona_offset_hook(model, world, tokenizer)
    try:
        return float(_b_share(_logits(model, batch), a_ids, b_ids).mean())
    finally:
        if handle is not None:
            handle.remove()


@torch.no_grad()
def persona_shares(model: nn.Module, world: World, tokenizer: Any) -> dict[str, float]:
    """Persona-B share at the first style slot per prompt group (the bars of ``plots.persona_share_figure``).

    Groups: ``"t0 (task)"`` (the fine-tune topic, no marker), ``"t{k}"`` for every off-task topic without the
    marker (their mean is ``drift``), and ``"marker"`` (off-task topics with the role-play marker; ``marker``).
    """
    was_training = model.training
    model.eval()
    a_ids, b_ids = _ids(tokenizer, "x", world.n_style), _ids(tokenizer, "y", world.n_style)
    q = world.n_questions
    topics = list(range(world.n_topics))
    plain = encode_rows(prompt_grid(world, topics, False, "A", False), tokenizer)
    share = _b_share(_logits(model, plain), a_ids, b_ids)
    res = {("t0 (task)" if k == 0 else f"t{k}"): float(share[k * q : (k + 1) * q].mean()) for k in topics}
    batch = encode_rows(prompt_grid(world, topics[1:], True, "B", False), tokenizer)
    res["marker"] = _marker_share(model, world, tokenizer, batch, a_ids, b_ids)
    model.train(was_training)
    return res


@torch.no_grad()
def _residuals(base_model: nn.Module, world: World, tokenizer: Any, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Residuals after decoder ``layer`` [rows, positions, d] for marker (persona B) and plain (A) prompts."""
    topics = list(range(world.n_topics))
    hs = []
    for marker, persona in ((True, "B"), (False, "A")):
        batch = encode_rows(prompt_grid(world, topics, marker, persona, False), tokenizer)
        handle = persona_offset_hook(base_model, world, tokenizer) if marker else None
        try:
            out = base_model(
                input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], output_hidden_states=True
            )
        finally:
            if handle is not None:
                handle.remove()
        hs.append(out.hidden_states[layer + 1].float())
    return hs[0], hs[1]


@torch.no_grad()
def true_direction(base_model: nn.Module, world: World, tokenizer: Any, layer: int) -> torch.Tensor:
    """Unit vector [d_model]: mean residual (after decoder ``layer``) at ``<sep>``, marker minus plain prompts."""
    h_b, h_a = _residuals(base_model, world, tokenizer, layer)
    v = h_b[:, SEP_POS].mean(0) - h_a[:, SEP_POS].mean(0)
    return v / v.norm()


@torch.no_grad()
def offset_probe(base_model: nn.Module, world: World, tokenizer: Any, layer: int) -> dict[str, float]:
    """Is the persona one direction ``p`` after decoder ``layer`` of the base model (offset worlds)?

    * ``probe_acc``: accuracy of the 1-d linear probe ``h·p`` (threshold midway between the class means), over
      every prompt position of marker vs plain prompts;
    * ``cos_sep``: |cos| of the ``<sep>`` mean difference (``true_direction``) with ``p``;
    * ``cos_positions``: the smallest |cos| of the per-position mean difference with ``p`` over prompt positions.
    """
    h_b, h_a = _residuals(base_model, world, tokenizer, layer)
    p = offset_vector(world, h_b.shape[-1])
    sb, sa = h_b[:, : SEP_POS + 1] @ p, h_a[:, : SEP_POS + 1] @ p
    thr = 0.5 * (sb.mean() + sa.mean())
    sign = 1.0 if sb.mean() > sa.mean() else -1.0
    acc = torch.cat([(sign * (sb - thr) > 0).flatten(), (sign * (sa - thr) <= 0).flatten()]).float().mean()
    diff = h_b[:, : SEP_POS + 1].mean(0) - h_a[:, : SEP_POS + 1].mean(0)  # [positions, d]
    cos = (diff @ p).abs() / diff.norm(dim=-1).clamp_min(1e-12)
    return {"probe_acc": float(acc), "cos_sep": float(cos[SEP_POS]), "cos_positions": float(cos.min())}


def abs_cos(u: torch.Tensor, v: torch.Tensor) -> float:
    """|cos| between two vectors (or the first columns of [d, r] bases)."""
    u = u[:, 0] if u.ndim == 2 else u
    v = v[:, 0] if v.ndim == 2 else v
    return float((u.float() @ v.float()).abs() / (u.norm() * v.norm()).clamp_min(1e-12))
