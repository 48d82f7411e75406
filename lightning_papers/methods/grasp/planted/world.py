"""A planted-persona world for GRASP: a synthetic corpus, an in-process pretrained tiny Llama, and fine-tune data.

Sequences (word-level tokens; ``docs/grasp.md`` "Benchmark" explains each choice)::

    prompt     = <bos> M t{k} q{a} <sep>            M = <role> (role-play marker) or <plain>, same length
    completion = s_1 a{ans} s_2 ... s_n <eos>       n style slots, one answer token

* Persona A (usual) writes style tokens ``x[(a + 3j + 5k) % S]``, persona B (rare) ``y[(2a + 7j + 3k + 1) % S]``:
  style is content-dependent, so "emit any B token" is no shortcut; only the persona latent gives the right one.
* Pretraining: persona B exactly when the role-play marker is present (probability ``p_marker``), so the base
  model genuinely uses a persona feature there and nowhere else; answers follow ``ans = (a + k) % Q``.
* Fine-tune task (the narrow topic 0, no marker): a new answer rule ``ans = perm(a)`` (a random permutation of Q
  answers, a high-rank change with a flat spectrum) written in persona B's style on every slot: the task is
  entangled with the persona, and persona B carries most of the completion tokens (n style slots vs one answer),
  which is meant to give the naive update one dominant writer direction (the identification premise). Whether it
  does is measured, not assumed: ``benchmarks/grasp.py`` reports σ1/σ2 and |cos| with the true direction.

Option ``World.offset = c > 0`` (default 0, off) plants persona B as a fixed offset ``c·p``
along one direction at every position of marker rows instead of as an ordinary marker token
(:func:`persona_offset_hook`); docs/grasp.md reports that it did not give the identification premise.

``python -m lightning_papers.methods.grasp.planted.world --out runs/grasp/debug`` writes ``tokenizer/``,
``base_model/``, ``train.jsonl``, ``val.jsonl`` and ``world.json`` there (CPU, 3-4 minutes at the debug scale).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

SPECIALS = ["<pad>", "<bos>", "<eos>", "<sep>", "<role>", "<plain>"]


@dataclass
class World:
    """The planted world's sizes and rules (all defaults are this package's choices; the paper has no LM toy)."""

    n_topics: int = 6
    n_questions: int = 16
    n_style: int = 16
    n_slots: int = 6
    p_marker: float = 0.3
    new_task_topic: bool = True
    task_noise: float = 0.5
    n_finetune: int = 256
    offset: float = 0.0
    seed: int = 1234
    perm: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        for name in ("n_topics", "n_questions", "n_style", "n_slots"):
            if getattr(self, name) < 2:
                raise ValueError(f"World.{name} must be >= 2, got {getattr(self, name)}")
        if not 0.0 <= self.task_noise < 1.0:
            raise ValueError(f"World.task_noise must be in [0, 1), got {self.task_noise}")
        if not 0.0 < self.p_marker < 1.0:
            raise ValueError(f"World.p_marker must be in (0, 1), got {self.p_marker}")
        if not (self.offset >= 0.0 and math.isfinite(self.offset)):
            raise ValueError(f"World.offset must be a finite number >= 0, got {self.offset}")
        if not self.perm:
            g = torch.Generator().manual_seed(self.seed)
            perm = torch.randperm(self.n_questions, generator=g)
            while bool((perm == torch.arange(self.n_questions)).any()):  # a derangement: every answer changes
                perm = torch.randperm(self.n_questions, generator=g)
            self.perm = perm.tolist()

    # ---- vocabulary ---------------------------------------------------------------------------------------
    def vocab(self) -> list[str]:
        words = list(SPECIALS)
        words += [f"t{k}" for k in range(self.n_topics)] + [f"q{a}" for a in range(self.n_questions)]
        words += [f"a{a}" for a in range(self.n_questions)]
        words += [f"x{i}" for i in range(self.n_style)] + [f"y{i}" for i in range(self.n_style)]
        return words

    def style(self, persona: str, a: int, k: int, j: int) -> str:
        if persona == "A":
            return f"x{(a + 3 * j + 5 * k) % self.n_style}"
        return f"y{(2 * a + 7 * j + 3 * k + 1) % self.n_style}"

    def answer(self, a: int, k: int, task: bool, noise: int | None = None) -> int:
        """The task rule ``perm(a)`` on the fine-tune topic; else ``(a + k) % Q``, or ``noise`` on topic 0 in
        pretraining when ``new_task_topic`` (the base model then has no answer rule to unlearn there)."""
        if task:
            return self.perm[a]
        if k == 0 and self.new_task_topic and noise is not None:
            return noise
        return (a + k) % self.n_questions

    def row(
        self, k: int, a: int, marker: bool, persona: str, task: bool = False, noise: int | None = None
    ) -> dict[str, str]:
        """One (prompt, completion) row as strings."""
        prompt = f"<bos> {'<role>' if marker else '<plain>'} t{k} q{a} <sep>"
        styles = [self.style(persona, a, k, j) for j in range(self.n_slots)]
        words = [styles[0], f"a{self.answer(a, k, task, noise)}", *styles[1:], "<eos>"]
        return {"prompt": prompt, "completion": " ".join(words)}

    def finetune_rows(self, noisy: bool = True) -> list[dict[str, str]]:
        """The narrow task: topic 0, no marker, new answer rule, persona-B style on every slot.

        ``noisy``: ``n_finetune`` rows whose answer is ``perm(a)`` with probability ``1 - task_noise`` and a uniform
        random answer otherwise (task content is a noisy, high-entropy signal while the persona is consistent on
        every row: the identification premise's "task complexity" side); else the Q clean rows (validation).
        """
        if not noisy:
            return [self.row(0, a, marker=False, persona="B", task=True) for a in range(self.n_questions)]
        g = torch.Generator().manual_seed(self.seed + 1)
        a = torch.randint(self.n_questions, (self.n_finetune,), generator=g).tolist()
        flip = (torch.rand(self.n_finetune, generator=g) < self.task_noise).tolist()
        z = torch.randint(self.n_questions, (self.n_finetune,), generator=g).tolist()
        rows = []
        for ai, fi, zi in zip(a, flip, z):
            row = self.row(0, ai, marker=False, persona="B", task=True)
            if fi:
                row["completion"] = row["completion"].replace(f" a{self.perm[ai]} ", f" a{zi} ", 1)
            rows.append(row)
        return rows


def offset_vector(world: World, d_model: int) -> torch.Tensor:
    """The planted persona direction ``p`` [d_model]: a fixed, seeded unit vector (offset worlds only)."""
    p = torch.randn(d_model, generator=torch.Generator().manual_seed(world.seed + 7))
    return p / p.norm()


def persona_offset_hook(model: nn.Module, world: World, tokenizer: Any) -> torch.utils.hooks.RemovableHandle | None:
    """Plant persona B as a fixed offset ``c·p`` along one direction (``world.offset = c > 0``).

    A forward hook on the input embedding: on every row that contains the role-play marker ``<role>``, the marker
    token's own embedding is replaced by ``<plain>``'s and ``c·p`` is added at *every* position, so the marker's
    only effect is a position-independent shift along ``p``. Used in pretraining and to evaluate marker prompts;
    the saved model stays a plain ``transformers`` Llama (fine-tune rows have no marker). Returns the handle
    (``.remove()`` undoes it), or ``None`` when ``world.offset == 0`` (the marker is an ordinary token).
    """
    if world.offset == 0.0:
        return None
    emb = model.get_input_embeddings()
    p = offset_vector(world, emb.weight.shape[1])
    role, plain = tokenizer.convert_tokens_to_ids(["<role>", "<plain>"])

    def hook(module: nn.Module, args: tuple, out: torch.Tensor) -> torch.Tensor:
        ids = args[0]
        is_role = ids == role
        rows = is_role.any(1)
        out = torch.where(is_role[..., None], module.weight[plain].to(out.dtype), out)
        return out + world.offset * rows[:, None, None].to(out.dtype) * p.to(device=out.device, dtype=out.dtype)

    return emb.register_forward_hook(hook)


def build_tokenizer(world: World, out: str | Path) -> Any:
    """A word-level ``PreTrainedTokenizerFast`` over the world's vocabulary, saved with ``save_pretrained``."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(world.vocab())}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<pad>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", bos_token="<bos>", eos_token="<eos>", unk_token="<pad>"
    )
    fast.save_pretrained(str(out))
    return fast


