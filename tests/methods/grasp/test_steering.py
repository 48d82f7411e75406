"""Residual-stream hooks of the baselines: ablation removes exactly the direction; steering adds exactly c·v;
the module installs training-time hooks only while training and inference-time hooks only at inference."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from lightning_papers.methods.grasp.module import LoRACausalLM
from lightning_papers.methods.grasp.steering import (
    ablate,
    decoder_layers,
    load_direction,
    residual_intervention,
)
from lightning_papers.methods.grasp.subspace import orthonormalize

TINY = {
    "model_type": "llama",
    "vocab_size": 20,
    "hidden_size": 16,
    "intermediate_size": 32,
    "num_hidden_layers": 3,
    "num_attention_heads": 2,
    "num_key_value_heads": 2,
    "max_position_embeddings": 16,
    "initializer_range": 0.5,
}


def _hidden(model: torch.nn.Module, ids: torch.Tensor) -> list[torch.Tensor]:
    """Residual stream entering each decoder layer and the final norm: [embeddings, after layer 0, ...].

    Captured with pre-hooks on the *next* module, because transformers 5 records ``hidden_states`` with its own
    hooks, which may see a layer's output before our steering hook edits it.
    """
    seen: list[torch.Tensor] = []
    blocks = decoder_layers(model)
    norm = [m for n, m in model.named_modules() if n.endswith("model.norm")][0]
    hooks = [
        b.register_forward_pre_hook(
            lambda mod, args, kw: seen.append(args[0] if args else kw["hidden_states"]), with_kwargs=True
        )
        for b in blocks
    ]
    hooks.append(norm.register_forward_pre_hook(lambda mod, args: seen.append(args[0])))
    try:
        model(input_ids=ids)
    finally:
        for h in hooks:
            h.remove()
    return [s.detach().clone() for s in seen]


def test_ablate_removes_exactly_the_subspace() -> None:
    basis = orthonormalize(torch.randn(16, 2))
    assert torch.allclose(basis.T @ basis, torch.eye(2), atol=1e-6)
    h = torch.randn(3, 5, 16)
    out = ablate(h, basis)
    assert (out @ basis).abs().max() < 1e-5
    assert torch.allclose(out + (h @ basis) @ basis.T, h, atol=1e-6)  # the rest is untouched


@pytest.mark.parametrize("mode", ["ablate", "add"])
def test_hooks_act_on_the_residual_after_the_named_layer(mode: str) -> None:
    m = LoRACausalLM(model_config=TINY, lora_rank=2, lora_alpha=4.0)
    m.configure_model()
    model = m.model.eval()
    ids = torch.randint(0, 20, (2, 6))
    v = torch.randn(16)
    u = v / v.norm()
    with torch.no_grad():
        clean = _hidden(model, ids)
        with residual_intervention(model, v, layers=[1], mode=mode, coef=3.0):
            hooked = _hidden(model, ids)
        after = _hidden(model, ids)
    assert torch.allclose(hooked[1], clean[1])  # hidden_states[1] = output of layer 0: before the hook
    if mode == "ablate":
        assert (hooked[2] @ u).abs().max() < 1e-4 and (clean[2] @ u).abs().max() > 1e-2
        assert torch.allclose(hooked[2], ablate(clean[2], u[:, None]), atol=1e-5)
    else:
        assert torch.allclose(hooked[2], clean[2] + 3.0 * u, atol=1e-5)
    assert not torch.allclose(hooked[3], clean[3])  # later layers see the edit
    assert all(torch.equal(a, b) for a, b in zip(after, clean))  # hooks removed on exit


def test_module_switches_hooks_between_training_and_inference(tmp_path: Path) -> None:
    d = torch.randn(16, 1)
    path = tmp_path / "dir.pt"
    torch.save({"direction": d}, path)
    assert torch.allclose(load_direction(path), d)
    u = d[:, 0] / d.norm()
    ids = torch.randint(0, 20, (2, 6))
    for intervention, during_train, during_eval in [
        ("ablate_train", True, False),
        ("ablate_inference", False, True),
        ("add_train", True, False),
    ]:
        m = LoRACausalLM(
            model_config=TINY,
            lora_rank=2,
            lora_alpha=4.0,
            intervention=intervention,
            steer_direction=str(path),
            steer_layers=[0],
            steer_coef=2.0,
        )
        m.configure_model()
        with torch.no_grad():
            clean = _hidden(m.model, ids)[1]
            for training, active in ((True, during_train), (False, during_eval)):
                m._set_hooks(training=training)
                h = _hidden(m.model, ids)[1]
                assert torch.allclose(h, clean) != active, (intervention, training)
                if active and intervention != "add_train":
                    assert (h @ u).abs().max() < 1e-4


def test_bad_directions_raise(tmp_path: Path) -> None:
    m = LoRACausalLM(model_config=TINY, lora_rank=2, lora_alpha=4.0)
    m.configure_model()
    with pytest.raises(ValueError, match="hidden_size is 16"):
        with residual_intervention(m.model, torch.randn(8), [0], "ablate"):
            pass
    with pytest.raises(ValueError, match="layers"):
        with residual_intervention(m.model, torch.randn(16), [5], "ablate"):
            pass
    with pytest.raises(ValueError, match="linearly dependent"):
        orthonormalize(torch.zeros(16))
    with pytest.raises(FileNotFoundError, match="identify"):
        load_direction(tmp_path / "none.pt")
