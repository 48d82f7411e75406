"""AdaptiveCalibration callback in the Trainer of a model that is NOT part of lightning_papers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from torch.utils.data import DataLoader, TensorDataset

from lightning_papers.callbacks import AdaptiveCalibration
from tests.helpers.ddp import ddp_cpu_kwargs


class OverconfidentClassifier(LightningModule):
    """A plain logistic model whose logits are 3× too large: a deliberately miscalibrated binary classifier."""

    def __init__(self, scale: float = 3.0, bad_probs: bool = False, lr: float = 0.01) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.tensor([scale]))
        self.bad_probs, self.lr = bad_probs, lr

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.w * x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return torch.nn.functional.binary_cross_entropy(self(x), y)

    def validation_step(self, batch, batch_idx):
        x, y = batch
        probs = self(x) + (1.0 if self.bad_probs else 0.0)
        return {"probs": probs, "target": y}

    test_step = validation_step

    def predict_step(self, batch, batch_idx):
        return {"probs": self(batch[0])}

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.lr)


def loader(n: int, seed: int, batch_size: int = 500) -> DataLoader:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, generator=g) * 1.5
    y = (torch.rand(n, generator=g) < torch.sigmoid(x)).float()  # truth: P(y=1|x) = sigmoid(x)
    return DataLoader(TensorDataset(x, y), batch_size=batch_size, shuffle=False)


def trainer(tmp_path: Path, callbacks: list, **kw) -> Trainer:
    defaults = dict(default_root_dir=tmp_path, logger=False, enable_progress_bar=False, enable_model_summary=False,
                    accelerator="cpu", devices=1)  # fmt: skip
    defaults.update(kw)
    return Trainer(callbacks=callbacks, **defaults)


def test_lowers_ece_of_miscalibrated_classifier_and_calibrates_predict(tmp_path: Path) -> None:
    cb = AdaptiveCalibration(n_groups=10)
    tr = trainer(tmp_path, [cb], enable_checkpointing=False)
    tr.validate(OverconfidentClassifier(), loader(8000, 0))
    res = cb.last_results["validate"]
    assert res["val_cal/ece"] < 0.5 * res["val_cal/raw_ece"]
    assert res["val_cal/raw_ece"] > 0.05
    assert res["val_cal/l2_per_T"] < res["val_cal/raw_l2_per_T"]
    assert float(tr.callback_metrics["val_cal/ece"]) == pytest.approx(res["val_cal/ece"])
    assert cb.rounds == 8000 and sum(cb.counts) == 8000

    before = cb.state_dict()
    out = tr.predict(OverconfidentClassifier(), loader(2000, 1))
    assert cb.state_dict() == before  # predict applies the frozen calibrators, no update
    x = torch.cat([b[0] for b in loader(2000, 1)])
    raw = torch.cat([o["probs"] for o in out])
    cal = torch.cat([o["calibrated_probs"] for o in out])
    truth = torch.sigmoid(x)
    assert (cal - truth).abs().mean() < 0.5 * (raw - truth).abs().mean()


def test_sanity_check_is_skipped_and_resume_equals_uninterrupted_run(tmp_path: Path) -> None:
    def run(max_epochs: int, root: Path, ckpt: str | None = None) -> AdaptiveCalibration:
        torch.manual_seed(0)
        cb = AdaptiveCalibration(n_groups=5)
        ck = ModelCheckpoint(dirpath=root, save_last=True)
        tr = trainer(root, [cb, ck], max_epochs=max_epochs, num_sanity_val_steps=2)
        tr.fit(OverconfidentClassifier(), loader(1000, 0, 250), loader(3000, 1), ckpt_path=ckpt)
        return cb

    full = run(2, tmp_path / "full")
    assert full.rounds == 2 * 3000  # two validation epochs, sanity-check batches not streamed
    run(1, tmp_path / "part")
    resumed = run(2, tmp_path / "part", ckpt=str(tmp_path / "part" / "last.ckpt"))
    assert resumed.state_dict() == full.state_dict()
    assert resumed.last_results == full.last_results


class AssertIdenticalAcrossRanks(Callback):
    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        cb = next(c for c in trainer.callbacks if isinstance(c, AdaptiveCalibration))
        states: list = [None] * dist.get_world_size()
        dist.all_gather_object(states, cb.state_dict())
        if states[0] != states[1]:
            raise AssertionError("calibrator state differs between ranks")
        if cb.rounds != 2000 * (trainer.current_epoch + 1):
            raise AssertionError(f"expected the whole gathered stream on every rank, got {cb.rounds} rounds")


@pytest.mark.ddp
def test_ddp_two_processes_identical_state(tmp_path: Path) -> None:
    kw = ddp_cpu_kwargs()
    kw.pop("logger")
    tr = trainer(tmp_path, [AdaptiveCalibration(n_groups=5, log_figures=False), AssertIdenticalAcrossRanks()],
                 max_epochs=2, num_sanity_val_steps=0, **kw)  # fmt: skip
    tr.fit(OverconfidentClassifier(), loader(400, 0, 100), loader(2000, 1, 250))


def test_bad_outputs_raise_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="probabilities in \\[0, 1\\]"):
        trainer(tmp_path, [AdaptiveCalibration()]).validate(OverconfidentClassifier(bad_probs=True), loader(100, 0))
    cb = AdaptiveCalibration()
    with pytest.raises(ValueError, match="binary labels"):
        cb.process(torch.tensor([0.2, 0.4]), torch.tensor([0.0, 0.5]))
    with pytest.raises(ValueError, match="nan"):
        cb.process(torch.tensor([0.2, float("nan")]), torch.tensor([0.0, 1.0]))
    with pytest.raises(ValueError, match="return a dict"):
        cb._extract(torch.zeros(3), None)
    with pytest.raises(ValueError, match="n_groups"):
        AdaptiveCalibration(n_groups=0)
    with pytest.raises(ValueError, match="stages"):
        AdaptiveCalibration(stages=("train",))


def test_usable_without_a_trainer() -> None:
    rng = np.random.default_rng(0)
    raw = rng.random(5000)
    y = (rng.random(5000) < raw**3).astype(float)  # very miscalibrated scores
    cb = AdaptiveCalibration(n_groups=8)
    cal = cb.process(raw, y)
    assert np.abs(cal - raw**3)[2500:].mean() < 0.5 * np.abs(raw - raw**3)[2500:].mean()
