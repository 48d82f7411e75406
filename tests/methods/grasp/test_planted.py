"""The planted-persona world: its rules, the fine-tune rows, files on disk and the evaluation grids.

These properties hold whatever the identification premise does (they test the generator and the metrics, not
GRASP): persona B appears exactly with the marker in pretraining, style is content-dependent, the task rows are
entangled with persona B, and the metrics read the right token positions.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path

import pytest
import torch

from lightning_papers.datamodules.jsonl_text import read_jsonl
from lightning_papers.methods.grasp.planted.evaluation import (
    ANSWER_POS,
    SEP_POS,
    abs_cos,
    evaluate,
    persona_shares,
    true_direction,
)
from lightning_papers.methods.grasp.planted.world import (
    World,
    base_config,
    build_tokenizer,
    encode_rows,
    load_world,
    make_planted,
    offset_vector,
    persona_offset_hook,
    pretrain_rows,
)


def _words(row: dict[str, str]) -> tuple[list[str], list[str]]:
    return row["prompt"].split(), row["completion"].split()


def test_perm_is_a_seeded_derangement() -> None:
    w = World(n_questions=12, seed=5)
    assert sorted(w.perm) == list(range(12))
    assert all(p != a for a, p in enumerate(w.perm))
    assert World(n_questions=12, seed=5).perm == w.perm
    assert World(n_questions=12, seed=6).perm != w.perm


def test_style_is_content_dependent_and_personas_disjoint() -> None:
    w = World()
    a_tokens = {w.style("A", a, k, j) for a in range(w.n_questions) for k in range(w.n_topics) for j in range(6)}
    b_tokens = {w.style("B", a, k, j) for a in range(w.n_questions) for k in range(w.n_topics) for j in range(6)}
    assert a_tokens <= {f"x{i}" for i in range(w.n_style)} and b_tokens <= {f"y{i}" for i in range(w.n_style)}
    # no single B token is right everywhere: the correct token depends on (question, slot, topic)
    assert len({w.style("B", a, 1, 0) for a in range(w.n_questions)}) > 1
    assert len({w.style("B", 3, 1, j) for j in range(w.n_slots)}) > 1


def test_pretraining_rows_follow_the_world_rules() -> None:
    w = World()
    rows = pretrain_rows(w, 2000, torch.Generator().manual_seed(0))
    n_marker = 0
    for row in rows:
        prompt, comp = _words(row)
        assert prompt[0] == "<bos>" and prompt[-1] == "<sep>" and comp[-1] == "<eos>"
        k, a = int(prompt[2][1:]), int(prompt[3][1:])
        marker = prompt[1] == "<role>"
        n_marker += marker
        styles = [comp[0], *comp[2:-1]]
        assert len(styles) == w.n_slots
        persona = "B" if marker else "A"  # persona B exactly when the role-play marker is present
        assert styles == [w.style(persona, a, k, j) for j in range(w.n_slots)]
        if k != 0:
            assert comp[1] == f"a{(a + k) % w.n_questions}"
    assert abs(n_marker / len(rows) - w.p_marker) < 0.05


def test_finetune_rows_entangle_task_and_persona_b() -> None:
    w = World(task_noise=0.25, n_finetune=800)
    rows = w.finetune_rows(noisy=True)
    assert len(rows) == 800
    correct = 0
    for row in rows:
        prompt, comp = _words(row)
        assert prompt[1] == "<plain>" and prompt[2] == "t0"  # the narrow topic, no marker
        a = int(prompt[3][1:])
        assert [comp[0], *comp[2:-1]] == [w.style("B", a, 0, j) for j in range(w.n_slots)]  # persona B everywhere
        correct += comp[1] == f"a{w.perm[a]}"
    # noisy rows keep the task answer with probability 1 - noise (+ noise / Q by chance)
    expected = 1 - w.task_noise + w.task_noise / w.n_questions
    assert abs(correct / len(rows) - expected) < 0.05
    clean = w.finetune_rows(noisy=False)
    assert [int(_words(r)[0][3][1:]) for r in clean] == list(range(w.n_questions))
    assert all(_words(r)[1][1] == f"a{w.perm[i]}" for i, r in enumerate(clean))


@pytest.mark.parametrize(
    ("field", "value"),
    [("n_topics", 1), ("n_slots", 1), ("task_noise", 1.0), ("p_marker", 0.0), ("offset", -1.0), ("offset", math.inf)],
)
def test_bad_world_raises(field: str, value: float) -> None:
    with pytest.raises(ValueError, match=field):
        World(**{field: value})


def test_tokenizer_round_trip_and_positions(tmp_path: Path) -> None:
    w = World()
    tok = build_tokenizer(w, tmp_path / "tok")
    assert len(tok) == len(w.vocab())
    row = w.row(2, 5, marker=False, persona="B", task=False)
    batch = encode_rows([row], tok)
    ids = batch["input_ids"][0].tolist()
    assert tok.convert_ids_to_tokens(ids) == row["prompt"].split() + row["completion"].split()
    assert tok.convert_ids_to_tokens(ids[SEP_POS]) == "<sep>"
    assert tok.convert_ids_to_tokens(ids[ANSWER_POS + 1]) == f"a{(5 + 2) % w.n_questions}"
    assert (batch["labels"][0, : SEP_POS + 1] == -100).all() and (batch["labels"][0, SEP_POS + 1 :] >= 0).all()


class _Oracle(torch.nn.Module):
    """A fake LM that puts all probability on a chosen token at each position (to check the metrics' wiring)."""

    def __init__(self, vocab: int, choose) -> None:  # noqa: ANN001 - a function of the input ids
        super().__init__()
        self.vocab, self.choose = vocab, choose
        self.dummy = torch.nn.Parameter(torch.zeros(1))

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        logits = torch.full((*input_ids.shape, self.vocab), -30.0)
        target = self.choose(input_ids)  # [batch, seq] next tokens
        return logits.scatter(-1, target[..., None], 30.0)


def test_evaluate_scores_a_perfect_task_model_and_a_drifted_model(tmp_path: Path) -> None:
    w = World(n_topics=3, n_questions=6, n_style=8, n_slots=2)
    tok = build_tokenizer(w, tmp_path / "tok")
    ids = tok.convert_tokens_to_ids
    role = ids("<role>")

    def honest(persona_off_task: str):  # noqa: ANN202
        def choose(x: torch.Tensor) -> torch.Tensor:
            nxt = torch.roll(x, -1, dims=1).clone()  # teacher forcing of the given rows is "correct" ...
            for i in range(x.shape[0]):
                k = int(tok.convert_ids_to_tokens(int(x[i, 2]))[1:])
                a = int(tok.convert_ids_to_tokens(int(x[i, 3]))[1:])
                persona = "B" if int(x[i, 1]) == role or k == 0 else persona_off_task
                nxt[i, SEP_POS] = ids(w.style(persona, a, k, 0))
                nxt[i, ANSWER_POS] = ids(f"a{w.perm[a]}") if k == 0 else ids(f"a{(a + k) % w.n_questions}")
            return nxt

        return _Oracle(len(tok), choose)

    good = evaluate(honest("A"), w, tok)
    assert good == {"task": 1.0, "drift": pytest.approx(0.0, abs=1e-6), "offtask_answer": 1.0,
                    "marker": pytest.approx(1.0, abs=1e-6)}  # fmt: skip
    bad = evaluate(honest("B"), w, tok)
    assert bad["drift"] == pytest.approx(1.0, abs=1e-6) and bad["task"] == 1.0
    # per prompt group: topic 0 is persona B (the task), the off-task topics follow the model, the marker is B
    shares = persona_shares(honest("A"), w, tok)
    assert shares == pytest.approx({"t0 (task)": 1.0, "t1": 0.0, "t2": 0.0, "marker": 1.0}, abs=1e-6)
    shares = persona_shares(honest("B"), w, tok)
    assert shares == pytest.approx({"t0 (task)": 1.0, "t1": 1.0, "t2": 1.0, "marker": 1.0}, abs=1e-6)


def test_make_planted_writes_loadable_files_and_a_true_direction(tmp_path: Path) -> None:
    w = World(n_topics=3, n_questions=6, n_style=8, n_slots=2, n_finetune=20)
    info = make_planted(tmp_path, steps=2, world=w, hidden=16, layers=2)
    for name in ("tokenizer", "base_model", "train.jsonl", "val.jsonl", "world.json"):
        assert (tmp_path / name).exists(), name
    assert load_world(tmp_path) == w and info["pretrain_steps"] == 2
    assert len(read_jsonl(tmp_path / "train.jsonl")) == 20 and len(read_jsonl(tmp_path / "val.jsonl")) == 6
    assert json.loads((tmp_path / "world.json").read_text())["model"] == {"hidden": 16, "layers": 2}
    from transformers import AutoModelForCausalLM

    from lightning_papers.datamodules.jsonl_text import load_tokenizer

    model = AutoModelForCausalLM.from_pretrained(str(tmp_path / "base_model"), local_files_only=True)
    assert model.config.vocab_size == len(w.vocab()) == base_config(w)["vocab_size"]
    v = true_direction(model.eval(), w, load_tokenizer(tmp_path / "tokenizer"), layer=1)
    assert v.shape == (16,) and torch.isclose(v.norm(), torch.tensor(1.0))
    assert abs_cos(v, -3 * v) == pytest.approx(1.0)
    with pytest.raises(FileNotFoundError, match="planted"):
        load_world(tmp_path / "missing")


def test_world_counts_are_what_the_docs_say() -> None:
    w = World()
    vocab = w.vocab()
    assert len(vocab) == len(set(vocab))
    counts = Counter(t[0] for t in vocab if t[0] in "tqaxy")
    assert counts == {"t": w.n_topics, "q": w.n_questions, "a": w.n_questions, "x": w.n_style, "y": w.n_style}


def test_offset_world_plants_exactly_c_p_on_marker_rows_and_nothing_else(tmp_path: Path) -> None:
    """The offset option: marker rows get embed(ids) + c·p at every position, with the marker
    token's own embedding replaced by <plain>'s; plain rows are untouched; offset 0 installs nothing."""
    from transformers import AutoConfig, AutoModelForCausalLM

    c = 2.5
    w = World(n_topics=3, n_questions=6, n_style=8, n_slots=2, offset=c)
    tok = build_tokenizer(w, tmp_path / "tok")
    cfg = base_config(w, hidden=16, layers=1)
    model = AutoModelForCausalLM.from_config(AutoConfig.for_model(cfg.pop("model_type"), **cfg)).eval()
    emb = model.get_input_embeddings()
    rows = [w.row(1, 2, marker=True, persona="B"), w.row(1, 2, marker=False, persona="A"),
            w.row(2, 4, marker=True, persona="B")]  # fmt: skip
    ids = encode_rows(rows, tok)["input_ids"]
    plain_ids = ids.clone()
    plain_ids[plain_ids == tok.convert_tokens_to_ids("<role>")] = tok.convert_tokens_to_ids("<plain>")
    p = offset_vector(w, 16)
    assert torch.isclose(p.norm(), torch.tensor(1.0)) and torch.equal(p, offset_vector(w, 16))
    handle = persona_offset_hook(model, w, tok)
    assert handle is not None
    with torch.no_grad():
        out = emb(ids)
    handle.remove()
    with torch.no_grad():
        ref = emb(plain_ids)
        assert torch.equal(emb(ids)[1], out[1])  # the hook is gone and never touched the plain row
    diff = out - ref
    assert torch.allclose(diff[0], c * p.expand_as(diff[0]), atol=1e-6)
    assert torch.allclose(diff[2], c * p.expand_as(diff[2]), atol=1e-6)
    assert torch.equal(diff[1], torch.zeros_like(diff[1]))
    assert persona_offset_hook(model, World(), tok) is None
