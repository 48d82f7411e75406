"""AdaptiveCalibration callback in the Trainer of a model that is NOT part of lightning_papers."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from scipy.stats import spearmanr
from torch.utils.data import DataLoader, TensorDataset
from torchmetrics.functional.classification import binary_auroc, binary_calibration_error

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


class TensorOutputs(OverconfidentClassifier):
    """Returns a bare tensor from validation_step: the callback cannot find the probabilities and labels."""

    def validation_step(self, batch, batch_idx):
        return self(batch[0])


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
    assert list(tmp_path.glob("figures/val_cal_reliability_step*.png"))  # calibrated vs raw, with per-bin counts

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
        trainer(tmp_path, [AdaptiveCalibration()]).validate(TensorOutputs(), loader(100, 0))
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


def overconfident_stream(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Raw scores sigmoid(3x) of an over-confident classifier, labels from the truth sigmoid(x), and the truth."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, generator=g) * 1.5
    y = (torch.rand(n, generator=g) < torch.sigmoid(x)).double()
    return torch.sigmoid(3 * x).double(), y, torch.sigmoid(x).double()


def test_interpolate_mapping_keeps_the_ranking_and_still_recalibrates() -> None:
    """mapping="interpolate": within every batch the calibrated scores rank exactly as the raw ones (Spearman 1);
    in predict the AUROC is that of the raw scores (within 0.002) while the probabilities move towards the truth,
    where mapping="group" leaves only n_groups values and loses AUROC."""
    raw, y, _ = overconfident_stream(8000, 0)
    cb = AdaptiveCalibration(n_groups=10, mapping="interpolate")
    online = []
    for i in range(0, 8000, 500):
        cal = cb.process(raw[i : i + 500], y[i : i + 500])
        assert spearmanr(cal, raw[i : i + 500].numpy()).statistic == pytest.approx(1.0, abs=1e-12)
        online.append(cal)
    cal = torch.from_numpy(np.concatenate(online))
    ece = binary_calibration_error(cal.float(), y.long(), n_bins=15)
    assert ece < 0.5 * binary_calibration_error(raw.float(), y.long(), n_bins=15)

    new_raw, new_y, truth = overconfident_stream(2000, 1)
    frozen = torch.from_numpy(cb.calibrate(new_raw))
    auroc_raw = float(binary_auroc(new_raw.float(), new_y.long()))
    assert float(binary_auroc(frozen.float(), new_y.long())) == pytest.approx(auroc_raw, abs=0.002)
    assert spearmanr(frozen, new_raw).statistic == pytest.approx(1.0, abs=1e-12)
    assert (frozen - truth).abs().mean() < 0.5 * (new_raw - truth).abs().mean()

    grouped = AdaptiveCalibration(n_groups=10)
    for i in range(0, 8000, 500):
        grouped.process(raw[i : i + 500], y[i : i + 500])
    table = torch.from_numpy(grouped.calibrate(new_raw))
    assert np.unique(table.numpy()).size <= 10
    assert float(binary_auroc(table.float(), new_y.long())) < auroc_raw - 0.01


def extreme_scores(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Perfectly calibrated raw scores at 0.02 / 0.98: nothing to fix, and each group's forecaster starts at 0.5."""
    rng = np.random.default_rng(seed)
    raw = rng.choice([0.02, 0.98], size=n)
    return torch.from_numpy(raw), torch.from_numpy((rng.random(n) < raw).astype(float))


class FixedScores(LightningModule):
    """Validation returns precomputed (probability, label) pairs, 50 per batch."""

    def __init__(self, raw: torch.Tensor, y: torch.Tensor) -> None:
        super().__init__()
        self.raw, self.y = raw, y

    def validation_step(self, batch, batch_idx):
        sl = slice(50 * batch_idx, 50 * (batch_idx + 1))
        return {"probs": self.raw[sl], "target": self.y[sl]}


def test_warns_when_recalibration_hurts_and_min_rounds_passes_raw_through(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """On 200 perfectly calibrated extreme scores the fresh forecasters (which start at 0.5) make the ECE worse
    beyond its sampling noise: a warning names both numbers. With min_rounds=150 every pair keeps its raw score
    (one info line), the ECE equals the raw one and nothing is said; a classifier that is helped gets no warning."""
    raw, y = extreme_scores(200, 0)
    rows = DataLoader(TensorDataset(torch.zeros(200)), batch_size=50)
    with pytest.warns(UserWarning, match=r"worse calibrated: ECE 0\.\d+ calibrated vs 0\.\d+ raw over 200 pairs"):
        trainer(tmp_path, [AdaptiveCalibration(n_groups=10, log_figures=False)]).validate(FixedScores(raw, y), rows)

    cb = AdaptiveCalibration(n_groups=10, min_rounds=150, log_figures=False)
    with warnings.catch_warnings(), caplog.at_level(logging.INFO):
        warnings.filterwarnings("error", message=".*worse calibrated.*")
        trainer(tmp_path, [cb]).validate(FixedScores(raw, y), rows)
    res = cb.last_results["validate"]
    assert res["val_cal/ece"] == pytest.approx(res["val_cal/raw_ece"])
    assert "200 of 200 validate pairs kept their raw score" in caplog.text
    np.testing.assert_array_equal(cb.process(raw[:5], y[:5]), raw[:5].numpy())  # groups still below 150 pairs

    helped = AdaptiveCalibration(n_groups=10, log_figures=False)
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*worse calibrated.*")
        trainer(tmp_path, [helped]).validate(OverconfidentClassifier(), loader(8000, 0))
    with pytest.raises(ValueError, match="mapping"):
        AdaptiveCalibration(mapping="isotonic")
    with pytest.raises(ValueError, match="min_rounds"):
        AdaptiveCalibration(min_rounds=-1)
