"""The random-direction control: random bases shaped like the identified ones, orthonormal and seeded."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from lightning_papers.methods.grasp.controls import random_basis, random_like
from lightning_papers.methods.grasp.subspace import SpuriousSubspace


def _identified() -> SpuriousSubspace:
    g = torch.Generator().manual_seed(0)
    d = torch.linalg.qr(torch.randn(16, 1, generator=g))[0]
    return SpuriousSubspace(
        output={"layers.0.o_proj.lora_B.default": d, "layers.1.down_proj.lora_B.default": d},
        input={"layers.1.up_proj.lora_A.default": torch.linalg.qr(torch.randn(16, 2, generator=g))[0]},
        direction=d,
    )


def test_random_like_has_same_keys_shapes_and_orthonormal_bases() -> None:
    sub = _identified()
    ctrl = random_like(sub, seed=3)
    assert set(ctrl.output) == set(sub.output) and set(ctrl.input) == set(sub.input)
    for side in ("output", "input"):
        for k, b in ctrl.bases(side).items():
            assert b.shape == sub.bases(side)[k].shape
            assert torch.allclose(b.T @ b, torch.eye(b.shape[1]), atol=1e-5)
    # writers that shared the identified direction share one random direction (only *which* direction differs)
    a, b = ctrl.output.values()
    assert torch.allclose(a, b) and torch.allclose(a, ctrl.direction)
    assert abs(float(ctrl.direction[:, 0] @ sub.direction[:, 0])) < 0.9  # a different direction


def test_random_like_is_reproducible_by_seed() -> None:
    sub = _identified()
    one, two, other = random_like(sub, seed=7), random_like(sub, seed=7), random_like(sub, seed=8)
    for k in sub.output:
        assert torch.equal(one.output[k], two.output[k])
        assert not torch.allclose(one.output[k], other.output[k])
    assert torch.equal(one.input["layers.1.up_proj.lora_A.default"], two.input["layers.1.up_proj.lora_A.default"])


def test_random_basis_is_haar_like_and_validates_shape() -> None:
    g = torch.Generator().manual_seed(0)
    first = torch.stack([random_basis((8, 1), g)[:, 0] for _ in range(4000)])
    # uniform on the sphere: mean ~ 0 and second moment ~ I/d
    assert first.mean(0).abs().max() < 0.05
    assert torch.allclose(first.T @ first / len(first), torch.eye(8) / 8, atol=0.02)
    with pytest.raises(ValueError, match=r"\[features, r\]"):
        random_basis((2, 3), g)
    with pytest.raises(ValueError, match=r"\[features, r\]"):
        random_basis((4,), g)


def test_load_lora_module_accepts_cli_checkpoints_and_drops_the_intervention(tmp_path: Path) -> None:
    from lightning_papers.methods.grasp.controls import load_lora_module
    from lightning_papers.methods.grasp.module import LoRACausalLM

    tiny = {"model_type": "llama", "vocab_size": 12, "hidden_size": 8, "intermediate_size": 16,
            "num_hidden_layers": 2, "num_attention_heads": 2, "num_key_value_heads": 2}  # fmt: skip
    direction = tmp_path / "v.pt"
    torch.save({"direction": torch.ones(8)}, direction)
    m = LoRACausalLM(model_config=tiny, lora_rank=2, lora_alpha=4.0, intervention="ablate_train",
                     steer_direction=str(direction))  # fmt: skip
    m.configure_model()
    with torch.no_grad():
        for name, p in m.named_parameters():
            if "lora_B" in name:
                p.normal_()  # a trained-looking adapter (peft starts B = 0)
    # LightningCLI stores its own keys next to the constructor's arguments
    hp = {**dict(m.hparams), "_class_path": "lightning_papers.methods.grasp.module.LoRACausalLM", "_instantiator": "x"}
    torch.save({"hyper_parameters": hp, "state_dict": m.state_dict()}, tmp_path / "naive.ckpt")
    loaded = load_lora_module(tmp_path / "naive.ckpt")
    assert loaded.hparams.intervention == "none" and not loaded.training
    for (k, v), (k2, v2) in zip(m.state_dict().items(), loaded.state_dict().items()):
        assert k == k2 and torch.equal(v, v2)
    with pytest.raises(FileNotFoundError, match="naive.yaml"):
        load_lora_module(tmp_path / "missing.ckpt")
