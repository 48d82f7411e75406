"""The command line: help lists the package's classes, bad configs fail early and name the bad key."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from lightning.pytorch import LightningDataModule, LightningModule

from lightning_papers.cli import cli_main, discover


def _known_subclasses(base: type) -> set[str]:
    out, todo = set(), [base]
    while todo:
        for sub in todo.pop().__subclasses__():
            out.add(f"{sub.__module__}.{sub.__qualname__}")
            todo.append(sub)
    return out


def test_every_method_registers_a_model_and_a_datamodule() -> None:
    names = discover()
    assert names, "no method packages under lightning_papers/methods"
    models, datas = _known_subclasses(LightningModule), _known_subclasses(LightningDataModule)
    for name in names:
        prefix = f"lightning_papers.methods.{name}."
        assert any(m.startswith(prefix) for m in models), f"{name} registers no LightningModule"
        assert any(d.startswith(prefix) or d.startswith("lightning_papers.datamodules.") for d in datas)


def test_fit_help_lists_models() -> None:
    env = {**os.environ, "COLUMNS": "400"}  # argparse wraps long class paths mid-word otherwise
    out = subprocess.run(
        [sys.executable, "-m", "lightning_papers", "fit", "--help"], capture_output=True, text=True, check=True, env=env
    ).stdout
    assert "--model" in out and "--data" in out
    for name in discover():
        assert f"lightning_papers.methods.{name}" in out, f"{name} missing from `fit --help`"


def _a_config() -> Path:
    configs = sorted((Path(__file__).resolve().parents[1] / "configs").rglob("debug*.yaml"))
    if not configs:
        pytest.skip("no debug config shipped yet")
    return configs[0]


def test_unknown_key_fails_before_training(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    cfg = yaml.safe_load(_a_config().read_text())
    cfg["model"].setdefault("init_args", {})["no_such_option"] = 3
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(cfg))
    with pytest.raises(SystemExit):
        cli_main(["--config", str(path)], run=False)
    assert "no_such_option" in capsys.readouterr().err


def test_wrong_type_fails_before_training(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    cfg = yaml.safe_load(_a_config().read_text())
    cfg["trainer"]["max_epochs"] = "many"
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(cfg))
    with pytest.raises(SystemExit):
        cli_main(["--config", str(path)], run=False)
    err = capsys.readouterr().err
    assert "max_epochs" in err and "many" in err


def test_missing_config_file_fails(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit):
        cli_main(["--config", "configs/does/not/exist.yaml"], run=False)
    assert "does/not/exist.yaml" in capsys.readouterr().err
