"""Judge-free persona measures for any Hugging Face causal LM (plain torch): drift, marker rate, task, preservation.

GRASP (arXiv 2605.27676, abstract) claims that removing the identified direction removes the off-task spurious
trait while keeping the task and the pretrained model's own use of the trait. On data from
:mod:`lightning_papers.methods.grasp.persona_data` these are measured without a judge model:

* ``task``: share of held-out task prompts whose greedy answer contains the right number (``check_answer``);
* ``drift``: mean over unrelated prompts of log p(persona continuation) - log p(neutral continuation), minus the
  same for the base model (0 for the base model; > 0: the model prefers the persona off-task more than it did);
* ``marker_rate``: share of greedy generations on unrelated prompts that contain a persona marker word;
* ``preservation_llr`` / ``preservation_marker``: the same LLR and marker rate on explicit persona requests.

A prompt and its continuation are tokenised separately and concatenated, as ``JsonlTextDataModule`` does for
training rows, so the scored tokens are exactly the continuation's.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lightning_papers.methods.grasp.persona_data import check_answer, get_persona

BASE_CACHE = "base_scores.json"
FILES = ("heldout_task", "unrelated", "requests")


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def _pad_id(tok: Any) -> int:
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    if pad is None:
        raise ValueError(f"tokenizer {type(tok).__name__} has neither a pad nor an eos token to pad with")
    return int(pad)


def _check_batch_size(batch_size: int) -> None:
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")


@torch.no_grad()
def continuation_logprob(model: nn.Module, tok: Any, prompts: Sequence[str], continuations: Sequence[str],
                         batch_size: int = 8, add_special_tokens: bool = True) -> torch.Tensor:  # fmt: skip
    """Sum of log p(continuation tokens | prompt, earlier continuation tokens) per pair, float64 [n].

    Batches are right-padded: under a causal mask the padding after a row cannot change its logits, and positions
    stay 0..len-1, so a batched score equals the score of the row alone.
    """
    if len(prompts) != len(continuations):
        raise ValueError(f"got {len(prompts)} prompts but {len(continuations)} continuations")
    _check_batch_size(batch_size)
    pad, device, out = _pad_id(tok), _device(model), []
    for s in range(0, len(prompts), batch_size):
        rows = []
        for p, c in zip(prompts[s : s + batch_size], continuations[s : s + batch_size]):
            p_ids = tok(p, add_special_tokens=add_special_tokens)["input_ids"]
            c_ids = tok(c, add_special_tokens=False)["input_ids"]
            if not c_ids or not p_ids:
                raise ValueError(f"empty prompt or continuation after tokenisation: {p[:40]!r} / {c[:40]!r}")
            rows.append((p_ids, c_ids))
        n = max(len(p) + len(c) for p, c in rows)
        ids = torch.full((len(rows), n), pad, dtype=torch.long)
        mask = torch.zeros((len(rows), n), dtype=torch.long)
        target = torch.zeros((len(rows), n), dtype=torch.bool)  # positions whose token is scored
        for i, (p, c) in enumerate(rows):
            ids[i, : len(p) + len(c)] = torch.tensor(p + c)
            mask[i, : len(p) + len(c)] = 1
            target[i, len(p) : len(p) + len(c)] = True
        logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits.float()
        logp = torch.log_softmax(logits[:, :-1], -1).gather(-1, ids[:, 1:, None].to(device))[..., 0]
        out.append((logp.double().cpu() * target[:, 1:]).sum(-1))
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.float64)


def persona_llr(model: nn.Module, tok: Any, prompts: Sequence[str], persona: Sequence[str], neutral: Sequence[str],
                batch_size: int = 8, add_special_tokens: bool = True) -> float:  # fmt: skip
    """Mean over prompts of log p(persona continuation) - log p(neutral continuation)."""
    lp = continuation_logprob(model, tok, prompts, persona, batch_size, add_special_tokens)
    ln = continuation_logprob(model, tok, prompts, neutral, batch_size, add_special_tokens)
    return float((lp - ln).mean())


@torch.no_grad()
def greedy_generate(model: nn.Module, tok: Any, prompts: Sequence[str], max_new_tokens: int = 40,
                    batch_size: int = 8, add_special_tokens: bool = True) -> list[str]:  # fmt: skip
    """Greedy continuations (decoded, special tokens dropped, cut at eos) of each prompt.

    Batches are left-padded with an explicit pad id (Hugging Face ``generate`` derives positions from the
    attention mask), so a batch gives the continuations the prompts give one by one.
    """
    from transformers import GenerationConfig

    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    _check_batch_size(batch_size)
    pad, device, texts = _pad_id(tok), _device(model), []
    eos = tok.eos_token_id
    cfg = GenerationConfig(max_new_tokens=max_new_tokens, do_sample=False, num_beams=1, pad_token_id=pad,
                           eos_token_id=eos, bos_token_id=tok.bos_token_id)  # fmt: skip
    for s in range(0, len(prompts), batch_size):
        seqs = [tok(p, add_special_tokens=add_special_tokens)["input_ids"] for p in prompts[s : s + batch_size]]
        n = max(len(q) for q in seqs)
        ids = torch.full((len(seqs), n), pad, dtype=torch.long)
        mask = torch.zeros((len(seqs), n), dtype=torch.long)
        for i, q in enumerate(seqs):
            ids[i, n - len(q) :] = torch.tensor(q)
            mask[i, n - len(q) :] = 1
        out = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), generation_config=cfg)
        for row in out[:, n:].cpu().tolist():
            if eos is not None and eos in row:
                row = row[: row.index(eos)]
            texts.append(tok.decode(row, skip_special_tokens=True))
    return texts


def has_marker(text: str, markers: Sequence[str]) -> bool:
    """Whether ``text`` contains one of ``markers`` as whole words (case-insensitive; phrases allowed)."""
    return any(re.search(rf"\b{re.escape(m)}\b", text, flags=re.IGNORECASE) for m in markers)


def marker_rate(texts: Sequence[str], markers: Sequence[str]) -> float:
    """Share of ``texts`` that contain a marker (``has_marker``)."""
    if not texts:
        raise ValueError("marker_rate needs at least one text")
    return sum(has_marker(t, markers) for t in texts) / len(texts)


def task_accuracy(texts: Sequence[str], answers: Sequence[float]) -> float:
    """Share of texts containing their answer as a whole number (``persona_data.check_answer``)."""
    if len(texts) != len(answers) or not texts:
        raise ValueError(f"need as many answers as texts (and at least one), got {len(texts)} and {len(answers)}")
    return sum(check_answer(t, a) for t, a in zip(texts, answers)) / len(texts)


def _read(path: Path, keys: Sequence[str]) -> list[dict[str, Any]]:
    from lightning_papers.datamodules.jsonl_text import read_json_rows

    hint = "write it with `python -m lightning_papers.methods.grasp.persona_data --out <dir> --persona <name>`"
    return read_json_rows(path, keys, missing_hint=hint)


def load_persona_data(data_dir: str | Path, persona: str, max_prompts: int | None = None) -> dict[str, list[dict]]:
    """The evaluation files of ``data_dir`` (first ``max_prompts`` rows of each), checked against ``persona``."""
    get_persona(persona)
    if max_prompts is not None and max_prompts < 1:
        raise ValueError(f"max_prompts must be None or >= 1, got {max_prompts}")
    data_dir = Path(data_dir)
    meta = data_dir / "meta.json"
    if meta.is_file() and json.loads(meta.read_text()).get("persona") != persona:
        raise ValueError(f"{data_dir} holds persona {json.loads(meta.read_text()).get('persona')!r}, not {persona!r}")
    keys = {"heldout_task": ("prompt", "answer"), "unrelated": ("prompt", "persona", "neutral"),
            "requests": ("prompt", "persona", "neutral")}  # fmt: skip
    return {name: _read(data_dir / f"{name}.jsonl", keys[name])[:max_prompts] for name in FILES}


@contextmanager
def base_model_context(model: nn.Module) -> Iterator[None]:
    """The base model: a peft model with its adapters disabled; any other model as it is."""
    disable = getattr(model, "disable_adapter", None)
    with disable() if callable(disable) else nullcontext():
        yield


def base_llrs(model: nn.Module, tok: Any, data: dict[str, list[dict]], batch_size: int = 8,
              add_special_tokens: bool = True) -> dict[str, float]:  # fmt: skip
    """The base model's LLRs on unrelated prompts (``llr``) and requests (``preservation_llr``)."""
    was_training = model.training
    model.eval()
    try:
        with base_model_context(model):
            return {
                key: persona_llr(model, tok, *([r[k] for r in data[name]] for k in ("prompt", "persona", "neutral")),
                                 batch_size=batch_size, add_special_tokens=add_special_tokens)
                for key, name in (("llr", "unrelated"), ("preservation_llr", "requests"))
            }  # fmt: skip
    finally:
        model.train(was_training)


