"""Layering runs one way: callbacks, datamodules and metrics never load a method's LightningModule.

A drop-in import of a callback must not load any LightningModule or datamodule; the package files under
``datamodules/``, ``metrics/`` and ``callbacks/`` must not import a method's ``module.py``, and datamodules must not
import from ``methods/`` at all (a datamodule never calls into the model).
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "lightning_papers"


def _imports(path: Path) -> list[str]:
    names = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            names.append(node.module)
        elif isinstance(node, ast.Import):
            names.extend(alias.name for alias in node.names)
    return names


@pytest.mark.parametrize("name", ["GradientProjection", "AdaptiveCalibration", "FigureLogger"])
def test_drop_in_callback_import_loads_no_module_or_datamodule(name: str) -> None:
    code = (
        "import sys\n"
        f"from lightning_papers.callbacks import {name}\n"
        "bad = sorted(m for m in sys.modules if m.startswith('lightning_papers.datamodules')"
        " or (m.startswith('lightning_papers.methods.') and m.endswith('.module')))\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "", f"importing {name} loaded {out}"


@pytest.mark.parametrize("layer", ["datamodules", "metrics", "callbacks"])
def test_lower_layers_never_import_a_lightning_module(layer: str) -> None:
    for path in sorted((PACKAGE / layer).rglob("*.py")):
        for name in _imports(path):
            assert not (name.startswith("lightning_papers.methods.") and name.endswith(".module")), (
                f"{path.relative_to(PACKAGE.parent)} imports {name}"
            )
            if layer != "callbacks":  # a callback may use an algorithm's plain-torch parts (not its module)
                where = path.relative_to(PACKAGE.parent)
                assert not name.startswith("lightning_papers.methods"), f"{where} imports {name}"


def test_method_init_files_import_nothing() -> None:
    for init in sorted((PACKAGE / "methods").glob("*/__init__.py")):
        assert _imports(init) == [], f"{init.relative_to(PACKAGE.parent)} imports {_imports(init)}"


def test_no_private_names_imported_across_files() -> None:
    """A name another file needs gets a public name; ``from x import _private`` is not allowed."""
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("lightning_papers"):
                private = [a.name for a in node.names if a.name.startswith("_")]
                assert not private, f"{path.relative_to(PACKAGE.parent)} imports private {private} from {node.module}"
