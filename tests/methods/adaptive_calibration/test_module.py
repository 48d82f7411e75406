"""The stream method end to end: CLI fit on the debug config, CSV streams, and checkpointing of the forecaster."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from lightning.pytorch import Trainer

from lightning_papers.cli import cli_main
from lightning_papers.datamodules.streams import CSVStreamDataModule, PiecewiseStreamDataModule
from lightning_papers.methods.adaptive_calibration.config import CalibrationEpochsConfig
from lightning_papers.methods.adaptive_calibration.module import CalibrationStreamModule
from lightning_papers.metrics.calibration import l1_calibration_error

ROOT = Path(__file__).resolve().parents[3]


def test_cli_fit_debug_config(tmp_path: Path) -> None:
    cli = cli_main(
        [
            "fit",
            "--config", str(ROOT / "configs/adaptive_calibration/debug.yaml"),
            "--trainer.logger=false",
            f"--trainer.default_root_dir={tmp_path}",
            "--data.init_args.length=4000",
        ]
    )  # fmt: skip
    metrics = cli.trainer.callback_metrics
    dm, module = cli.datamodule, cli.model
    p, y = np.concatenate(module.history["p"]), np.concatenate(module.history["y"])
    np.testing.assert_array_equal(y, dm.y)  # the whole stream was played, in order
    # the logged running l1/T is the exact Cal1/T (forecasts are on the metric's lattice)
    assert float(metrics["train/l1_per_T"]) == pytest.approx(l1_calibration_error(p, y) / y.size)
    assert float(metrics["train/l1_exact_per_T"]) == pytest.approx(l1_calibration_error(p, y) / y.size)
    assert float(metrics["train/l1_per_T"]) < 0.1
    assert list((tmp_path / "figures").glob("train_reliability*.png"))


def test_cli_max_steps_then_ckpt_path_plays_the_rest_of_the_stream(tmp_path: Path) -> None:
    """``--trainer.max_steps 2`` then ``--ckpt_path`` with the same config (as a user would): the resumed run plays
    rounds 2000-3999 and ends with the metrics of an uninterrupted run (it used to play nothing and exit 0)."""
    args = ["fit", "--config", str(ROOT / "configs/adaptive_calibration/debug.yaml"), "--trainer.logger=false",
            "--trainer.enable_checkpointing=true", "--data.init_args.length=4000"]  # fmt: skip
    full = cli_main([*args, f"--trainer.default_root_dir={tmp_path / 'full'}"])
    part = cli_main([*args, f"--trainer.default_root_dir={tmp_path / 'part'}", "--trainer.max_steps=2"])
    assert float(part.trainer.callback_metrics["train/rounds"]) == 2000
    ckpt = next((tmp_path / "part").rglob("*.ckpt"))
    resumed = cli_main([*args, f"--trainer.default_root_dir={tmp_path / 'part'}", f"--ckpt_path={ckpt}"])
    assert resumed.trainer.global_step == 4
    got = {k: float(v) for k, v in resumed.trainer.callback_metrics.items()}
    assert got == {k: float(v) for k, v in full.trainer.callback_metrics.items()}
    assert got["train/rounds"] == 4000


def test_cli_sets_calibrator_fields_and_rejects_bad_ones(tmp_path: Path) -> None:
    """``--model.init_args.calibrator.*`` reaches the forecaster's config; a bad value fails before training."""
    args = ["--config", str(ROOT / "configs/adaptive_calibration/deviation_budget.yaml"), "--trainer.logger=false",
            f"--trainer.default_root_dir={tmp_path}"]  # fmt: skip
    cli = cli_main([*args, "--model.init_args.calibrator.first_epoch=16"], run=False)
    assert cli.model.config == CalibrationEpochsConfig(measure="l2", first_epoch=16)  # measure from the YAML
    assert cli.model.forecaster.config is cli.model.config
    with pytest.raises(ValueError, match="first_epoch must be an integer >= 2, got 1"):
        cli_main([*args, "--model.init_args.calibrator.first_epoch=1"], run=False)


@pytest.mark.parametrize("name", ["uniform", "rounded_mean", "running_mean", "oracle", "adaptive_restart"])
def test_every_forecaster_runs(name: str, tmp_path: Path) -> None:
    dm = PiecewiseStreamDataModule(length=2000, segments=2, batch_size=500)
    module = CalibrationStreamModule(forecaster=name)
    trainer = Trainer(max_epochs=1, logger=False, default_root_dir=tmp_path, enable_progress_bar=False,
                      enable_model_summary=False, enable_checkpointing=False)  # fmt: skip
    trainer.fit(module, dm)
    p = np.concatenate(module.history["p"])
    assert p.size == 2000 and np.all((p >= 0) & (p <= 1))
    if name == "oracle":
        np.testing.assert_array_equal(p, dm.reference)
    if name == "uniform":
        assert module.forecaster.horizon == 2000


def test_csv_stream_and_checkpoint_roundtrip(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    raw = rng.random(3000)
    labels = (rng.random(3000) < raw**2).astype(int)  # the user's probabilities are miscalibrated
    path = tmp_path / "s.csv"
    path.write_text("probability,label\n" + "\n".join(f"{a},{b}" for a, b in zip(raw, labels)))
    module = CalibrationStreamModule(calibrator=CalibrationEpochsConfig(first_epoch=16))
    trainer = Trainer(max_epochs=1, logger=False, default_root_dir=tmp_path, enable_progress_bar=False,
                      enable_model_summary=False)  # fmt: skip
    trainer.fit(module, CSVStreamDataModule(str(path), batch_size=1000))
    m = trainer.callback_metrics
    assert float(m["train/l1_per_T"]) < float(m["train/reference_l1_per_T"])
    ckpt = next(tmp_path.rglob("*.ckpt"))
    restored = CalibrationStreamModule.load_from_checkpoint(ckpt)
    assert restored.config == module.config
    assert restored.forecaster.state_dict() == module.forecaster.state_dict()


def test_module_rejects_unknown_forecaster() -> None:
    with pytest.raises(ValueError, match="unknown forecaster"):
        CalibrationStreamModule(forecaster="magic")
