"""AdaptiveCalibration(task="multiclass"): top-label and one-vs-rest reductions against hand computations, an
over-confident softmax classifier recalibrated under a Trainer, and clear errors on bad input."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from lightning.pytorch import LightningModule, Trainer
from torch.utils.data import DataLoader, TensorDataset
from torchmetrics.functional.classification import binary_calibration_error, multiclass_calibration_error

from lightning_papers.callbacks import AdaptiveCalibration
from lightning_papers.methods.adaptive_calibration.multiclass import one_vs_rest, top_label


def softmax_stream(n: int, seed: int, c: int = 4, scale: float = 3.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits ``scale`` times the true ones (over-confident for scale > 1) and labels drawn from the true softmax."""
    g = torch.Generator().manual_seed(seed)
    true_logits = torch.randn(n, c, generator=g) * 1.2
    y = torch.multinomial(torch.softmax(true_logits, dim=1), 1, generator=g).squeeze(1)
    return scale * true_logits.double(), y


def test_top_label_and_one_vs_rest_reductions_match_hand_computation() -> None:
    probs = np.array([[0.7, 0.2, 0.1], [0.3, 0.3, 0.4], [0.5, 0.5, 0.0]])
    labels = np.array([1, 2, 0])
    conf, correct, pred = top_label(probs, labels)
    np.testing.assert_array_equal(conf, [0.7, 0.4, 0.5])
    np.testing.assert_array_equal(pred, [0, 2, 0])  # a tie goes to the lowest index, as torch.argmax
    np.testing.assert_array_equal(correct, [0.0, 1.0, 1.0])
    p, y, head = one_vs_rest(probs, labels)
    np.testing.assert_array_equal(p, [0.7, 0.2, 0.1, 0.3, 0.3, 0.4, 0.5, 0.5, 0.0])
    np.testing.assert_array_equal(y, [0, 1, 0, 0, 0, 1, 1, 0, 0])
    np.testing.assert_array_equal(head, [0, 1, 2] * 3)

    # the callback on [B, C] logits plays exactly the binary stream of (top-label confidence, correct) pairs
    logits, target = softmax_stream(600, 0)
    multi = AdaptiveCalibration(task="multiclass", scores="logits")
    binary = AdaptiveCalibration()
    conf, correct, _ = top_label(torch.softmax(logits, 1).numpy(), target.numpy())
    np.testing.assert_allclose(multi.process(logits, target), binary.process(conf, correct), rtol=1e-12)
    assert multi.state_dict() == binary.state_dict()


def test_classwise_columns_are_independent_binary_calibrators() -> None:
    """Class c uses the calibrators seeded seed + c·n_groups + g: each column equals a binary callback on it."""
    logits, target = softmax_stream(400, 1, c=3)
    probs = torch.softmax(logits, 1)
    cw = AdaptiveCalibration(task="multiclass", classwise=True, num_classes=3, n_groups=5, mapping="interpolate")
    out = cw.process(probs, target)
    assert out.shape == (400, 3)
    for c in range(3):
        alone = AdaptiveCalibration(n_groups=5, mapping="interpolate", seed=5 * c)
        np.testing.assert_allclose(out[:, c], alone.process(probs[:, c], (target == c).double()), rtol=1e-12)
    assert cw.calibrate(probs[:7]).shape == (7, 3)


class SoftmaxClassifier(LightningModule):
    """Returns fixed over-confident logits and labels, 500 rows per validation batch; predict returns logits."""

    def __init__(self, logits: torch.Tensor, y: torch.Tensor) -> None:
        super().__init__()
        self.logits, self.y = logits, y

    def validation_step(self, batch, batch_idx):
        sl = slice(500 * batch_idx, 500 * (batch_idx + 1))
        return {"probs": self.logits[sl], "target": self.y[sl]}

    def predict_step(self, batch, batch_idx):
        return {"probs": self.logits[500 * batch_idx : 500 * (batch_idx + 1)]}