def cached_base_llrs(model: nn.Module, tok: Any, data_dir: str | Path, persona: str, base_key: str | None,
                     max_prompts: int | None = None, batch_size: int = 8,
                     add_special_tokens: bool = True) -> dict[str, float]:  # fmt: skip
    """``base_llrs``, read from / written to ``<data_dir>/base_scores.json`` under ``base_key`` (e.g. the base
    model's path), ``max_prompts`` and a hash of the scored rows (regenerated data never reads stale scores);
    computed without caching when ``base_key`` is None or empty. The file is replaced atomically."""
    data = load_persona_data(data_dir, persona, max_prompts)
    if not base_key:
        return base_llrs(model, tok, data, batch_size, add_special_tokens)
    rows = [[r[k] for k in ("prompt", "persona", "neutral")] for name in ("unrelated", "requests") for r in data[name]]
    digest = hashlib.sha256(json.dumps(rows).encode()).hexdigest()[:16]  # the scored rows themselves
    path, key = Path(data_dir) / BASE_CACHE, f"{base_key}|max_prompts={max_prompts}|rows={digest}"
    key += "" if add_special_tokens else "|no_special_tokens"
    cache = json.loads(path.read_text()) if path.is_file() else {}
    if key not in cache:
        cache[key] = base_llrs(model, tok, data, batch_size, add_special_tokens)
        tmp = path.with_name(path.name + f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(cache, indent=1, sort_keys=True) + "\n")
        os.replace(tmp, path)
    return cache[key]


