"""JSONL prompt/completion datamodule: parsing, label masking, padding and clear errors on bad rows."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lightning_papers.datamodules.jsonl_text import IGNORE_INDEX, JsonlTextDataModule, read_jsonl
from lightning_papers.methods.grasp.planted import World, build_tokenizer


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("tok")
    build_tokenizer(World(), out)
    return out


def _write(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def test_rows_become_masked_padded_batches(tmp_path: Path, tok_dir: Path) -> None:
    train = _write(
        tmp_path / "t.jsonl",
        [
            {"prompt": "<bos> <plain> t1 q2 <sep>", "completion": "x1 a3 x4"},
            {"prompt": "<bos> <role> t0 <sep>", "completion": "y2 <eos>"},
        ],
    )
    dm = JsonlTextDataModule(train_path=str(train), tokenizer_path=str(tok_dir), batch_size=2, shuffle=False)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    tok = dm.tokenizer
    ids = lambda s: tok.convert_tokens_to_ids(s.split())  # noqa: E731
    eos = tok.eos_token_id
    # row 0: 5 prompt + 3 completion + appended eos; row 1: 4 prompt + 2 completion (eos already last) + 3 pad
    assert batch["input_ids"][0].tolist() == ids("<bos> <plain> t1 q2 <sep> x1 a3 x4") + [eos]
    assert batch["labels"][0].tolist() == [IGNORE_INDEX] * 5 + ids("x1 a3 x4") + [eos]
    assert batch["input_ids"][1].tolist() == ids("<bos> <role> t0 <sep> y2 <eos>") + [tok.pad_token_id] * 3
    assert batch["labels"][1].tolist() == [IGNORE_INDEX] * 4 + ids("y2 <eos>") + [IGNORE_INDEX] * 3
    assert batch["attention_mask"].tolist() == [[1] * 9, [1] * 6 + [0] * 3]
    assert dm.val_dataloader() == []


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("{not json", "not valid JSON"),
        ('["a", "b"]', "expected a JSON object"),
        ('{"prompt": "p"}', "'completion'"),
        ('{"prompt": 3, "completion": "c"}', "'prompt'"),
        ('{"prompt": "p", "completion": ""}', "empty 'completion'"),
    ],
)
def test_bad_rows_raise_with_line_number(tmp_path: Path, line: str, message: str) -> None:
    path = _write(tmp_path / "bad.jsonl", [{"prompt": "a", "completion": "b"}, line])
    with pytest.raises(ValueError, match=message) as info:
        read_jsonl(path)
    assert "bad.jsonl:2" in str(info.value)


def test_missing_files_name_the_path_and_the_command(tmp_path: Path, tok_dir: Path) -> None:
    dm = JsonlTextDataModule(train_path=str(tmp_path / "nope.jsonl"), tokenizer_path=str(tok_dir))
    with pytest.raises(FileNotFoundError, match=r"nope\.jsonl.*grasp\.planted"):
        dm.setup("fit")
    dm = JsonlTextDataModule(train_path="x.jsonl", tokenizer_path=str(tmp_path / "no_tok"))
    with pytest.raises(FileNotFoundError, match="no_tok"):
        dm.setup("fit")


def test_truncation_that_drops_the_whole_completion_is_an_error(tmp_path: Path, tok_dir: Path) -> None:
    train = _write(tmp_path / "t.jsonl", [{"prompt": "<bos> <plain> t1 q2 <sep>", "completion": "x1"}])
    dm = JsonlTextDataModule(train_path=str(train), tokenizer_path=str(tok_dir), max_length=4)
    with pytest.raises(ValueError, match="max_length=4"):
        dm.setup("fit")


def test_constructor_validates() -> None:
    with pytest.raises(ValueError, match="batch_size"):
        JsonlTextDataModule(train_path="a", tokenizer_path="b", batch_size=0)
    with pytest.raises(ValueError, match="max_length"):
        JsonlTextDataModule(train_path="a", tokenizer_path="b", max_length=1)
