"""The README's Python example runs as written (docs that match the code)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_python_examples_run(capsys: pytest.CaptureFixture, tmp_path: Path, monkeypatch) -> None:
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert blocks, "README has no python example"
    monkeypatch.chdir(tmp_path)  # the example writes its figures under the working directory
    for code in blocks:
        exec(compile(code, str(README), "exec"), {"__name__": "readme_example"})  # noqa: S102
    metrics = capsys.readouterr().out.strip().splitlines()[-1]
    values = eval(metrics)  # noqa: S307 - the dict the example prints
    assert values["val_cal/ece"] < values["val_cal/raw_ece"]  # the over-confident classifier gets recalibrated
