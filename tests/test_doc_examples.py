"""Complete code examples in the README and docs/*.md run as written (docs that match the code).

A complete example is a ```python block that calls ``trainer.fit(``; fragments (API sketches) are not run.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
EXAMPLES = [
    (doc, i, code)
    for doc in DOCS
    for i, code in enumerate(re.findall(r"```python\n(.*?)```", doc.read_text(), flags=re.S))
    if "trainer.fit(" in code
]


def test_readme_has_a_complete_example() -> None:
    assert any(doc.name == "README.md" for doc, _, _ in EXAMPLES)


@pytest.mark.parametrize(("doc", "index", "code"), EXAMPLES, ids=[f"{d.relative_to(ROOT)}#{i}" for d, i, _ in EXAMPLES])
def test_doc_example_runs(doc: Path, index: int, code: str, capsys: pytest.CaptureFixture, tmp_path: Path,
                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # examples may write figures or checkpoints under the working directory
    exec(compile(code, f"{doc.name} example {index}", "exec"), {"__name__": "doc_example"})  # noqa: S102
    out = capsys.readouterr().out.strip()
    assert out, "the example prints its result"
    if doc.name == "README.md":
        values = eval(out.splitlines()[-1])  # noqa: S307 - the dict of val_cal/* metrics the example prints
        assert values["val_cal/ece"] < values["val_cal/raw_ece"]  # the over-confident classifier is recalibrated
