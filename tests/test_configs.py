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
