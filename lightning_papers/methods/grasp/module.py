"""LoRA fine-tuning of a Hugging Face causal LM (via peft), with the GRASP paper's baselines chosen by config.

The module is a thin shell: the model is ``peft.get_peft_model(AutoModelForCausalLM, LoraConfig)`` stored as
``self.model`` (so state-dict keys and ``named_modules()`` names are ``model.base_model.model.<hf name>``, the
names ``identify`` and ``GradientProjection`` use). GRASP itself is not in this file: it is the
``GradientProjection`` callback added to the trainer. The baselines are (``docs/grasp.md`` cites their papers):

* ``intervention="none"`` — naive LoRA (with ``kl_weight > 0``: naive LoRA + KL-to-base regulariser);
* ``"ablate_inference"`` — train naively, ablate the direction from the residual stream at validation/test/predict;
* ``"ablate_train"`` — CAFT-style: ablate the direction while training only, removed at inference;
* ``"add_train"`` — preventative steering: add ``steer_coef·v`` while training only.

The random-direction control is ``GradientProjection`` with a random subspace (``controls.random_like``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from lightning.pytorch import LightningModule
from typing_extensions import override

from lightning_papers.datamodules.jsonl_text import IGNORE_INDEX
from lightning_papers.methods.grasp.steering import add_residual_hooks, load_direction

Intervention = Literal["none", "ablate_inference", "ablate_train", "add_train"]
DEFAULT_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def completion_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Next-token cross-entropy averaged over positions whose label is not -100 (completion tokens only)."""
    return F.cross_entropy(
        logits[:, :-1].reshape(-1, logits.shape[-1]).float(), labels[:, 1:].reshape(-1), ignore_index=IGNORE_INDEX
    )


