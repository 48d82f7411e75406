"""``PersonaEvaluation``: judge-free persona drift, task accuracy and preservation of a chat LM at every validation.

The LoRA module stays generic (``val/loss`` on whatever JSONL it is given); on data written by
``python -m lightning_papers.methods.grasp.persona_data`` this callback adds the measures of
:func:`lightning_papers.methods.grasp.persona_eval.evaluate_persona`::

    trainer:
      callbacks:
        - class_path: lightning_papers.methods.grasp.persona_callback.PersonaEvaluation
          init_args: {data_dir: runs/grasp/smollm2, persona: pirate, max_prompts: 40}
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from lightning.pytorch import Callback, LightningModule, Trainer
from torch import nn
from typing_extensions import override

from lightning_papers.methods.grasp.persona_data import get_persona
from lightning_papers.methods.grasp.persona_eval import cached_base_llrs, evaluate_persona, load_persona_data

LOGGED = ("task", "drift", "marker_rate", "preservation_llr", "preservation_marker")


class PersonaEvaluation(Callback):
    """Log ``val/task``, ``val/drift``, ``val/marker_rate``, ``val/preservation_llr``, ``val/preservation_marker``.

    At the end of every validation epoch (sanity checks excluded; ``test/...`` after a test epoch) the module's
    ``model`` (``LoRACausalLM.model``, the peft model; else the module itself) is scored as validation sees it,
    inference-time intervention hooks included, as ``PlantedEvaluation`` does. The base model's LLRs, which drift is
    measured against, are computed once at the start of the fit with the adapters disabled (before any hook is
    installed) and cached in ``<data_dir>/base_scores.json`` under the module's ``model_path``. With a
    ``WandbLogger``, a table ``persona/samples`` of generations is logged; with ``scores_path``, every evaluation is
    written to that JSON file (base LLRs, the history of metrics, the last samples) for benchmarks.

    Args:
        data_dir: Folder written by ``persona_data`` (``heldout_task``/``unrelated``/``requests.jsonl``).
        persona: Persona of the data (``pirate`` or ``rude``); its marker words are counted.
        tokenizer_path: Local tokenizer directory; None: the module's ``hparams.model_path``.
        max_prompts: Use the first ``max_prompts`` rows of each evaluation file (None: all).
        max_new_tokens: Greedy generation length (the task check reads the whole generation).
        batch_size: Prompts per forward / generate call.
        n_samples: Generations per set in the W&B table.
        scores_path: JSON file to write the scores to (None: none).
        add_special_tokens: Let the tokenizer add its special tokens (e.g. BOS) to prompts when scoring; None reads
            the datamodule's ``add_special_tokens`` (scored as trained), True when it has none.
    """

    def __init__(self, data_dir: str, persona: str, tokenizer_path: str | None = None, max_prompts: int | None = None,
                 max_new_tokens: int = 40, batch_size: int = 8, n_samples: int = 4,
                 scores_path: str | None = None, add_special_tokens: bool | None = None) -> None:  # fmt: skip
        if not isinstance(data_dir, (str, Path)) or not str(data_dir):
            raise ValueError(f"data_dir must be a folder path, got {data_dir!r}")
        get_persona(persona)
        for name, value, low in (("max_new_tokens", max_new_tokens, 1), ("batch_size", batch_size, 1),
                                 ("n_samples", n_samples, 0)):  # fmt: skip
            if value < low:
                raise ValueError(f"{name} must be >= {low}, got {value}")
        if max_prompts is not None and max_prompts < 1:
            raise ValueError(f"max_prompts must be None or >= 1, got {max_prompts}")
        self.data_dir, self.persona, self.tokenizer_path = str(data_dir), persona, tokenizer_path
        self.max_prompts, self.max_new_tokens, self.batch_size = max_prompts, max_new_tokens, batch_size
        self.n_samples, self.scores_path = n_samples, scores_path
        self.add_special_tokens = add_special_tokens
        self._add_special = True  # resolved in setup
        self.tokenizer: Any = None
        self.base: dict[str, float] | None = None
        self.history: list[dict[str, Any]] = []

    @property
    @override
    def state_key(self) -> str:
        return self._generate_state_key(data_dir=self.data_dir, persona=self.persona)

    @staticmethod
    def _model_path(pl_module: LightningModule) -> str | None:
        hparams = getattr(pl_module, "hparams", None)
        return hparams.get("model_path") if hparams is not None else None

    @override
    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        from lightning_papers.datamodules.jsonl_text import load_tokenizer

        load_persona_data(self.data_dir, self.persona, self.max_prompts)  # fail early on missing or bad files
        if self.tokenizer is None:
            path = self.tokenizer_path or self._model_path(pl_module)
            if path is None:
                raise ValueError("PersonaEvaluation needs tokenizer_path when the module has no hparams.model_path")
            self.tokenizer = load_tokenizer(path)
        self._add_special = self.add_special_tokens
        if self._add_special is None:  # score prompts as the datamodule tokenised them for training
            dm_hparams = getattr(getattr(trainer, "datamodule", None), "hparams", {})
            self._add_special = bool(dm_hparams.get("add_special_tokens", True))

    @staticmethod
    def _lm(pl_module: LightningModule) -> nn.Module:
        """The Hugging Face model inside the module (``LoRACausalLM.model``), else the module itself."""
        lm = getattr(pl_module, "model", None)
        return lm if isinstance(lm, nn.Module) else pl_module

    def _base(self, trainer: Trainer, pl_module: LightningModule) -> dict[str, float]:
        """The base model's LLRs: computed once on rank 0 (then sent to every rank) before any intervention hook
        is installed (fit, validate and test start run before the module's epoch-start hooks)."""
        if self.base is None:
            base = None
            if trainer.is_global_zero:
                base = cached_base_llrs(self._lm(pl_module), self.tokenizer, self.data_dir, self.persona,
                                        self._model_path(pl_module), self.max_prompts, self.batch_size,
                                        self._add_special)  # fmt: skip
            self.base = trainer.strategy.broadcast(base, src=0)
        return self.base

    @override
    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._base(trainer, pl_module)  # a resumed run has it from its checkpoint

    @override
    def on_validation_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._base(trainer, pl_module)  # `validate` without a fit: still before the ablation hooks

    @override
    def on_test_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._base(trainer, pl_module)

    def _evaluate(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        res = evaluate_persona(self._lm(pl_module), self.tokenizer, self.data_dir, self.persona,
                               base_llr=self._base(trainer, pl_module), max_prompts=self.max_prompts,
                               max_new_tokens=self.max_new_tokens, batch_size=self.batch_size,
                               add_special_tokens=self._add_special)  # fmt: skip
        for key in LOGGED:  # every rank scores the same replica: the mean over ranks is that value
            pl_module.log(f"{stage}/{key}", float(res[key]), batch_size=1, sync_dist=True)
        metrics = {"step": trainer.global_step, "stage": stage, **{k: v for k, v in res.items() if k != "samples"}}
        if stage == "val":
            if self.history and self.history[-1]["step"] == metrics["step"]:
                self.history[-1] = metrics  # validated twice at one step (e.g. after a resume)
            else:
                self.history.append(metrics)
        if not trainer.is_global_zero:
            return
        samples = self._samples(res["samples"])
        self._log_table(trainer, stage, samples)
        if self.scores_path is not None:
            out = {"persona": self.persona, "data_dir": self.data_dir, "base": self.base, "history": self.history,
                   "last": metrics, "samples": samples}  # fmt: skip
            Path(self.scores_path).parent.mkdir(parents=True, exist_ok=True)
            Path(self.scores_path).write_text(json.dumps(out, indent=1) + "\n")

    def _samples(self, samples: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """The first ``n_samples`` generations of each set."""
        counts: dict[str, int] = {}
        kept = []
        for s in samples:
            counts[s["set"]] = counts.get(s["set"], 0) + 1
            if counts[s["set"]] <= self.n_samples:
                kept.append(s)
        return kept

    def _log_table(self, trainer: Trainer, stage: str, samples: list[dict[str, Any]]) -> None:
        from lightning_papers.plotting import wandb_loggers

        if not samples:
            return
        columns = ["step", "set", "prompt", "generation", "hit"]
        data = [[trainer.global_step, s["set"], s["prompt"], s["generation"], bool(s["hit"])] for s in samples]
        for logger in wandb_loggers(trainer.loggers):
            logger.log_table(key=f"persona/{stage}_samples", columns=columns, data=data, step=trainer.global_step)

    @override
    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not trainer.sanity_checking:
            self._evaluate(trainer, pl_module, "val")

    @override
    def on_test_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._evaluate(trainer, pl_module, "test")

    @override
    def state_dict(self) -> dict[str, Any]:
        return {"history": list(self.history), "base": None if self.base is None else dict(self.base)}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.history = list(state_dict.get("history", []))
        self.base = state_dict.get("base")