def evaluate_persona(model: nn.Module, tok: Any, data_dir: str | Path, persona: str,
                     base_llr: float | dict[str, float] | None = None, base_key: str | None = None,
                     max_prompts: int | None = None, max_new_tokens: int = 40,
                     batch_size: int = 8, add_special_tokens: bool = True) -> dict[str, Any]:  # fmt: skip
    """Task accuracy, drift, marker rate and preservation of ``model`` (as it is, hooks included) on ``data_dir``.

    Args:
        base_llr: The base model's LLRs: a dict ``{"llr", "preservation_llr"}`` (as ``base_llrs`` returns) or the
            unrelated-prompt LLR alone. None: ``cached_base_llrs`` with ``base_key`` (default: the model's
            ``name_or_path``); a peft model is scored with its adapters disabled, any other model as it is (so
            for a merged fine-tuned model pass the base model's LLRs, or its drift is 0 by construction).
        max_prompts: Use the first ``max_prompts`` rows of each file (the files are shuffled by their seed).
        add_special_tokens: Let the tokenizer add its special tokens (e.g. BOS) to prompts: as the model was
            trained (``JsonlTextDataModule(add_special_tokens=…)``).
    Returns:
        ``task``, ``llr``, ``base_llr``, ``drift``, ``marker_rate``, ``preservation_llr``,
        ``base_preservation_llr``, ``preservation_marker`` and ``samples`` ({"set", "prompt", "generation", "hit"}).
    """
    markers = get_persona(persona).markers
    data = load_persona_data(data_dir, persona, max_prompts)
    if base_llr is None:
        key = base_key if base_key is not None else getattr(model, "name_or_path", None)
        base_llr = cached_base_llrs(model, tok, data_dir, persona, key, max_prompts, batch_size, add_special_tokens)
    base = base_llr if isinstance(base_llr, dict) else {"llr": float(base_llr)}
    was_training = model.training
    model.eval()
    try:
        res: dict[str, Any] = {}
        gens = {}
        for name in FILES:
            rows = data[name]
            gens[name] = greedy_generate(model, tok, [r["prompt"] for r in rows], max_new_tokens, batch_size,
                                         add_special_tokens)  # fmt: skip
            if name != "heldout_task":
                cols = ([r[k] for r in rows] for k in ("prompt", "persona", "neutral"))
                res["llr" if name == "unrelated" else "preservation_llr"] = persona_llr(
                    model, tok, *cols, batch_size, add_special_tokens
                )
    finally:
        model.train(was_training)
    res["task"] = task_accuracy(gens["heldout_task"], [r["answer"] for r in data["heldout_task"]])
    res["marker_rate"] = marker_rate(gens["unrelated"], markers)
    res["preservation_marker"] = marker_rate(gens["requests"], markers)
    res["base_llr"] = float(base["llr"])
    res["drift"] = res["llr"] - res["base_llr"]
    if "preservation_llr" in base:
        res["base_preservation_llr"] = float(base["preservation_llr"])
    res["samples"] = [
        {"set": name, "prompt": r.get("user", r["prompt"]), "generation": g,
         "hit": check_answer(g, r["answer"]) if name == "heldout_task" else has_marker(g, markers)}
        for name in FILES for r, g in zip(data[name], gens[name])
    ]  # fmt: skip
    return res
