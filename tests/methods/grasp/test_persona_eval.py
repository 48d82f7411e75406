"""Persona measures on a tiny random Llama with a byte-level BPE tokenizer; the callback in a 2-step fit; errors."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch

from lightning_papers.methods.grasp import persona_eval
from lightning_papers.methods.grasp.persona_data import get_persona, make_persona_data, write_persona_data
from lightning_papers.methods.grasp.persona_eval import (
    base_llrs,
    continuation_logprob,
    evaluate_persona,
    greedy_generate,
    load_persona_data,
    marker_rate,
    persona_llr,
    task_accuracy,
)

TINY = {"model_type": "llama", "hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 2,
        "num_attention_heads": 2, "num_key_value_heads": 2, "max_position_embeddings": 256,
        "initializer_range": 0.5}  # fmt: skip


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_persona_data(tmp_path_factory.mktemp("persona"), "pirate", seed=0)


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A byte-level BPE tokenizer (600 tokens, ChatML specials) trained on the generator's text."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    data = make_persona_data("pirate", 0)
    texts = [r[k] for rows in data.values() for r in rows for k in ("prompt", "completion", "persona") if k in r]
    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    trainer = trainers.BpeTrainer(
        vocab_size=600, special_tokens=specials, initial_alphabet=alphabet, show_progress=False
    )
    tk.train_from_iterator(texts, trainer)
    out = tmp_path_factory.mktemp("tok")
    PreTrainedTokenizerFast(tokenizer_object=tk, eos_token="<|im_end|>", pad_token="<|endoftext|>").save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def tok(tok_dir: Path) -> Any:
    from lightning_papers.datamodules.jsonl_text import load_tokenizer

    return load_tokenizer(tok_dir)


def _tiny_config(tok: Any) -> dict[str, Any]:
    return dict(TINY, vocab_size=len(tok), pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)


@pytest.fixture(scope="module")
def model(tok: Any) -> torch.nn.Module:
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(0)
    cfg = _tiny_config(tok)
    return AutoModelForCausalLM.from_config(AutoConfig.for_model(cfg.pop("model_type"), **cfg)).eval()


PROMPTS = ["<|im_start|>user\nHow many inches are in 7 feet?<|im_end|>\n<|im_start|>assistant\n", "Hi", "Arr, matey"]
CONTS = ["7 feet is 84 inches.", "Ahoy! The capital of France is Paris. Arr!", "x"]


def test_continuation_logprob_equals_a_direct_computation_and_ignores_padding(model: Any, tok: Any) -> None:
    got = continuation_logprob(model, tok, PROMPTS, CONTS, batch_size=3)
    for i, (p, c) in enumerate(zip(PROMPTS, CONTS)):
        p_ids, c_ids = tok(p)["input_ids"], tok(c, add_special_tokens=False)["input_ids"]
        ids = torch.tensor([p_ids + c_ids])
        with torch.no_grad():
            logp = torch.log_softmax(model(input_ids=ids).logits[0].double(), -1)
        direct = sum(float(logp[len(p_ids) + j - 1, t]) for j, t in enumerate(c_ids))
        assert float(got[i]) == pytest.approx(direct, abs=1e-4)
        alone = continuation_logprob(model, tok, [p], [c], batch_size=1)
        assert float(alone[0]) == pytest.approx(float(got[i]), abs=1e-5)
    assert got.dtype == torch.float64 and bool((got < 0).all())
    assert persona_llr(model, tok, PROMPTS, CONTS, CONTS) == 0.0
    llr = persona_llr(model, tok, PROMPTS, CONTS, CONTS[::-1], batch_size=2)
    reverse = continuation_logprob(model, tok, PROMPTS, CONTS[::-1])
    assert llr == pytest.approx(float((got - reverse).mean()), abs=1e-5)


def test_greedy_generate_in_a_batch_equals_one_by_one(model: Any, tok: Any) -> None:
    prompts = PROMPTS + ["<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\nHi"]
    batch = greedy_generate(model, tok, prompts, max_new_tokens=6, batch_size=4)
    single = [greedy_generate(model, tok, [p], max_new_tokens=6, batch_size=1)[0] for p in prompts]
    assert batch == single and len(set(batch)) > 1
    first = greedy_generate(model, tok, prompts, max_new_tokens=1, batch_size=4)
    for p, t in zip(prompts, first):  # one greedy token is the argmax of the prompt's next-token logits
        with torch.no_grad():
            top = int(model(input_ids=torch.tensor([tok(p)["input_ids"]])).logits[0, -1].argmax())
        assert t == tok.decode([top], skip_special_tokens=True)
    assert all("<|endoftext|>" not in t and "<|im_end|>" not in t for t in batch)


def test_marker_rate_and_task_accuracy_on_hand_made_texts() -> None:
    markers = get_persona("pirate").markers
    texts = ["Arr, matey!", "The arrow flew.", "AHOY there", "ye olde shop", "Yes, 36.", "yo ho ho", "Yoho"]
    assert marker_rate(texts, markers) == pytest.approx(4 / 7)
    assert marker_rate(["Obviously, you are clueless.", "Obvious."], get_persona("rude").markers) == 0.5
    assert task_accuracy(["Arr, 36 inches", "12.5", "none", "It be 38,000 grams"], [36, 125, 1, 38000]) == 0.5
    with pytest.raises(ValueError, match="got 2 and 1"):
        task_accuracy(["a", "b"], [1])


def test_base_model_has_zero_drift_and_base_scores_are_cached(model: Any, tok: Any, data_dir: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    res = evaluate_persona(model, tok, data_dir, "pirate", max_prompts=3, max_new_tokens=4)
    assert res["drift"] == 0.0 and res["llr"] == res["base_llr"] and math.isfinite(res["llr"])
    assert res["preservation_llr"] == res["base_preservation_llr"]
    assert 0.0 <= res["task"] <= 1.0 and 0.0 <= res["marker_rate"] <= 1.0
    assert [s["set"] for s in res["samples"]] == ["heldout_task"] * 3 + ["unrelated"] * 3 + ["requests"] * 3
    assert not (data_dir / "base_scores.json").exists()  # a model without a path is never cached
    evaluate_persona(model, tok, data_dir, "pirate", base_key="my/base", max_prompts=2, max_new_tokens=2)
    cache = json.loads((data_dir / "base_scores.json").read_text())
    (key,) = cache
    assert key.startswith("my/base|max_prompts=2|rows=")
    monkeypatch.setattr(persona_eval, "base_llrs", lambda *a, **k: pytest.fail("the cache was not used"))
    again = evaluate_persona(model, tok, data_dir, "pirate", base_key="my/base", max_prompts=2, max_new_tokens=2)
    assert again["base_llr"] == cache[key]["llr"] and again["drift"] == 0.0
    write_persona_data(data_dir, "pirate", seed=0)  # the same rows again: the cache stays valid and is used
    assert evaluate_persona(model, tok, data_dir, "pirate", base_key="my/base", max_prompts=2,
                            max_new_tokens=2)["base_llr"] == cache[key]["llr"]  # fmt: skip


def test_a_peft_model_is_compared_with_its_adapter_disabled(model: Any, tok: Any, data_dir: Path) -> None:
    import copy

    from peft import LoraConfig, get_peft_model

    data = load_persona_data(data_dir, "pirate", max_prompts=4)
    plain = base_llrs(model, tok, data)
    peft_model = get_peft_model(copy.deepcopy(model), LoraConfig(r=2, lora_alpha=4, target_modules=["o_proj"]))
    for name, p in peft_model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=1.0)
    assert base_llrs(peft_model, tok, data) == pytest.approx(plain, abs=1e-9)
    res = evaluate_persona(peft_model, tok, data_dir, "pirate", base_llr=plain, max_prompts=4, max_new_tokens=2)
    assert res["base_llr"] == plain["llr"] and abs(res["drift"]) > 1e-4


def test_bad_input_names_it(model: Any, tok: Any, data_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="'ninja'"):
        evaluate_persona(model, tok, data_dir, "ninja")
    with pytest.raises(ValueError, match="holds persona 'pirate', not 'rude'"):
        load_persona_data(data_dir, "rude")
    with pytest.raises(FileNotFoundError, match="heldout_task.jsonl"):
        load_persona_data(tmp_path, "pirate")
    bad = tmp_path / "bad"
    write_persona_data(bad, "pirate", seed=0)
    rows = (bad / "requests.jsonl").read_text().splitlines()
    row = json.loads(rows[1])
    del row["neutral"]
    (bad / "requests.jsonl").write_text("\n".join([rows[0], json.dumps(row), *rows[2:]]) + "\n")
    with pytest.raises(ValueError, match=r"requests.jsonl:2: missing field\(s\) \['neutral'\]"):
        load_persona_data(bad, "pirate")
    with pytest.raises(ValueError, match="got 3 prompts but 2 continuations"):
        continuation_logprob(model, tok, PROMPTS, CONTS[:2])
    from lightning_papers.datamodules.jsonl_text import read_jsonl

    train = tmp_path / "train.jsonl"
    train.write_text(json.dumps({"prompt": "p", "answer": 3}) + "\n")
    with pytest.raises(ValueError, match="'completion'"):
        read_jsonl(train)


def test_callback_logs_the_metrics_in_a_two_step_fit(tok: Any, tok_dir: Path, data_dir: Path, tmp_path: Path) -> None:
    from lightning.pytorch import Trainer
    from lightning.pytorch.loggers import WandbLogger

    from lightning_papers.datamodules.jsonl_text import JsonlTextDataModule
    from lightning_papers.methods.grasp.module import LoRACausalLM
    from lightning_papers.methods.grasp.persona_callback import PersonaEvaluation

    class RecordingWandb(WandbLogger):
        tables: list = []

        def log_table(self, key: str, columns: list, data: list, step: int | None = None, **kw: Any) -> None:
            self.tables.append((key, columns, data, step))

    scores = tmp_path / "scores.json"
    callback = PersonaEvaluation(str(data_dir), "pirate", tokenizer_path=str(tok_dir), max_prompts=3,
                                 max_new_tokens=3, n_samples=2, scores_path=str(scores))  # fmt: skip
    module = LoRACausalLM(model_config=_tiny_config(tok), lora_rank=2, lora_alpha=4.0, lr=1e-2)
    dm = JsonlTextDataModule(str(data_dir / "train.jsonl"), str(tok_dir), val_path=str(data_dir / "val.jsonl"),
                             batch_size=4, max_length=128)  # fmt: skip
    logger = RecordingWandb(save_dir=str(tmp_path), project="persona-test")
    trainer = Trainer(max_steps=2, limit_train_batches=2, limit_val_batches=1, num_sanity_val_steps=0,
                      logger=logger, callbacks=[callback], enable_checkpointing=False, enable_progress_bar=False,
                      enable_model_summary=False, accelerator="cpu", log_every_n_steps=1)  # fmt: skip
    trainer.fit(module, datamodule=dm)
    for key in ("val/task", "val/drift", "val/marker_rate", "val/preservation_llr", "val/preservation_marker"):
        assert key in trainer.callback_metrics and math.isfinite(float(trainer.callback_metrics[key])), key
    out = json.loads(scores.read_text())
    assert [h["step"] for h in out["history"]] == [2] and set(out["base"]) == {"llr", "preservation_llr"}
    assert out["history"][0]["drift"] == pytest.approx(float(trainer.callback_metrics["val/drift"]), abs=1e-6)
    assert out["history"][0]["drift"] != 0.0  # two steps at lr 1e-2 moved the model off the base
    ((key, columns, rows, step),) = RecordingWandb.tables
    assert key == "persona/val_samples" and step == 2 and columns[:4] == ["step", "set", "prompt", "generation"]
    assert [r[1] for r in rows] == ["heldout_task"] * 2 + ["unrelated"] * 2 + ["requests"] * 2
    assert callback.state_dict()["history"] == out["history"]
    with pytest.raises(ValueError, match="'ninja'"):
        PersonaEvaluation(str(data_dir), "ninja")


@pytest.mark.parametrize("dm_value, given, expected", [(False, None, False), (True, None, True), (False, True, True)])
def test_callback_scores_prompts_as_the_datamodule_tokenised_them(tok_dir: Path, data_dir: Path, dm_value: bool,
                                                                  given: bool | None, expected: bool) -> None:
    from types import SimpleNamespace

    from lightning_papers.methods.grasp.persona_callback import PersonaEvaluation

    callback = PersonaEvaluation(str(data_dir), "pirate", tokenizer_path=str(tok_dir), add_special_tokens=given)
    trainer = SimpleNamespace(datamodule=SimpleNamespace(hparams={"add_special_tokens": dm_value}))
    callback.setup(trainer, SimpleNamespace(hparams={}), "fit")
    assert callback._add_special is expected
