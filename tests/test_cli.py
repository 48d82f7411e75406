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


def _help(*args: str, columns: int = 80) -> str:
    env = {**os.environ, "COLUMNS": str(columns)}
    return subprocess.run(
        [sys.executable, "-m", "lightning_papers", "fit", *args], capture_output=True, text=True, check=True, env=env
    ).stdout


def test_fit_help_lists_models_datamodules_and_callbacks_unbroken() -> None:
    out = _help("--help", columns=70)  # narrow: argparse would split long class paths mid-word by default
    assert "--model" in out and "--data" in out
    words = set(out.replace(",", " ").replace("(", " ").replace(")", " ").split())
    for name in discover():
        assert any(w.startswith(f"lightning_papers.methods.{name}.") for w in words), f"{name} missing from --help"
    for callback in ("GradientProjection", "AdaptiveCalibration", "FigureLogger"):
        assert any(w.startswith("lightning_papers.callbacks.") and w.endswith(callback) for w in words), callback


def test_callback_help_by_short_name() -> None:
    out = _help("--trainer.callbacks.help", "GradientProjection")
    assert "--trainer.callbacks.subspace" in out and "--trainer.callbacks.mode" in out


def test_gradient_projection_subspace_from_the_command_line(tmp_path: Path) -> None:
    cfg = yaml.safe_load(_a_config().read_text())
    cfg["gradient_projection"] = {"class_path": "GradientProjection", "init_args": {"subspace": "in_config.pt"}}
    path = tmp_path / "with_grasp.yaml"
    path.write_text(yaml.safe_dump(cfg))
    args = ["--config", str(path), "--gradient_projection.subspace", "from_cli.pt", "--trainer.logger", "false"]
    cli = cli_main(args, run=False)
    projections = [c for c in cli.trainer.callbacks if type(c).__name__ == "GradientProjection"]
    assert len(projections) == 1 and projections[0].subspace == "from_cli.pt"


def test_no_gradient_projection_unless_asked() -> None:
    cli = cli_main(["--config", str(_a_config()), "--trainer.logger", "false"], run=False)
    assert not [c for c in cli.trainer.callbacks if type(c).__name__ == "GradientProjection"]


def test_wandb_run_named_from_config_and_resumed_from_checkpoint(tmp_path: Path) -> None:
    import torch

    from lightning_papers.cli import WANDB_RUN_ID_KEY

    cfg = yaml.safe_load(_a_config().read_text())
    cfg["seed_everything"] = 7
    cfg["trainer"]["logger"] = {"class_path": "lightning.pytorch.loggers.WandbLogger",
                                "init_args": {"offline": True, "save_dir": str(tmp_path)}}
    path = tmp_path / "debug.yaml"
    path.write_text(yaml.safe_dump(cfg))
    ckpt = tmp_path / "last.ckpt"
    torch.save({WANDB_RUN_ID_KEY: "abc123", "state_dict": {}}, ckpt)
    cli = cli_main(["--config", str(path)], run=False)
    init = cli.trainer.loggers[0]._wandb_init
    assert init["name"] == f"{tmp_path.name}/debug-seed7" and "anonymous" not in init
    from lightning_papers.cli import LightningPapersCLI

    resumed = LightningPapersCLI.__new__(LightningPapersCLI)  # only the config hook, as `fit --ckpt_path` runs it
    resumed.subcommand, resumed.config = None, cli.config.clone()
    resumed.config.ckpt_path = str(ckpt)
    resumed.before_instantiate_classes()
    assert resumed.config.trainer.logger.init_args.id == "abc123"
    assert resumed.config.trainer.logger.init_args.resume == "allow"


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
