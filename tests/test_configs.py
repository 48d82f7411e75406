"""Every shipped YAML parses and instantiates (model, datamodule, trainer) without running."""

from __future__ import annotations

from pathlib import Path

import pytest

from lightning_papers.cli import cli_main

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted((ROOT / "configs").rglob("*.yaml"))


def test_configs_exist() -> None:
    assert CONFIGS, "no configs found under configs/"


@pytest.mark.parametrize("config", CONFIGS, ids=[str(c.relative_to(ROOT / "configs")) for c in CONFIGS])
def test_config_instantiates(config: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)  # configs use paths relative to the repository root
    cli = cli_main(["--config", str(config)], run=False)
    assert cli.model is not None and cli.datamodule is not None and cli.trainer is not None


@pytest.mark.parametrize("config", CONFIGS, ids=[str(c.relative_to(ROOT / "configs")) for c in CONFIGS])
def test_config_writes_a_checkpoint_to_resume_from(config: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``--ckpt_path`` needs a checkpoint: every config saves one (``last.ckpt``, or a named one GRASP's steps use)."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    monkeypatch.chdir(ROOT)
    cli = cli_main(["--config", str(config)], run=False)
    checkpoints = [c for c in cli.trainer.callbacks if isinstance(c, ModelCheckpoint)]
    assert checkpoints, f"{config.name} saves no checkpoint"
    assert any(c.save_last or c.filename for c in checkpoints), f"{config.name}: no last.ckpt and no named checkpoint"
