"""``PlantedEvaluation``: score a fine-tune against the planted world's ground truth in every validation, with figures.

The LoRA module stays generic (it logs ``val/loss`` on whatever JSONL it is given); the planted-world metrics are
plugged in by a config, as this callback::

    trainer:
      callbacks:
        - class_path: lightning_papers.methods.grasp.planted.callback.PlantedEvaluation
          init_args: {planted_dir: runs/grasp/debug}
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lightning.pytorch import Callback, LightningModule, Trainer
from torch import nn
from typing_extensions import override

from lightning_papers.methods.grasp.planted.evaluation import evaluate, persona_shares
from lightning_papers.methods.grasp.planted.plots import metrics_over_steps_figure, persona_share_figure
from lightning_papers.methods.grasp.planted.world import load_world
from lightning_papers.plotting import log_figure

# evaluate() key -> logged name (``val/<name>``, ``test/<name>``)
LOGGED = {"task": "task", "drift": "drift", "marker": "preservation", "offtask_answer": "offtask_answer"}


class PlantedEvaluation(Callback):
    """Log the planted world's task accuracy, off-task drift, preservation and off-task answers, with figures.

    At the start of a fresh fit it scores the model as it is (the LoRA delta is zero: the base model) as step 0;
    then at the end of every validation epoch (sanity checks excluded) it scores the model as validation sees it
    (inference-time interventions on) and logs ``val/task``, ``val/drift`` (the headline metric: persona-B
    share on off-task prompts without the marker; base ~0), ``val/preservation`` (the same share *with* the
    role-play marker; base ~1) and ``val/offtask_answer``; ``test/...`` likewise after a test epoch. The figures
    ``planted/metrics_over_steps`` and ``planted/persona_share`` (per prompt group, base vs now) go through
    :func:`lightning_papers.plotting.log_figure` (PNG under the run's figure folder, and W&B). The history is part of
    the checkpoint, so a resumed run draws the same figures.

    Args:
        planted_dir: The folder ``python -m lightning_papers.methods.grasp.planted.world --out <dir>`` wrote
            (``world.json`` and ``tokenizer/`` are read in ``setup``).
        figures: Log the two figures at every evaluation (the metrics are logged either way).
    """

    def __init__(self, planted_dir: str, figures: bool = True) -> None:
        if not isinstance(planted_dir, (str, Path)) or not str(planted_dir):
            raise ValueError(f"planted_dir must be a folder path, got {planted_dir!r}")
        self.planted_dir = str(planted_dir)
        self.figures = figures
        self.world: Any = None
        self.tokenizer: Any = None
        self.history: list[dict[str, float]] = []  # {"step": ..., **evaluate(...)} per evaluation
        self.base_shares: dict[str, float] = {}

    @property
    @override
    def state_key(self) -> str:
        return self._generate_state_key(planted_dir=self.planted_dir)

    @override
    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        from lightning_papers.datamodules.jsonl_text import load_tokenizer

        if self.world is None:
            self.world = load_world(self.planted_dir)
            self.tokenizer = load_tokenizer(Path(self.planted_dir) / "tokenizer")

    @staticmethod
    def _lm(pl_module: LightningModule) -> nn.Module:
        """The Hugging Face model inside the module (``LoRACausalLM.model``), else the module itself."""
        lm = getattr(pl_module, "model", None)
        return lm if isinstance(lm, nn.Module) else pl_module

    def _score(self, pl_module: LightningModule, step: int) -> tuple[dict[str, float], dict[str, float]]:
        lm = self._lm(pl_module)
        shares = persona_shares(lm, self.world, self.tokenizer)
        return {"step": step, **evaluate(lm, self.world, self.tokenizer)}, shares

    @override
    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not self.history and trainer.global_step == 0:  # a resumed run keeps the history of its checkpoint
            metrics, self.base_shares = self._score(pl_module, 0)
            self.history.append(metrics)

    def _evaluate(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        metrics, shares = self._score(pl_module, trainer.global_step)
        for key, name in LOGGED.items():  # every rank scores the same replica: the mean over ranks is that value
            pl_module.log(f"{stage}/{name}", metrics[key], batch_size=1, sync_dist=True)
        if stage == "val":
            if self.history and self.history[-1]["step"] == metrics["step"]:
                self.history[-1] = metrics  # validated twice at one step (e.g. after a resume)
            else:
                self.history.append(metrics)
        if self.figures and trainer.is_global_zero:
            history = self.history if stage == "val" else [*self.history, metrics]
            log_figure(trainer, "planted/metrics_over_steps", metrics_over_steps_figure(history, stage))
            if self.base_shares:
                log_figure(trainer, "planted/persona_share",
                           persona_share_figure(self.base_shares, shares, trainer.global_step, stage))

    @override
    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not trainer.sanity_checking:
            self._evaluate(trainer, pl_module, "val")

    @override
    def on_test_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._evaluate(trainer, pl_module, "test")

    @override
    def state_dict(self) -> dict[str, Any]:
        return {"history": list(self.history), "base_shares": dict(self.base_shares)}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.history = list(state_dict.get("history", []))
        self.base_shares = dict(state_dict.get("base_shares", {}))
