"""JSONL prompt/completion datamodule: parsing, label masking, padding and clear errors on bad rows."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from lightning_papers.datamodules.jsonl_text import IGNORE_INDEX, JsonlTextDataModule, read_jsonl
from lightning_papers.methods.grasp.planted.world import World, build_tokenizer


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
    with pytest.raises(FileNotFoundError, match=r"nope\.jsonl.*grasp\.planted\.world"):
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


def _rows_file(tmp_path: Path, n: int) -> Path:
    return _write(tmp_path / "rows.jsonl",
                  [{"prompt": f"<bos> <plain> t1 q{i % 16} <sep>", "completion": f"x{i % 16}"} for i in range(n)])


def _order(loader) -> list[list[int]]:  # noqa: ANN001 - the question id of every row, batch by batch
    return [[int(t) for t in b["input_ids"][:, 3]] for b in loader]


def test_shuffled_order_is_the_one_a_shuffled_dataloader_gives(tmp_path: Path, tok_dir: Path) -> None:
    """With shuffle_seed=None the epochs' orders are DataLoader(shuffle=True)'s under the same global seed."""
    from torch.utils.data import DataLoader

    dm = JsonlTextDataModule(train_path=str(_rows_file(tmp_path, 16)), tokenizer_path=str(tok_dir), batch_size=4)
    dm.setup("fit")
    torch.manual_seed(3)
    reference = DataLoader(dm.train_rows, batch_size=4, shuffle=True, collate_fn=lambda r: r)
    expected = [[[row["input_ids"][3] for row in b] for b in reference] for _ in range(3)]
    torch.manual_seed(3)
    loader = dm.train_dataloader()
    got = []
    for epoch in range(3):
        loader.sampler.set_epoch(epoch)
        got.append(_order(loader))
    assert got == expected and got[0] != got[1]


def test_loader_resumes_mid_epoch_with_the_remaining_batches(tmp_path: Path, tok_dir: Path) -> None:
    dm = JsonlTextDataModule(train_path=str(_rows_file(tmp_path, 22)), tokenizer_path=str(tok_dir), batch_size=4,
                             shuffle_seed=11)  # fmt: skip
    dm.setup("fit")
    loader = dm.train_dataloader()
    loader.sampler.set_epoch(2)
    full = _order(loader)
    assert len(full) == 6 and sorted(sum(full, [])) == sorted(r["input_ids"][3] for r in dm.train_rows)
    it = iter(loader)
    head = [next(it) for _ in range(4)]
    state = loader.state_dict()
    assert state["epoch"] == 2 and state["batches"] == 4
    fresh = JsonlTextDataModule(train_path=str(_rows_file(tmp_path, 22)), tokenizer_path=str(tok_dir), batch_size=4)
    fresh.setup("fit")
    resumed = fresh.train_dataloader()  # another seed: the checkpoint's generator state wins
    resumed.load_state_dict(state)
    resumed.sampler.set_epoch(2)
    assert _order(head) + _order(resumed) == full
    assert resumed.state_dict()["batches"] == 6
    resumed.sampler.set_epoch(3)
    assert len(_order(resumed)) == 6  # the next epoch is whole again


def test_ranks_split_the_same_epoch_order(tmp_path: Path, tok_dir: Path) -> None:
    from lightning_papers.datamodules.jsonl_text import EpochSampler

    state = torch.Generator().manual_seed(5).get_state()
    one = list(EpochSampler(10, True, state))
    ranks = [list(EpochSampler(10, True, state, num_replicas=2, rank=r)) for r in (0, 1)]
    assert ranks[0] == one[0::2] and ranks[1] == one[1::2]
    assert sorted(ranks[0] + ranks[1]) == list(range(10))
