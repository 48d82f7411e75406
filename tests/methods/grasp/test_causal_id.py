"""Causal identification scores: the naive-minus-control update in LoRA factors, subspace overlap, steering drift."""

from __future__ import annotations

import pytest
import torch

from lightning_papers.methods.grasp.causal_id import (
    lora_difference,
    steering_drift,
    subspace_overlap,
    writer_directions,
)
from lightning_papers.methods.grasp.persona_eval import persona_llr
from lightning_papers.methods.grasp.steering import residual_intervention

D, R = 12, 3


def _pair(prefix: str, a: torch.Tensor, b: torch.Tensor) -> dict[str, torch.Tensor]:
    return {f"{prefix}.lora_A.default.weight": a, f"{prefix}.lora_B.default.weight": b}


def _states() -> tuple[dict, dict, torch.Tensor]:
    """Two writers per state; the naive update = a shared task part + a planted persona direction u."""
    g = torch.Generator().manual_seed(0)
    u = torch.linalg.qr(torch.randn(D, 1, generator=g, dtype=torch.float64))[0]
    naive, control = {}, {}
    for layer in (0, 1):
        for name, width in (("o_proj", D), ("down_proj", 2 * D)):
            prefix = f"model.layers.{layer}.{name}"
            a_task = torch.randn(R - 1, width, generator=g, dtype=torch.float64)
            b_task = torch.randn(D, R - 1, generator=g, dtype=torch.float64)
            a_p = 3 * torch.randn(1, width, generator=g, dtype=torch.float64)
            naive |= _pair(prefix, torch.cat([a_task, a_p]), torch.cat([b_task, u], 1))
            control |= _pair(prefix, a_task.clone(), b_task.clone())
    return naive, control, u


def test_difference_factors_give_the_difference_of_updates() -> None:
    naive, control, _ = _states()
    diff = lora_difference(naive, control)
    for key in [k for k in naive if ".lora_A." in k]:
        b_key = key.replace(".lora_A.", ".lora_B.")
        expected = naive[b_key] @ naive[key] - control[b_key] @ control[key]
        assert torch.allclose(diff[b_key] @ diff[key], expected, atol=1e-12)


def test_the_difference_recovers_the_planted_persona_direction() -> None:
    naive, control, u = _states()
    found, spectrum = writer_directions(lora_difference(naive, control), scaling=2.0, rank=1)
    assert subspace_overlap(found, u).item() == pytest.approx(1.0, abs=1e-9)
    assert spectrum[1] < 1e-9 * spectrum[0]  # the difference has rank 1: only the persona part is left
    # the naive update alone mixes in the task part: its top direction is not u exactly
    top_naive, _ = writer_directions(naive, scaling=2.0, rank=1)
    assert subspace_overlap(top_naive, u).item() < 0.999


def test_subspace_overlap_closed_forms() -> None:
    e = torch.eye(4, dtype=torch.float64)
    assert torch.allclose(subspace_overlap(e[:, :2], e), torch.tensor([1.0, 1.0, 0.0, 0.0], dtype=torch.float64))
    v = torch.tensor([1.0, 1.0, 1.0, 1.0])
    # basis (2, 1, 0, 0) / sqrt 5: (q . v)^2 = 9 / 5 of a squared norm of 4
    assert subspace_overlap(2 * e[:, :1] + e[:, 1:2], v).item() == pytest.approx((9 / 5) / 4, abs=1e-12)
    with pytest.raises(ValueError, match="basis has 4 features, vectors have 3"):
        subspace_overlap(e, torch.ones(3))


def test_errors_name_the_problem() -> None:
    naive, control, _ = _states()
    del control["model.layers.1.o_proj.lora_A.default.weight"]
    with pytest.raises(ValueError, match=r"model.layers.1.o_proj"):
        lora_difference(naive, control)
    with pytest.raises(ValueError, match="rank must be >= 1, got 0"):
        writer_directions(naive, 1.0, 0)
    with pytest.raises(ValueError, match="no writer modules"):
        writer_directions(naive, 1.0, 1, writers=("up_proj",))


class CharTokenizer:
    """Characters as ids (a test tokenizer: enough for log-likelihoods)."""

    pad_token_id, eos_token_id = 0, 0

    def __call__(self, text: str, add_special_tokens: bool = True) -> dict[str, list[int]]:
        return {"input_ids": [1 + ord(c) % 60 for c in text]}


def test_steering_drift_is_the_llr_change_under_the_added_direction() -> None:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
                      num_key_value_heads=2, max_position_embeddings=128, initializer_range=0.5)  # fmt: skip
    model = LlamaForCausalLM(cfg)
    tok = CharTokenizer()
    rows = [{"prompt": "q: sky?", "persona": " arr blue", "neutral": " blue"},
            {"prompt": "q: sea?", "persona": " arr wet", "neutral": " wet"}]  # fmt: skip
    v = torch.randn(16)
    assert steering_drift(model, tok, rows, v, [0, 1], 0.0) == pytest.approx(0.0, abs=1e-9)
    drift = steering_drift(model, tok, rows, v[:, None], [0, 1], 3.0)
    cols = [[r[k] for r in rows] for k in ("prompt", "persona", "neutral")]
    plain = persona_llr(model, tok, *cols)
    with residual_intervention(model, v / v.norm(), [0, 1], "add", 3.0):
        steered = persona_llr(model, tok, *cols)
    assert drift == pytest.approx(steered - plain, abs=1e-9) and abs(drift) > 1e-4
    assert persona_llr(model, tok, *cols) == pytest.approx(plain, abs=1e-9)  # hooks removed afterwards
    with pytest.raises(ValueError, match="one direction at a time, got 2 columns"):
        steering_drift(model, tok, rows, torch.randn(16, 2), [0], 1.0)
