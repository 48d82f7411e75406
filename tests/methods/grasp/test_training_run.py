"""A GRASP fine-tune as ``lightning-papers fit`` runs it: planted-world metrics and figures in every validation,
no module left in eval mode, exact resume from a mid-epoch checkpoint, and two-process DDP."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import pytest
import torch
from lightning.pytorch import Callback, LightningModule, Trainer, seed_everything
from lightning.pytorch.callbacks import ModelCheckpoint

from lightning_papers.callbacks import GradientProjection
from lightning_papers.datamodules.jsonl_text import JsonlTextDataModule
from lightning_papers.methods.grasp.module import LoRACausalLM
from lightning_papers.methods.grasp.planted.callback import PlantedEvaluation
from lightning_papers.methods.grasp.planted.evaluation import evaluate
from lightning_papers.methods.grasp.planted.world import load_world
from tests.helpers.ddp import ddp_cpu_kwargs

WRITER = "layers.1.self_attn.o_proj.lora_B.default"


def _parts(planted: Path) -> tuple[LoRACausalLM, JsonlTextDataModule]:
    module = LoRACausalLM(model_path=str(planted / "base_model"), lora_rank=2, lora_alpha=4.0, lr=0.02,
                          target_modules=["o_proj", "down_proj"])  # fmt: skip
    dm = JsonlTextDataModule(train_path=str(planted / "train.jsonl"), val_path=str(planted / "val.jsonl"),
                             tokenizer_path=str(planted / "tokenizer"), batch_size=8, max_length=16,
                             add_special_tokens=False)  # fmt: skip
    return module, dm


def _projection() -> GradientProjection:
    u = torch.linalg.qr(torch.randn(16, 1, generator=torch.Generator().manual_seed(3))).Q
    return GradientProjection({WRITER: u}, side="output", mode="update", log_every_n_steps=0)


def _trainer(root: Path, callbacks: list[Callback], max_steps: int, **kw: Any) -> Trainer:
    args = dict(accelerator="cpu", devices=1, max_steps=max_steps, val_check_interval=3, check_val_every_n_epoch=None,
                num_sanity_val_steps=0, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                enable_model_summary=False, default_root_dir=str(root))  # fmt: skip
    args.update(kw)
    return Trainer(callbacks=callbacks, **args)


def test_every_validation_logs_planted_metrics_and_figures(planted_dir: Path, tmp_path: Path) -> None:
    seed_everything(0, verbose=False)
    module, dm = _parts(planted_dir)
    evaluation = PlantedEvaluation(str(planted_dir))
    trainer = _trainer(tmp_path, [evaluation], max_steps=6)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(module, datamodule=dm)
    assert not [w for w in caught if "eval mode" in str(w.message)]  # the frozen base model trains in train mode
    assert [h["step"] for h in evaluation.history] == [0, 3, 6]  # the base model, then every validation
    final = evaluate(module.model, load_world(planted_dir), dm.tokenizer)
    logged = {k: float(v) for k, v in trainer.callback_metrics.items()}
    assert logged["val/drift"] == pytest.approx(final["drift"]) and logged["val/task"] == pytest.approx(final["task"])
    assert logged["val/preservation"] == pytest.approx(final["marker"])
    assert logged["val/offtask_answer"] == pytest.approx(final["offtask_answer"])
    assert "val/loss" in logged
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(str(planted_dir / "base_model"), local_files_only=True)
    assert evaluation.history[0] == {"step": 0, **evaluate(base, load_world(planted_dir), dm.tokenizer)}
    figures = sorted(p.name for p in (tmp_path / "figures").glob("*.png"))
    assert figures == [f"planted_{name}_step{s:06d}.png" for name in ("metrics_over_steps", "persona_share")
                       for s in (3, 6)]  # fmt: skip


class _Crash(Callback):
    """Crash when the batch after optimizer step ``step`` starts (the checkpoint of that step is written by then)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, *args: Any) -> None:
        if trainer.global_step == self.step:
            raise RuntimeError("simulated crash")


def test_resume_mid_epoch_matches_the_uninterrupted_run(planted_dir: Path, tmp_path: Path) -> None:
    """5 batches per epoch; a crash after step 7 (batch 3 of epoch 2) and a resume give bitwise the same run."""
    seed_everything(0, verbose=False)
    module, dm = _parts(planted_dir)
    full_eval = PlantedEvaluation(str(planted_dir))
    _trainer(tmp_path / "full", [_projection(), full_eval], max_steps=12).fit(module, datamodule=dm)

    seed_everything(0, verbose=False)
    crashed, dm = _parts(planted_dir)
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", filename="mid", every_n_train_steps=7, save_top_k=-1)
    trainer = _trainer(tmp_path / "crash", [_projection(), PlantedEvaluation(str(planted_dir)), ckpt, _Crash(7)],
                       max_steps=12, enable_checkpointing=True)  # fmt: skip
    with pytest.raises(RuntimeError, match="simulated crash"):
        trainer.fit(crashed, datamodule=dm)
    assert trainer.global_step == 7

    seed_everything(1, verbose=False)  # another global RNG state: the checkpoint must carry what matters
    resumed, dm = _parts(planted_dir)
    resumed_eval = PlantedEvaluation(str(planted_dir))
    trainer = _trainer(tmp_path / "resumed", [_projection(), resumed_eval], max_steps=12)
    trainer.fit(resumed, datamodule=dm, ckpt_path=str(tmp_path / "ckpt" / "mid.ckpt"))
    assert trainer.global_step == 12
    full_state, resumed_state = module.state_dict(), resumed.state_dict()
    changed = [k for k in full_state if "lora_" in k]
    assert changed and all(torch.equal(full_state[k], resumed_state[k]) for k in full_state)
    assert resumed_eval.history == full_eval.history
    assert [h["step"] for h in resumed_eval.history] == [0, 3, 6, 9, 12]


class _CheckReplicas(Callback):
    """On every rank at the end: identical LoRA weights, and each rank trained on its own half of every batch."""

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int) -> None:
        if trainer.global_step == 0:
            rows = trainer.strategy.all_gather(batch["input_ids"])
            assert not torch.equal(rows[0], rows[1]), "both ranks got the same rows"

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        for name, p in pl_module.named_parameters():
            if p.requires_grad:
                both = trainer.strategy.all_gather(p.detach())
                assert torch.equal(both[0], both[1]), f"replicas diverged at {name}"
        assert trainer.callback_metrics["val/drift"] >= 0
        evaluation = next(c for c in trainer.callbacks if isinstance(c, PlantedEvaluation))
        assert [h["step"] for h in evaluation.history] == [0, 2, 4]


@pytest.mark.ddp
def test_grasp_run_under_two_process_ddp(planted_dir: Path, tmp_path: Path) -> None:
    seed_everything(0, verbose=False)
    module, dm = _parts(planted_dir)
    kw = {**ddp_cpu_kwargs(), "default_root_dir": str(tmp_path)}
    # figures off: without a WandbLogger, plotting.figure_dir asks trainer.log_dir, which is a collective (a
    # broadcast), and log_figure runs on rank 0 only; the metrics are what this test checks
    evaluation = PlantedEvaluation(str(planted_dir), figures=False)
    trainer = Trainer(callbacks=[_projection(), evaluation, _CheckReplicas()], max_steps=4, val_check_interval=2,
                      check_val_every_n_epoch=None, num_sanity_val_steps=0, **kw)  # fmt: skip
    trainer.fit(module, datamodule=dm)
