"""JSONL (prompt, completion) data for causal-LM fine-tuning, tokenised with a tokenizer from a local path.

Each line of a file is a JSON object with a prompt and a completion string, e.g.
``{"prompt": "<bos> topic0 q3 <sep>", "completion": "b5 a7 b9 <eos>"}``. A row becomes ``input_ids`` =
tokens(prompt) + tokens(completion) [+ eos], and ``labels`` equal to ``input_ids`` on completion tokens and -100
on prompt and padding tokens, so a loss over ``labels`` is a loss on completion tokens only (the convention of
instruction tuning; the GRASP paper fine-tunes on completions). Nothing is read in ``__init__``: files are loaded in
``setup``, so a config naming files that do not exist yet still parses.

The training loader is resumable mid-epoch: :class:`ResumableLoader` puts its epoch, the number of batches
already served in it and the shuffling generator into the Lightning checkpoint, so a run resumed with
``--ckpt_path`` from any optimizer step sees exactly the batches the uninterrupted run would have seen.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import LightningDataModule
from torch.utils.data import DataLoader, DistributedSampler
from typing_extensions import override

IGNORE_INDEX = -100
PLANTED_HINT = (
    "For the planted GRASP benchmark, create the files with "
    "`python -m lightning_papers.methods.grasp.planted.world --out <dir>`."
)


def read_json_rows(path: str | Path, fields: Sequence[str], strings: Sequence[str] = (), nonempty: Sequence[str] = (),
                   missing_hint: str = "") -> list[dict[str, Any]]:  # fmt: skip
    """The JSON objects of a JSONL file, each holding every key of ``fields`` (those in ``strings`` as strings, those
    in ``nonempty`` as non-empty strings); raise naming the file, the first bad line and the field. The one reader
    of the package's JSONL files (training rows here, the persona evaluation sets in ``grasp.persona_eval``)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"JSONL file {str(path)!r} does not exist. {missing_hint}".rstrip())
    rows: list[dict[str, Any]] = []
    with path.open() as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"{path}:{lineno}: not valid JSON ({err.msg}): {line[:80]!r}") from err
            if not isinstance(row, dict):
                raise ValueError(f"{path}:{lineno}: expected a JSON object, got {type(row).__name__}")
            missing = [k for k in fields if k not in row]
            if missing:
                raise ValueError(
                    f"{path}:{lineno}: missing field(s) {missing} (need {list(fields)}; keys: {sorted(row)})"
                )
            for key in (*strings, *nonempty):
                if not isinstance(row[key], str):
                    raise ValueError(f"{path}:{lineno}: expected a string field {key!r}, got {row[key]!r}")
                if key in nonempty and not row[key]:
                    raise ValueError(f"{path}:{lineno}: empty {key!r}; every row needs one")
            rows.append(row)
    if not rows:
        raise ValueError(f"{path}: no rows")
    return rows


def read_jsonl(
    path: str | Path, prompt_key: str = "prompt", completion_key: str = "completion"
) -> list[dict[str, str]]:
    """Read a JSONL file of (prompt, completion) rows; raise ValueError naming the first bad line."""
    rows = read_json_rows(path, (prompt_key, completion_key), strings=(prompt_key,), nonempty=(completion_key,),
                          missing_hint=PLANTED_HINT)  # fmt: skip
    return [{"prompt": r[prompt_key], "completion": r[completion_key]} for r in rows]


def load_tokenizer(path: str | Path) -> Any:
    """A Hugging Face tokenizer from a local directory (never the hub); a pad token is set if missing."""
    from transformers import AutoTokenizer

    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"tokenizer directory {str(path)!r} does not exist. {PLANTED_HINT}")
    tok = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    if tok.pad_token_id is None:
        if tok.eos_token_id is None:
            raise ValueError(f"tokenizer at {str(path)!r} has neither a pad nor an eos token to pad with")
        tok.pad_token = tok.eos_token
    return tok


def encode_row(
    tokenizer: Any, prompt: str, completion: str, max_length: int, append_eos: bool, add_special_tokens: bool
) -> dict[str, list[int]]:
    """Token ids and labels (-100 on the prompt) for one row, truncated from the right to ``max_length``."""
    p = tokenizer(prompt, add_special_tokens=add_special_tokens)["input_ids"]
    c = tokenizer(completion, add_special_tokens=False)["input_ids"]
    if append_eos and tokenizer.eos_token_id is not None and (not c or c[-1] != tokenizer.eos_token_id):
        c = c + [tokenizer.eos_token_id]
    ids = (p + c)[:max_length]
    labels = ([IGNORE_INDEX] * len(p) + c)[:max_length]
    return {"input_ids": ids, "labels": labels}


