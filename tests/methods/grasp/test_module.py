"""LoRA LM module: completion-only loss (against a hand computation), training, LoRA-only updates, KL, errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from lightning.pytorch import Trainer
from torch.utils.data import DataLoader

from lightning_papers.methods.grasp.module import LoRACausalLM, completion_loss, kl_to_base

TINY = {
    "model_type": "llama",
    "vocab_size": 20,
    "hidden_size": 16,
    "intermediate_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "num_key_value_heads": 2,
    "max_position_embeddings": 16,
    "pad_token_id": 0,
    "initializer_range": 0.5,  # a frozen random lm_head with the default 0.02 caps logits near 0.3
}


def _batch() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    start = torch.randint(1, 20, (4, 1), generator=g)
    ids = (start - 1 + torch.arange(8)) % 19 + 1  # next token = current + 1 (mod 19): learnable from one token
    labels = ids.clone()
    labels[:, :3] = -100  # prompt
    labels[0, 6:] = -100  # padding of row 0
    mask = torch.ones_like(ids)
    mask[0, 6:] = 0
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def _module(**kw) -> LoRACausalLM:
    m = LoRACausalLM(model_config=TINY, lora_rank=2, lora_alpha=4.0, lr=1e-2, **kw)
    m.configure_model()
    return m


def test_completion_loss_matches_hand_computation() -> None:
    logits = torch.randn(2, 5, 7)
    labels = torch.tensor([[-100, -100, 3, 4, -100], [-100, 1, 2, 6, 0]])
    terms = []
    for b in range(2):
        for t in range(4):  # position t predicts token t + 1
            y = int(labels[b, t + 1])
            if y != -100:
                terms.append(-torch.log_softmax(logits[b, t], -1)[y])
    assert len(terms) == 6
    assert torch.allclose(completion_loss(logits, labels), torch.stack(terms).mean())


def test_prompt_tokens_do_not_change_the_loss_gradient_target() -> None:
    m = _module()
    batch = _batch()
    loss = m.training_step(batch, 0)
    logits = m(batch["input_ids"], batch["attention_mask"])
    assert torch.allclose(loss, completion_loss(logits, batch["labels"]))
    # changing labels only where they are masked (-100 stays -100) cannot change the loss; unmasking one does
    other = dict(batch, labels=batch["labels"].clone())
    other["labels"][1, 1] = 5
    assert not torch.allclose(m.training_step(other, 0), loss)


def test_trains_only_lora_and_loss_decreases() -> None:
    m = LoRACausalLM(model_config=TINY, lora_rank=4, lora_alpha=8.0, lr=3e-2, target_modules=["o_proj", "down_proj"])
    batch = _batch()
    trainer = Trainer(
        max_steps=40,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
    )
    m.configure_model()
    before = {k: v.clone() for k, v in m.state_dict().items()}
    first = float(m._loss(batch)[0].detach())
    trainer.fit(m, train_dataloaders=DataLoader([batch] * 40, batch_size=None))
    last = float(m._loss(batch)[0].detach())
    assert last < 0.8 * first
    changed = {k for k, v in m.state_dict().items() if not torch.equal(v, before[k])}
    assert changed and all(".lora_B." in k or ".lora_A." in k for k in changed)
    assert any("o_proj.lora_B" in k for k in changed) and any("down_proj.lora_B" in k for k in changed)
    assert m.hparams.lora_rank == 4 and m.hparams.lora_alpha == 8.0  # identify reads these


def test_kl_to_base() -> None:
    logits = torch.randn(2, 3, 5)
    mask = torch.ones(2, 3, dtype=torch.bool)
    assert float(kl_to_base(logits, logits, mask)) == pytest.approx(0.0, abs=1e-6)
    other = torch.randn(2, 3, 5)
    p, q = logits.log_softmax(-1), other.log_softmax(-1)
    expected = (p.exp() * (p - q)).sum(-1).mean()
    assert torch.allclose(kl_to_base(logits, other, mask), expected)
    m = _module(kl_weight=1.0)
    for p_ in m.model.parameters():  # make the adapter non-zero so the KL is positive
        if p_.requires_grad:
            torch.nn.init.normal_(p_, std=0.5)
    batch = _batch()
    plain = completion_loss(m(batch["input_ids"], batch["attention_mask"]), batch["labels"])
    assert float(m.training_step(batch, 0)) > float(plain) + 1e-4


def test_bad_arguments_and_missing_files(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="exactly one"):
        LoRACausalLM()
    with pytest.raises(ValueError, match="lora_rank"):
        LoRACausalLM(model_config=TINY, lora_rank=0)
    with pytest.raises(ValueError, match="steer_direction"):
        LoRACausalLM(model_config=TINY, intervention="ablate_train")
    with pytest.raises(ValueError, match="intervention"):
        LoRACausalLM(model_config=TINY, intervention="bogus")  # type: ignore[arg-type]
    m = LoRACausalLM(model_path=str(tmp_path / "missing_model"))  # constructing reads nothing
    with pytest.raises(FileNotFoundError, match=r"missing_model.*grasp\.planted\.world"):
        m.configure_model()
    m = LoRACausalLM(model_config=TINY, intervention="ablate_train", steer_direction=str(tmp_path / "dir.pt"))
    with pytest.raises(FileNotFoundError, match=r"dir\.pt.*identify"):
        m.configure_model()


def test_checkpoint_from_a_model_path_holds_only_lora_and_resumes_exactly(tmp_path: Path) -> None:
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg = {**TINY, "tie_word_embeddings": True}  # a tied lm_head must be left out too
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(AutoConfig.for_model(cfg.pop("model_type"), **cfg)).save_pretrained(tmp_path / "m")
    batch = _batch()

    def trainer(steps: int, **kw) -> Trainer:
        return Trainer(max_steps=steps, logger=False, enable_progress_bar=False, enable_model_summary=False,
                       accelerator="cpu", default_root_dir=tmp_path, **kw)  # fmt: skip

    def module() -> LoRACausalLM:
        m = LoRACausalLM(model_path=str(tmp_path / "m"), lora_rank=2, lora_alpha=4.0, lr=3e-2,
                         target_modules=["o_proj", "down_proj"])  # fmt: skip
        torch.manual_seed(1)  # the same LoRA initialisation in every run
        m.configure_model()
        return m

    loader = DataLoader([batch] * 8, batch_size=None)
    full = module()
    trainer(8, enable_checkpointing=False).fit(full, train_dataloaders=loader)
    half = module()
    t = trainer(4)
    t.fit(half, train_dataloaders=loader)
    ckpt_path = tmp_path / "half.ckpt"
    t.save_checkpoint(ckpt_path)
    state = torch.load(ckpt_path, map_location="cpu", weights_only=False)["state_dict"]
    assert state and all(".lora_A." in k or ".lora_B." in k for k in state)  # frozen weights left out
    resumed = module()
    trainer(8, enable_checkpointing=False).fit(resumed, train_dataloaders=loader, ckpt_path=ckpt_path)
    for (name, a), b in zip(full.state_dict().items(), resumed.state_dict().values()):
        assert torch.allclose(a, b, atol=1e-6), name
    torch.manual_seed(5)  # another base model at the same path: the LoRA-only checkpoint no longer belongs to it
    AutoModelForCausalLM.from_config(AutoConfig.for_model(TINY["model_type"], **cfg)).save_pretrained(tmp_path / "m")
    with pytest.raises(ValueError, match="holds different ones"):
        trainer(8, enable_checkpointing=False).fit(module(), train_dataloaders=loader, ckpt_path=ckpt_path)
