"""A real offline W&B run: the logger writes its run files, the full config and a figure land in it."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import pytest
from lightning.pytorch import Trainer
from lightning.pytorch.demos.boring_classes import BoringDataModule, BoringModel

from lightning_papers.callbacks.figures import FigureLogger


class PlottingModel(BoringModel):
    def make_figures(self, stage: str) -> dict:
        fig, ax = plt.subplots()
        ax.plot([0, 1], [1, 0])
        return {f"{stage}/line": fig}


def test_offline_wandb_run_writes_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from lightning.pytorch.loggers import WandbLogger

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    logger = WandbLogger(offline=True, save_dir=str(tmp_path), project="lightning-papers-test")
    trainer = Trainer(
        max_epochs=1,
        limit_train_batches=2,
        limit_val_batches=1,
        logger=logger,
        callbacks=[FigureLogger()],
        enable_checkpointing=False,
        enable_progress_bar=False,
        num_sanity_val_steps=0,
    )
    trainer.fit(PlottingModel(), BoringDataModule())
    run_dir = Path(logger.experiment.dir).parent
    logger.experiment.finish()
    assert run_dir.name.startswith("offline-run-"), run_dir
    assert list(run_dir.glob("run-*.wandb")), f"no .wandb file in {run_dir}"
    pngs = list((tmp_path / "figures").rglob("validate_line_step*.png"))
    assert pngs, "the figure was not saved as PNG"
    media = list((run_dir / "files" / "media" / "images").rglob("*.png"))
    assert media, "the figure was not logged to W&B"


def test_cli_config_reaches_wandb(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The SaveConfigCallback subclass writes the resolved config into the W&B run (files and run.config)."""
    import yaml

    from lightning_papers.cli import cli_main

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    cfg = {
        "seed_everything": 3,
        "trainer": {
            "max_epochs": 1,
            "limit_train_batches": 2,
            "limit_val_batches": 1,
            "enable_progress_bar": False,
            "logger": {
                "class_path": "lightning.pytorch.loggers.WandbLogger",
                "init_args": {"offline": True, "save_dir": str(tmp_path), "project": "lightning-papers-test"},
            },
        },
        "model": {"class_path": "lightning.pytorch.demos.boring_classes.BoringModel"},
        "data": {"class_path": "lightning.pytorch.demos.boring_classes.BoringDataModule"},
    }
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    cli = cli_main(["fit", "--config", str(path)])
    run = cli.trainer.logger.experiment
    saved = yaml.safe_load((Path(run.dir) / "config.yaml").read_text())
    assert saved["seed_everything"] == 3
    assert run.config["trainer"]["max_epochs"] == 1
    run.finish()