def pad_collate(rows: list[dict[str, list[int]]], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad a list of encoded rows into ``input_ids``, ``attention_mask`` and ``labels`` tensors."""
    n = max(len(r["input_ids"]) for r in rows)
    ids = torch.full((len(rows), n), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), n), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((len(rows), n), dtype=torch.long)
    for i, r in enumerate(rows):
        k = len(r["input_ids"])
        ids[i, :k] = torch.tensor(r["input_ids"])
        labels[i, :k] = torch.tensor(r["labels"])
        mask[i, :k] = 1
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def draw_seed(generator: torch.Generator | None = None) -> int:
    """One 64-bit seed drawn as ``torch.utils.data.RandomSampler`` draws its per-epoch seed."""
    return int(torch.empty((), dtype=torch.int64).random_(generator=generator).item())


class EpochSampler(DistributedSampler):
    """Each epoch's order is a pure function of (generator state, epoch); the resumed epoch can start mid-way.

    Shuffled, epoch ``e`` is ``randperm(n)`` under the seed that ``DataLoader(shuffle=True)`` would draw from a
    global RNG in state ``generator_state`` in its ``e``-th epoch (each epoch its iterator draws a seed for its
    workers, then its ``RandomSampler`` one for the order): with the global RNG's state, the orders are that
    loader's, as long as nothing else draws from the global RNG between epochs. Under DDP every rank gets the same order
    and takes every ``num_replicas``-th index (padded like ``DistributedSampler``, which it subclasses so that
    Lightning keeps it instead of inserting its own). Lightning calls ``set_epoch`` before every epoch.
    """

    def __init__(self, n: int, shuffle: bool, generator_state: torch.Tensor, num_replicas: int = 1,
                 rank: int = 0) -> None:  # fmt: skip
        super().__init__(range(n), num_replicas=num_replicas, rank=rank, shuffle=shuffle, drop_last=False)
        self.generator_state = generator_state
        self.start = 0  # indices of the next epoch to skip (set when resuming mid-epoch, used once)

    def order(self, epoch: int) -> list[int]:
        """The indices this rank serves in ``epoch``, from the first."""
        n = len(self.dataset)
        if self.shuffle:
            g = torch.Generator()
            g.set_state(self.generator_state)
            for _ in range(2 * epoch + 1):  # per epoch: the iterator's workers' seed, then the sampler's
                draw_seed(g)
            order = torch.randperm(n, generator=torch.Generator().manual_seed(draw_seed(g))).tolist()
        else:
            order = list(range(n))
        order += order[: self.total_size - n]  # DistributedSampler's padding (none on one process)
        return order[self.rank : self.total_size : self.num_replicas]

    def __iter__(self):  # noqa: ANN204 - an iterator of indices
        start, self.start = self.start, 0
        return iter(self.order(self.epoch)[start:])


class ResumableLoader(DataLoader):
    """A ``DataLoader`` over an :class:`EpochSampler` with ``state_dict``/``load_state_dict``.

    Lightning saves the state of such loaders in the checkpoint and restores it before the resumed epoch starts
    (its "stateful dataloader" support); the resumed epoch then serves only the batches not yet trained on.
    """

    def __init__(self, dataset: Any, sampler: EpochSampler, **kwargs: Any) -> None:
        super().__init__(dataset, sampler=sampler, **kwargs)
        self.epoch, self.served = 0, 0  # epoch of the running iterator, batches it has handed out
        self._resume: dict[str, Any] | None = None

    def __iter__(self):  # noqa: ANN204 - a generator of batches
        sampler: EpochSampler = self.sampler  # type: ignore[assignment]
        resume, self._resume = self._resume, None
        self.epoch, self.served = sampler.epoch, 0
        if resume is not None and resume["epoch"] == sampler.epoch:
            self.served = resume["batches"]
            sampler.start = self.served * self.batch_size
        for batch in super().__iter__():
            self.served += 1  # counted before the training step sees it: a checkpoint after it excludes it
            yield batch

    def state_dict(self) -> dict[str, Any]:
        """Epoch, batches already served in it, and the shuffling generator's starting state."""
        return {"epoch": self.epoch, "batches": self.served, "generator_state": self.sampler.generator_state}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Continue from a ``state_dict``: the next iteration of the same epoch skips the batches served."""
        self.sampler.generator_state = state_dict["generator_state"]
        self._resume = {"epoch": int(state_dict["epoch"]), "batches": int(state_dict["batches"])}


class JsonlTextDataModule(LightningDataModule):
    """Prompt/completion JSONL files for causal-LM fine-tuning, tokenised by a tokenizer from a local directory.

    Args:
        train_path: JSONL file of training rows.
        tokenizer_path: Local directory with a Hugging Face tokenizer (``save_pretrained`` output).
        val_path: Optional JSONL file of validation rows.
        batch_size: Rows per batch (per device).
        max_length: Truncate prompt+completion to this many tokens (from the right).
        append_eos: Append the tokenizer's eos token to each completion (if not already last).
        add_special_tokens: Let the tokenizer add its special tokens (e.g. BOS) to the prompt.
        prompt_key: JSON field holding the prompt.
        completion_key: JSON field holding the completion.
        num_workers: DataLoader workers.
        shuffle: Shuffle the training rows every epoch.
        shuffle_seed: Seed of the epochs' orders. None: taken from torch's global RNG when the training loader is
            built (so ``seed_everything`` fixes it, and the orders equal those of ``DataLoader(shuffle=True)``).
            Either way it is saved in checkpoints, and under DDP rank 0's is used by every rank.
    """

    def __init__(
        self,
        train_path: str,
        tokenizer_path: str,
        val_path: str | None = None,
        batch_size: int = 8,
        max_length: int = 512,
        append_eos: bool = True,
        add_special_tokens: bool = True,
        prompt_key: str = "prompt",
        completion_key: str = "completion",
        num_workers: int = 0,
        shuffle: bool = True,
        shuffle_seed: int | None = None,
    ) -> None:
        super().__init__()
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if max_length < 2:
            raise ValueError(f"max_length must be >= 2, got {max_length}")
        if num_workers < 0:
            raise ValueError(f"num_workers must be >= 0, got {num_workers}")
        if shuffle_seed is not None and not 0 <= shuffle_seed < 2**63:
            raise ValueError(f"shuffle_seed must be None or an integer in [0, 2**63), got {shuffle_seed}")
        self.save_hyperparameters()
        self.tokenizer: Any = None
        self.train_rows: list[dict[str, list[int]]] = []
        self.val_rows: list[dict[str, list[int]]] = []

    def _encode(self, path: str) -> list[dict[str, list[int]]]:
        hp = self.hparams
        rows = read_jsonl(path, hp.prompt_key, hp.completion_key)
        enc = [
            encode_row(
                self.tokenizer, r["prompt"], r["completion"], hp.max_length, hp.append_eos, hp.add_special_tokens
            )
            for r in rows
        ]
        for i, e in enumerate(enc):
            if all(label == IGNORE_INDEX for label in e["labels"]):
                raise ValueError(
                    f"{path}: row {i + 1} has no completion tokens left after truncation to max_length="
                    f"{hp.max_length} (prompt too long)"
                )
        return enc

    @override
    def setup(self, stage: str | None = None) -> None:
        if self.tokenizer is None:
            self.tokenizer = load_tokenizer(self.hparams.tokenizer_path)
        if not self.train_rows and stage in (None, "fit"):
            self.train_rows = self._encode(self.hparams.train_path)
        if not self.val_rows and self.hparams.val_path is not None:
            self.val_rows = self._encode(self.hparams.val_path)

    def _loader_kwargs(self) -> dict[str, Any]:
        return {
            "batch_size": self.hparams.batch_size,
            "num_workers": self.hparams.num_workers,
            "collate_fn": partial(pad_collate, pad_id=self.tokenizer.pad_token_id),
        }

    @override
    def train_dataloader(self) -> ResumableLoader:
        hp = self.hparams
        if hp.shuffle_seed is None:
            state = torch.get_rng_state()
        else:
            state = torch.Generator().manual_seed(hp.shuffle_seed).get_state()
        world_size, rank = 1, 0
        if self.trainer is not None:
            world_size, rank = self.trainer.world_size, self.trainer.global_rank
            if world_size > 1:
                state = self.trainer.strategy.broadcast(state, src=0)
        sampler = EpochSampler(len(self.train_rows), hp.shuffle, state, num_replicas=world_size, rank=rank)
        return ResumableLoader(self.train_rows, sampler, **self._loader_kwargs())

    @override
    def val_dataloader(self) -> DataLoader | list:
        return DataLoader(self.val_rows, shuffle=False, **self._loader_kwargs()) if self.val_rows else []