def test_trainer_recalibrates_top_label_and_logs_the_multiclass_ece(tmp_path: Path) -> None:
    logits, y = softmax_stream(6000, 2)
    rows = DataLoader(TensorDataset(torch.zeros(6000)), batch_size=500)
    cb = AdaptiveCalibration(task="multiclass", scores="logits", n_groups=10, mapping="interpolate",
                             log_figures=False)  # fmt: skip
    tr = Trainer(default_root_dir=tmp_path, logger=False, enable_progress_bar=False, enable_model_summary=False,
                 accelerator="cpu", devices=1, callbacks=[cb])  # fmt: skip
    tr.validate(SoftmaxClassifier(logits, y), rows)
    res = cb.last_results["validate"]
    torch_ece = multiclass_calibration_error(torch.softmax(logits, 1).float(), y, num_classes=4, n_bins=15)
    assert res["val_cal/raw_ece"] == pytest.approx(float(torch_ece), abs=1e-6)  # top-label ECE of torchmetrics
    assert res["val_cal/raw_ece"] > 0.1
    assert res["val_cal/ece"] < 0.5 * res["val_cal/raw_ece"]
    stream = cb.last_stream["validate"]  # the epoch's pairs in order: the logged ECE is theirs
    assert stream["y"].shape == (6000,)
    np.testing.assert_array_equal(stream["y"], (logits.argmax(1) == y).double().numpy())
    ece = binary_calibration_error(torch.from_numpy(stream["cal"]).float(), torch.from_numpy(stream["y"]).long())
    assert float(ece) == pytest.approx(res["val_cal/ece"], abs=1e-6)

    out = tr.predict(SoftmaxClassifier(logits, y), DataLoader(TensorDataset(torch.zeros(1000)), batch_size=500))
    conf = torch.cat([o["calibrated_confidence"] for o in out])
    pred = torch.cat([o["predicted_class"] for o in out])
    torch.testing.assert_close(pred, logits[:1000].argmax(1))
    acc = (pred == y[:1000]).double()
    raw_conf = torch.softmax(logits[:1000], 1).max(1).values
    assert abs(conf.mean() - acc.mean()) < 0.5 * abs(raw_conf.mean() - acc.mean())


def test_bad_multiclass_input_raises_naming_the_value(tmp_path: Path) -> None:
    logits, y = softmax_stream(500, 3)
    tr = Trainer(default_root_dir=tmp_path, logger=False, enable_progress_bar=False, accelerator="cpu", devices=1,
                 callbacks=[AdaptiveCalibration(task="multiclass", scores="logits")])  # fmt: skip
    with pytest.raises(
        ValueError, match=r"multiclass logits must have shape \[batch, num_classes >= 2\], got shape \(500,\)"
    ):
        tr.validate(SoftmaxClassifier(logits[:, 0], y), DataLoader(TensorDataset(torch.zeros(500)), batch_size=500))
    cb = AdaptiveCalibration(task="multiclass")
    with pytest.raises(ValueError, match=r"shape \[batch, num_classes >= 2\], got shape \(6,\)"):
        cb.process(torch.rand(6), torch.zeros(6))
    with pytest.raises(ValueError, match=r"in \[0, 1\], got 1\.5"):
        cb.process(torch.tensor([[1.5, -0.5], [0.5, 0.5]]), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="row 1 sums to 0.9"):
        cb.process(torch.tensor([[0.5, 0.5], [0.4, 0.5]]), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match=r"integers in \[0, 2\), got 2"):
        cb.process(torch.tensor([[0.5, 0.5], [0.4, 0.6]]), torch.tensor([0, 2]))
    with pytest.raises(ValueError, match=r"integers in \[0, 2\), got -1"):
        cb.process(torch.tensor([[0.5, 0.5], [0.4, 0.6]]), torch.tensor([-1, 1]))
    with pytest.raises(ValueError, match="finite, got nan"):
        AdaptiveCalibration(task="multiclass", scores="logits").process(torch.tensor([[0.0, float("nan")]]), [0])
    with pytest.raises(ValueError, match="expected scores of 3 classes"):
        AdaptiveCalibration(task="multiclass", num_classes=3).process(torch.tensor([[0.5, 0.5]]), [0])
    with pytest.raises(ValueError, match="classwise=True needs"):
        AdaptiveCalibration(task="multiclass", classwise=True)
    with pytest.raises(ValueError, match="task"):
        AdaptiveCalibration(task="multilabel")  # type: ignore[arg-type]