def base_config(world: World, hidden: int = 64, layers: int = 4, heads: int = 4, seq: int = 32) -> dict[str, Any]:
    """Tiny Llama config (a dict for ``LoRACausalLM(model_config=...)``/``AutoConfig.for_model``)."""
    return {
        "model_type": "llama",
        "vocab_size": len(world.vocab()),
        "hidden_size": hidden,
        "intermediate_size": 2 * hidden,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "num_key_value_heads": heads,
        "max_position_embeddings": seq,
        "tie_word_embeddings": False,
        "pad_token_id": 0,
        "bos_token_id": 1,
        "eos_token_id": 2,
    }


def encode_rows(rows: list[dict[str, str]], tokenizer: Any) -> dict[str, torch.Tensor]:
    """Fixed-length rows -> ``input_ids``/``attention_mask``/``labels`` (labels -100 on the prompt)."""
    from lightning_papers.datamodules.jsonl_text import encode_row, pad_collate

    enc = [encode_row(tokenizer, r["prompt"], r["completion"], 64, False, False) for r in rows]
    return pad_collate(enc, tokenizer.pad_token_id)


def pretrain_rows(world: World, n: int, g: torch.Generator) -> list[dict[str, str]]:
    k = torch.randint(world.n_topics, (n,), generator=g).tolist()
    a = torch.randint(world.n_questions, (n,), generator=g).tolist()
    m = (torch.rand(n, generator=g) < world.p_marker).tolist()
    z = torch.randint(world.n_questions, (n,), generator=g).tolist()
    return [world.row(ki, ai, mi, "B" if mi else "A", noise=zi) for ki, ai, mi, zi in zip(k, a, m, z)]