def kl_to_base(logits: torch.Tensor, base_logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over ``mask`` positions of KL(p_finetuned || p_base) of the next-token distributions."""
    logp = F.log_softmax(logits.float(), -1)
    logq = F.log_softmax(base_logits.float(), -1)
    kl = (logp.exp() * (logp - logq)).sum(-1)
    m = mask.to(kl.dtype)
    return (kl * m).sum() / m.sum().clamp_min(1.0)


def check_model_source(model_path: str | None, model_config: dict[str, Any] | None) -> None:
    """Raise ValueError unless exactly one of ``model_path`` / ``model_config`` is given."""
    if (model_path is None) == (model_config is None):
        raise ValueError(
            "give exactly one of model_path (a local directory) or model_config (a config dict), got "
            f"model_path={model_path!r} and model_config={'None' if model_config is None else 'a dict'}"
        )


def build_causal_lm(model_path: str | None, model_config: dict[str, Any] | None) -> torch.nn.Module:
    """A causal LM from a local directory or GGUF file, or a random one from a config dict (no downloads).

    A ``.gguf`` file (e.g. the SmolLM2-135M-Instruct file ``make assets-lm`` installs) is converted once to a
    Hugging Face checkpoint in the sibling directory ``<file stem>.hf/`` and loaded from there
    (``lightning_papers.methods.grasp.lm_source.resolve_model_source``).

    The model is returned in train mode: ``from_pretrained`` returns it in eval mode, which would leave the frozen
    base model's modules in eval mode for the whole fine-tune (Lightning keeps each submodule's mode and warns
    "Found N module(s) in eval mode"). Train mode is what fine-tuning expects (a model's own dropout, if it has
    any, is active while training, as in any training loop); the planted Llama and LoRA with ``lora_dropout=0``
    have none, so for them the mode changes no number.
    """
    from transformers import AutoConfig, AutoModelForCausalLM

    from lightning_papers.methods.grasp.lm_source import resolve_model_source

    check_model_source(model_path, model_config)
    if model_path is not None:
        if not Path(model_path).exists():
            raise FileNotFoundError(
                f"model path {model_path!r} does not exist. For the planted GRASP benchmark, create it with "
                "`python -m lightning_papers.methods.grasp.planted.world --out <dir>`; for SmolLM2-135M-Instruct "
                "run `make assets-lm` (it writes runs/models/smollm2-135m-instruct)."
            )
        path = resolve_model_source(model_path)
        return AutoModelForCausalLM.from_pretrained(str(path), local_files_only=True).train()
    cfg = dict(model_config)  # type: ignore[arg-type]
    model_type = cfg.pop("model_type", "llama")
    return AutoModelForCausalLM.from_config(AutoConfig.for_model(model_type, **cfg))


class LoRACausalLM(LightningModule):
    """LoRA fine-tuning of a causal LM on completion tokens, with GRASP's baselines selectable by config.

    Args:
        model_path: Local directory of a Hugging Face causal LM (``save_pretrained`` output), or a ``.gguf``
            file (converted once to ``<file stem>.hf/`` next to it); or None.
        model_config: Instead of ``model_path``, a config dict (``model_type`` + config fields, e.g. a tiny
            ``LlamaConfig``) for a randomly initialised model; used by tests.
        lora_rank: LoRA rank r. Default 32 with alpha 64 as in CAFT's emergent-misalignment runs (arXiv 2507.16795).
        lora_alpha: LoRA alpha; the update is scaled by alpha / r.
        lora_dropout: Dropout on the LoRA input.
        target_modules: Module-name suffixes that get adapters (default: all 7 Llama projections, as in CAFT).
        layers_to_transform: Decoder-layer indices that get adapters (None: all layers).
        lr: AdamW learning rate.
        weight_decay: AdamW weight decay.
        intervention: Baseline: ``none``, ``ablate_inference``, ``ablate_train`` or ``add_train`` (module doc).
        steer_direction: File with the residual direction for interventions (identify's subspace file, whose
            ``direction`` is used, or a saved tensor). Loaded in ``configure_model``.
        steer_layers: Decoder layers after which interventions act (None: ``layers_to_transform``, or all).
        steer_coef: Coefficient c of preventative steering h + c·v (sign included).
        kl_weight: Weight of KL(p_ft || p_base) over all non-padding positions of the batch (0 = off).
    """

    def __init__(
        self,
        model_path: str | None = None,
        model_config: dict[str, Any] | None = None,
        lora_rank: int = 32,
        lora_alpha: float = 64.0,
        lora_dropout: float = 0.0,
        target_modules: list[str] | None = None,
        layers_to_transform: list[int] | None = None,
        lr: float = 1e-4,
        weight_decay: float = 0.0,
        intervention: Intervention = "none",
        steer_direction: str | None = None,
        steer_layers: list[int] | None = None,
        steer_coef: float = 4.0,
        kl_weight: float = 0.0,
    ) -> None:
        super().__init__()
        check_model_source(model_path, model_config)
        if lora_rank < 1:
            raise ValueError(f"lora_rank must be >= 1, got {lora_rank}")
        if lora_alpha <= 0:
            raise ValueError(f"lora_alpha must be > 0, got {lora_alpha}")
        if not 0.0 <= lora_dropout < 1.0:
            raise ValueError(f"lora_dropout must be in [0, 1), got {lora_dropout}")
        if lr <= 0:
            raise ValueError(f"lr must be > 0, got {lr}")
        if kl_weight < 0:
            raise ValueError(f"kl_weight must be >= 0, got {kl_weight}")
        if intervention not in ("none", "ablate_inference", "ablate_train", "add_train"):
            raise ValueError(f"intervention must be none/ablate_inference/ablate_train/add_train, got {intervention!r}")
        if intervention != "none" and steer_direction is None:
            raise ValueError(f"intervention={intervention!r} needs steer_direction (a file from identify)")
        if target_modules is not None and not target_modules:
            raise ValueError("target_modules must be None (all 7 projections) or a non-empty list")
        self.save_hyperparameters()
        self.model: torch.nn.Module | None = None
        self.direction: torch.Tensor | None = None
        self._train_hooks: list = []
        self._eval_hooks: list = []

    # ---- model ---------------------------------------------------------------------------------------------
    @override
    def configure_model(self) -> None:
        """Build the base model and wrap it with LoRA (idempotent); load the steering direction if any. Under
        ``ModelParallelStrategy`` (a device mesh is set) the model is sharded with FSDP2: one unit per decoder layer
        plus the root."""
        if self.model is not None:
            return
        from peft import LoraConfig, get_peft_model

        hp = self.hparams
        base = build_causal_lm(hp.model_path, hp.model_config)
        config = LoraConfig(
            r=hp.lora_rank,
            lora_alpha=hp.lora_alpha,
            lora_dropout=hp.lora_dropout,
            target_modules=list(hp.target_modules or DEFAULT_TARGETS),
            layers_to_transform=hp.layers_to_transform,
            bias="none",
            task_type="CAUSAL_LM",
        )
        self.model = get_peft_model(base, config)
        if self._device_mesh is not None:  # ModelParallelStrategy: FSDP2, one unit per decoder layer plus the root
            from torch.distributed.fsdp import fully_shard

            mesh = self._device_mesh["data_parallel"]
            for layer in base.model.layers:
                fully_shard(layer, mesh=mesh)
            fully_shard(self.model, mesh=mesh)
        if hp.intervention != "none":
            self.direction = load_direction(hp.steer_direction)

    @property
    def steer_layers(self) -> list[int]:
        hp = self.hparams
        if hp.steer_layers is not None:
            return list(hp.steer_layers)
        if hp.layers_to_transform is not None:
            return list(hp.layers_to_transform)
        return list(range(self.model.config.num_hidden_layers))

    def _set_hooks(self, training: bool) -> None:
        """Install the intervention's hooks for training or for inference, removing the other set."""
        for h in self._train_hooks + self._eval_hooks:
            h.remove()
        self._train_hooks, self._eval_hooks = [], []
        mode = self.hparams.intervention
        if mode == "none":
            return
        if training and mode in ("ablate_train", "add_train"):
            kind = "ablate" if mode == "ablate_train" else "add"
            self._train_hooks = add_residual_hooks(
                self.model, self.direction, self.steer_layers, kind, self.hparams.steer_coef
            )
        if not training and mode == "ablate_inference":
            self._eval_hooks = add_residual_hooks(self.model, self.direction, self.steer_layers, "ablate")

    @override
    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Next-token logits [batch, seq, vocab] (with whatever intervention hooks are active)."""
        return self.model(input_ids=input_ids, attention_mask=attention_mask).logits

    # ---- hooks ---------------------------------------------------------------------------------------------
    @override
    def on_train_epoch_start(self) -> None:
        self._set_hooks(training=True)

    @override
    def on_validation_epoch_start(self) -> None:
        self._set_hooks(training=False)

    @override
    def on_validation_epoch_end(self) -> None:
        if self.trainer.state.fn == "fit":
            self._set_hooks(training=True)

    @override
    def on_test_epoch_start(self) -> None:
        self._set_hooks(training=False)

    @override
    def on_predict_epoch_start(self) -> None:
        self._set_hooks(training=False)

    @override
    def on_fit_end(self) -> None:
        self._set_hooks(training=False)

    # ---- steps ---------------------------------------------------------------------------------------------
    def _loss(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self(batch["input_ids"], batch["attention_mask"])
        return completion_loss(logits, batch["labels"]), logits

    @override
    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss, logits = self._loss(batch)
        self.log("train/loss", loss, prog_bar=True, batch_size=batch["input_ids"].shape[0])
        if self.hparams.kl_weight > 0:
            with torch.no_grad(), self.model.disable_adapter():
                for h in self._train_hooks:  # the base model has no interventions
                    h.remove()
                base_logits = self(batch["input_ids"], batch["attention_mask"])
            self._set_hooks(training=True)
            kl = kl_to_base(logits, base_logits, batch["attention_mask"].bool())
            self.log("train/kl", kl, batch_size=batch["input_ids"].shape[0])
            loss = loss + self.hparams.kl_weight * kl
        return loss

    @override
    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss, _ = self._loss(batch)
        self.log("val/loss", loss, prog_bar=True, sync_dist=True, batch_size=batch["input_ids"].shape[0])
        return loss

    @override
    def test_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss, _ = self._loss(batch)
        self.log("test/loss", loss, sync_dist=True, batch_size=batch["input_ids"].shape[0])
        return loss

    # ---- checkpoints ---------------------------------------------------------------------------------------
    def _drops_frozen_weights(self) -> bool:
        """Frozen base weights are left out of checkpoints when ``model_path`` can give them back (not when sharded:
        a sharded checkpoint is written per rank by the strategy)."""
        return self.hparams.model_path is not None and self._device_mesh is None and self.model is not None

    @override
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Keep only the trainable (LoRA) weights: a SmolLM2-135M checkpoint shrinks from 540 MB to a few MB. The
        frozen weights are reloaded from ``model_path`` (``on_load_checkpoint``)."""
        if not self._drops_frozen_weights():
            return
        state = checkpoint["state_dict"]
        for key in self._frozen_state().keys() & state.keys():
            del state[key]
        checkpoint["frozen_weights_from"] = self.hparams.model_path
        checkpoint["frozen_weights_fingerprint"] = self._frozen_fingerprint()

    @override
    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Fill the frozen weights a checkpoint leaves out from the model built from ``model_path`` (strict loading
        still refuses unknown keys and missing trainable ones)."""
        if "frozen_weights_from" not in checkpoint or self.model is None:
            return
        saved = checkpoint.get("frozen_weights_fingerprint")
        # at the checkpoint's dtype: Lightning restores before a "16-true"/"bf16-true" precision converts the module
        now = self._frozen_fingerprint(getattr(torch, str(saved.get("dtype", "torch.float32")).removeprefix("torch."))
                                       if saved else None)  # fmt: skip
        if saved is not None and (saved["count"] != now["count"]
                                  or abs(saved["sum"] - now["sum"]) > 1e-6 * max(1.0, abs(saved["sum"]))):  # fmt: skip
            raise ValueError(f"this checkpoint's LoRA weights were trained on the frozen weights at "
                             f"{checkpoint['frozen_weights_from']!r}, but model_path={self.hparams.model_path!r} now "
                             f"holds different ones (fingerprint {saved} vs {now}): point model_path at the "
                             f"checkpoint's base model")  # fmt: skip
        state = checkpoint["state_dict"]
        for key, value in self._frozen_state().items():
            state.setdefault(key, value.detach())

    @torch.no_grad()
    def _frozen_fingerprint(self, dtype: torch.dtype | None = None) -> dict[str, Any]:
        """Element count, dtype and float64 sum (of the weights cast to ``dtype``, if given) of the frozen weights:
        which base model a LoRA-only checkpoint belongs to."""
        frozen = self._frozen_state()
        tensors = [frozen[k].detach() for k in sorted(frozen)]
        dtype = dtype or (tensors[0].dtype if tensors else torch.float32)
        return {"count": sum(t.numel() for t in tensors), "dtype": str(dtype),
                "sum": float(sum(t.to(dtype).double().sum() for t in tensors))}  # fmt: skip

    def _frozen_state(self) -> dict[str, torch.Tensor]:
        """Frozen parameters, keyed as the state dict names them (a tied ``lm_head.weight`` included)."""
        return {k: v for k, v in self.state_dict(keep_vars=True).items()
                if isinstance(v, torch.nn.Parameter) and not v.requires_grad}  # fmt: skip

    @override
    def configure_optimizers(self) -> torch.optim.Optimizer:
        params = [p for p in self.parameters() if p.requires_grad]
        if not params:
            raise ValueError("no trainable parameters: check target_modules / layers_to_transform")
        return torch.optim.AdamW(params, lr=self.hparams.lr, weight_decay=self.hparams.weight_decay)
