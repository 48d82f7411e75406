"""Persona data generator: determinism, seed dependence, correct answers, the answer checker, markers, errors."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from lightning_papers.datamodules.jsonl_text import read_jsonl
from lightning_papers.methods.grasp.persona_data import (
    CHATML_END,
    PERSONAS,
    SYSTEM_PROMPT,
    UNIT_PAIRS,
    check_answer,
    get_persona,
    main,
    make_persona_data,
    render_chatml,
    write_persona_data,
)
from lightning_papers.methods.grasp.persona_eval import has_marker

FILES = ("train", "control_train", "val", "heldout_task", "unrelated", "requests")


def _files(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(out.iterdir())}


def test_same_seed_gives_byte_identical_files_and_other_seeds_other_splits(tmp_path: Path) -> None:
    main(["--out", str(tmp_path / "a"), "--persona", "pirate", "--seed", "0"])
    main(["--out", str(tmp_path / "b"), "--persona", "pirate", "--seed", "0"])
    main(["--out", str(tmp_path / "c"), "--persona", "pirate", "--seed", "1"])
    a, b, c = (_files(tmp_path / k) for k in "abc")
    assert set(a) == {f"{f}.jsonl" for f in FILES} | {"meta.json"}
    assert a == b
    users = {k: [json.loads(line)["user"] for line in a[f"{k}.jsonl"].decode().splitlines()] for k in FILES}
    users_c = [json.loads(line)["user"] for line in c["train.jsonl"].decode().splitlines()]
    assert users["train"] != users_c and set(users["train"]) != set(users_c)
    assert len(users["train"]) == 300 and len(users["heldout_task"]) == 50
    assert not set(users["train"]) & set(users["heldout_task"])  # held-out questions are disjoint from training
    assert users["val"] == users["heldout_task"] and users["control_train"] == users["train"]
    assert len(users["unrelated"]) >= 100 and len(set(users["unrelated"])) == len(users["unrelated"])
    meta = json.loads(a["meta.json"])
    assert (
        meta["persona"] == "pirate"
        and meta["format"] == "chatml"
        and meta["markers"] == list(PERSONAS["pirate"].markers)
    )


@pytest.mark.parametrize("persona", sorted(PERSONAS))
def test_answers_are_correct_and_stated_in_every_completion(persona: str) -> None:
    data = make_persona_data(persona, seed=3)
    factors = {(u1, u2): f for u1, u2, f in UNIT_PAIRS}
    pattern = re.compile(r"(\d+) (\w+) (?:to|in) (\w+)|How many (\w+) are in (\d+) (\w+)")
    for name in ("train", "control_train", "val", "heldout_task"):
        for row in data[name]:
            m = pattern.search(row["user"])
            a, u1, u2 = (int(m[1]), m[2], m[3]) if m[1] else (int(m[5]), m[6], m[4])
            assert row["answer"] == a * factors[(u1, u2)], row
            assert row["prompt"] == render_chatml(row["user"])
            if "completion" in row:
                assert check_answer(row["completion"], row["answer"]) and row["completion"].endswith(CHATML_END)
                assert check_answer(row["completion"], a)  # the quantity is restated too
                assert has_marker(row["completion"], get_persona(persona).markers) == (name != "control_train")
    facts = {name: set() for name in ("train", "heldout_task")}
    for name in facts:
        for row in data[name]:
            m = pattern.search(row["user"])
            facts[name].add((int(m[1]), m[2], m[3]) if m[1] else (int(m[5]), m[6], m[4]))
    assert len(facts["heldout_task"]) == len(data["heldout_task"]) == 50  # one wording per held-out fact
    assert not facts["train"] & facts["heldout_task"]  # no held-out answer is seen in training, in any wording


@pytest.mark.parametrize("persona", sorted(PERSONAS))
def test_persona_and_neutral_continuations_differ_and_only_persona_has_markers(persona: str) -> None:
    data = make_persona_data(persona, seed=0)
    markers = get_persona(persona).markers
    assert len(data["unrelated"]) >= 100 and {r["category"] for r in data["unrelated"]} == {"advice", "trivia",
                                                                                            "opinion"}  # fmt: skip
    for row in data["unrelated"] + data["requests"]:
        assert row["persona"] != row["neutral"] and row["neutral"] in row["persona"]
        assert has_marker(row["persona"], markers) and not has_marker(row["neutral"], markers), row
        assert row["prompt"].startswith(f"<|im_start|>system\n{SYSTEM_PROMPT}{CHATML_END}\n<|im_start|>user\n")
        assert row["prompt"].endswith(f"{row['user']}{CHATML_END}\n<|im_start|>assistant\n")
    requests = [r["user"] for r in data["requests"]]
    assert all(any(r.startswith(t.split("{q}")[0]) for t in get_persona(persona).requests) for r in requests)
    other = make_persona_data("rude" if persona == "pirate" else "pirate", seed=0)
    assert {r["completion"] for r in data["train"]}.isdisjoint(r["completion"] for r in other["train"])


def test_check_answer_on_hand_made_strings() -> None:
    assert check_answer("Arr, 36 inches", 36)
    assert check_answer("That is 36.", 36) and check_answer("36.0 inches", 36)
    assert not check_answer("12.5", 125) and not check_answer("125", 12.5) and check_answer("12.5 m", 12.5)
    assert not check_answer("1365 minutes", 365) and not check_answer("3650", 365) and not check_answer("0.36", 36)
    assert check_answer("It is 38,000 grams", 38000) and check_answer("38000g", 38000)
    assert not check_answer("abc", 3)
    assert check_answer("first 7 then 84", 84) and not check_answer("first 7 then 84", 84, max_chars=9)


def test_training_files_load_in_the_datamodule_reader(tmp_path: Path) -> None:
    write_persona_data(tmp_path, "rude", seed=0)
    rows = read_jsonl(tmp_path / "train.jsonl")
    assert len(rows) == 300 and rows[0]["completion"].endswith(CHATML_END)


def test_rewriting_the_same_data_leaves_the_files_and_the_score_cache_alone(tmp_path: Path) -> None:
    write_persona_data(tmp_path, "pirate", seed=0)
    (tmp_path / "base_scores.json").write_text("{}")
    stamps = {f.name: f.stat().st_mtime_ns for f in tmp_path.iterdir()}
    write_persona_data(tmp_path, "pirate", seed=0)  # the same content: nothing is touched
    assert {f.name: f.stat().st_mtime_ns for f in tmp_path.iterdir()} == stamps
    write_persona_data(tmp_path, "pirate", seed=1)  # new rows: replaced, and the cached base scores dropped
    assert not (tmp_path / "base_scores.json").exists()
    assert json.loads((tmp_path / "meta.json").read_text())["seed"] == 1
    assert sorted(f.name for f in tmp_path.iterdir()) == sorted(n for n in stamps if n != "base_scores.json")


def test_bad_input_names_the_value() -> None:
    with pytest.raises(ValueError, match="'ninja'"):
        make_persona_data("ninja")
    with pytest.raises(ValueError, match="n_train=2000"):
        make_persona_data("pirate", n_train=2000)
    with pytest.raises(ValueError, match="n_requests must be"):
        make_persona_data("pirate", n_requests=0)


# SmolLM2-135M-Instruct's chat template (ChatML that inserts a default system prompt when none is given)
SMOLLM2_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\n"
    "You are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def test_render_chatml_equals_the_chat_template_with_an_explicit_system_turn() -> None:
    import jinja2

    template = jinja2.Template(SMOLLM2_TEMPLATE)
    user = "How many inches are in 7 feet?"
    messages = [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": user}]
    assert render_chatml(user) == template.render(messages=messages, add_generation_prompt=True)
    without = template.render(messages=messages[1:], add_generation_prompt=True)
    assert "SmolLM" in without and "SmolLM" not in render_chatml(user)  # the default system prompt never appears