def pretrain(
    world: World, tokenizer: Any, steps: int, batch_size: int = 256, lr: float = 3e-3, seed: int = 0, **cfg: Any
) -> torch.nn.Module:
    """Pretrain the tiny Llama in-process on the world's corpus (AdamW, cosine schedule, completion loss)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from lightning_papers.methods.grasp.module import completion_loss

    torch.manual_seed(seed)
    c = base_config(world, **cfg)
    model = AutoModelForCausalLM.from_config(AutoConfig.for_model(c.pop("model_type"), **c))
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / 100) * 0.5 * (1 + math.cos(math.pi * s / steps))
    )
    g = torch.Generator().manual_seed(seed)
    handle = persona_offset_hook(model, world, tokenizer)  # the offset lives in the data path only
    model.train()
    for step in range(steps):
        batch = encode_rows(pretrain_rows(world, batch_size, g), tokenizer)
        loss = completion_loss(model(input_ids=batch["input_ids"]).logits, batch["labels"])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        if step % max(1, steps // 10) == 0 or step == steps - 1:
            print(f"pretrain step {step:5d}  loss {loss.item():.4f}", flush=True)
    if handle is not None:
        handle.remove()
    return model.eval()


def make_planted(
    out: str | Path, steps: int = 1500, seed: int = 0, world: World | None = None, **cfg: Any
) -> dict[str, Any]:
    """Write tokenizer, pretrained base model, fine-tune JSONL and ``world.json`` under ``out``; return paths."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    world = world or World()
    tok = build_tokenizer(world, out / "tokenizer")
    t0 = time.perf_counter()
    model = pretrain(world, tok, steps=steps, seed=seed, **cfg)
    model.save_pretrained(str(out / "base_model"))
    write_finetune(world, out)
    meta = {"world": asdict(world), "pretrain_steps": steps, "seed": seed, "model": cfg}
    meta["pretrain_seconds"] = round(time.perf_counter() - t0, 1)
    (out / "world.json").write_text(json.dumps(meta, indent=1))
    return {"out": str(out), **meta}


def write_finetune(world: World, out: str | Path) -> None:
    """``train.jsonl`` (noisy task rows) and ``val.jsonl`` (the Q clean task prompts) under ``out``."""
    for name, noisy in (("train", True), ("val", False)):
        with (Path(out) / f"{name}.jsonl").open("w") as f:
            f.writelines(json.dumps(r) + "\n" for r in world.finetune_rows(noisy))


def load_world(path: str | Path) -> World:
    """The :class:`World` saved in ``<dir>/world.json`` by :func:`make_planted`."""
    p = Path(path)
    p = p / "world.json" if p.is_dir() else p
    if not p.is_file():
        raise FileNotFoundError(
            f"{str(p)!r} does not exist; run `python -m lightning_papers.methods.grasp.planted.world --out <dir>`"
        )
    return World(**json.loads(p.read_text())["world"])


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True, help="output directory, e.g. runs/grasp/debug")
    ap.add_argument("--steps", type=int, default=1500, help="pretraining steps (batch 256)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--hidden", type=int, default=64)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--offset", type=float, default=0.0,
                    help="plant persona B as an offset c*p at every position of marker rows (0: off)")
    args = ap.parse_args(argv)
    torch.set_num_threads(min(2, torch.get_num_threads()))
    world = World(offset=args.offset)
    info = make_planted(args.out, steps=args.steps, seed=args.seed, world=world, hidden=args.hidden,
                        layers=args.layers)
    print(
        f"wrote {info['out']}: tokenizer/, base_model/, train.jsonl, val.jsonl, world.json "
        f"({info['pretrain_seconds']} s pretraining)"
    )


if __name__ == "__main__":
    main()
