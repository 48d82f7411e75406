"""``RAEDiTModule``: RAE stage 2, a class-conditional DiT-DH trained by flow matching on cached RAE latents.

RAEv2 (arXiv 2605.18324 §3-4) / RAE v1 (arXiv 2510.11690 §4-5): the network (``dit.py``) learns the velocity of
x_t = (1 - t) x + t ε on normalised latents from ``LatentCacheDataModule`` (the encoder never runs here), with the
dimension-dependent shift, x-prediction and the IG (REPA) head's loss (``transport.py``). Validation draws
class-balanced samples with the configured guidance (``guidance.py``), decodes them with the stage-1 decoder named
in the cache (``tokenizer.py``) and scores them against the cache's real images in the feature space of an
independent classifier (FD_eval, KID, sample accuracy, precision/recall: ``lightning_papers.metrics.generative``),
plus FD in the encoder's own (token-mean-pooled) latent space, which is circular for RAE and only secondary.

Randomness: each step's times, noise and label dropout come from a generator seeded by (seed, step, rank), and the
validation samples from a fixed seed, so a resumed run repeats an uninterrupted one. EMA weights come from
Lightning's ``EMAWeightAveraging`` callback in the configs (validation then scores the EMA model).
"""

from __future__ import annotations

import dataclasses
import hashlib
import warnings
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch
from lightning.pytorch import LightningModule
from typing_extensions import override

from lightning_papers.contracts import check_datamodule
from lightning_papers.methods.rae.dit import DiTConfig, DiTDH, build_dit_config
from lightning_papers.methods.rae.guidance import GuidanceConfig, sample
from lightning_papers.methods.rae.plots import class_grid_figure
from lightning_papers.methods.rae.schedule import check_schedule, plain_hparams, position_generator, warmup_cosine
from lightning_papers.methods.rae.transport import TransportConfig, training_loss
from lightning_papers.resume import reopen_epoch_cut_by_max_steps


@runtime_checkable
class LatentData(Protocol):
    """What :class:`RAEDiTModule` needs from its datamodule besides ``(latents, labels)`` batches."""

    latent_shape: tuple[int, int, int]
    num_classes: int
    meta: dict[str, Any]
    stats_state: dict[str, Any]


def statistics_fingerprint(stats_state: dict[str, Any]) -> str:
    """A short hash of a normaliser's mean and variance (a latent space's identity)."""
    h = hashlib.sha256()
    for key in ("mean", "var"):
        h.update(torch.as_tensor(stats_state[key]).double().cpu().numpy().tobytes())
    return h.hexdigest()[:16]


class RAEDiTModule(LightningModule):
    """DiT-DH flow matching in an RAE latent space.

    Args:
        dit: Size of the network (``xs``, ``s``, ``s_v1``, ``b``, ``xl``, ``xl_v1``: see ``dit.build_dit_config``).
        dit_overrides: Fields of ``DiTConfig`` to change (e.g. ``{depth: 4, conditioning: adaln, ig_head: false}``).
        transport: Flow-matching settings (prediction, shift, t clamp, IG loss weight, label dropout, sampler
            steps); its ``prediction`` overrides the network's.
        guidance: Guidance of the validation samples (none, cfg, autoguidance, repa, repa_cfg).
        lr: AdamW peak learning rate (RAE: 2e-4).
        lr_min: Final learning rate of the cosine decay (RAE: 2e-5).
        warmup_steps: Linear warm-up steps.
        weight_decay: AdamW weight decay.
        eval_root: Folder written by ``python -m lightning_papers.methods.rae.cache`` (real images, the FD_eval
            classifier; the decoder checkpoint is named in the latent cache's meta). None: the latent cache's
            parent folder. Image metrics are skipped when it has no images or classifier.
        eval_per_class: Validation samples per class.
        grid_per_class: Samples per class in the logged grid.
        num_threads: If set, ``torch.set_num_threads`` at setup. On a small shared CPU one thread avoids
            oversubscription (the CPU configs use 1); None leaves torch's setting alone.
        seed: Seed of the training draws and the validation samples.
    """

    def __init__(
        self,
        dit: str = "s",
        dit_overrides: dict[str, Any] | None = None,
        transport: TransportConfig | None = None,
        guidance: GuidanceConfig | None = None,
        lr: float = 2e-4,
        lr_min: float = 2e-5,
        warmup_steps: int = 0,
        weight_decay: float = 0.0,
        eval_root: str | None = None,
        eval_per_class: int = 20,
        grid_per_class: int = 8,
        num_threads: int | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__()
        check_schedule(lr, lr_min, warmup_steps)
        if warmup_steps < 0 or eval_per_class < 0 or grid_per_class < 1:
            raise ValueError(f"need warmup_steps >= 0, eval_per_class >= 0, grid_per_class >= 1; got {warmup_steps},"
                             f" {eval_per_class}, {grid_per_class}")  # fmt: skip
        self.save_hyperparameters()
        plain_hparams(self.hparams)
        # configure_model only builds the network (it needs the data's latent shape); nothing is sharded, so
        # WeightAveraging's warning about models that override configure_model does not apply.
        warnings.filterwarnings("ignore", message=r"You're using the WeightAveraging callback with a model that "
                                r"overrides the configure_model", category=UserWarning)  # fmt: skip
        self.transport = transport or TransportConfig()
        self.guidance = guidance or GuidanceConfig()
        overrides = {**(dit_overrides or {}), "prediction": self.transport.prediction}
        self.dit_config: DiTConfig = build_dit_config(dit, **overrides)
        self.latent_fingerprint: str | None = None
        self.evaluator: Any = None  # SampleEvaluator, built in setup (not saved)
        self.last_samples: tuple[torch.Tensor, torch.Tensor] | None = None
        self.last_scores: dict[str, float] = {}

    @override
    def setup(self, stage: str) -> None:
        if self.hparams.num_threads is not None:
            torch.set_num_threads(self.hparams.num_threads)
        dm = self.trainer.datamodule
        check_datamodule(dm, LatentData, type(self).__name__)
        fingerprint = statistics_fingerprint(dm.stats_state)
        if self.latent_fingerprint is not None and fingerprint != self.latent_fingerprint:
            raise ValueError(f"the latent cache's normaliser ({fingerprint}) is not the one this model was trained "
                             f"on ({self.latent_fingerprint}): the latents live in a different space")  # fmt: skip
        self.latent_fingerprint = fingerprint
        self.configure_model()
        if tuple(self.model.latent_shape) != tuple(dm.latent_shape) or self.model.num_classes != dm.num_classes:
            raise ValueError(f"the model was built for latents {self.model.latent_shape} and "
                             f"{self.model.num_classes} classes, the data have {dm.latent_shape} and {dm.num_classes}")
        if stage == "fit" or stage == "validate":
            from lightning_papers.methods.rae.evaluation import SampleEvaluator

            root = self.hparams.eval_root or str(Path(dm.hparams.root).parent)
            self.evaluator = SampleEvaluator.from_folder(root, dm.meta, fingerprint)

    @override
    def configure_model(self) -> None:
        """Build the network for the datamodule's latent shape and classes (once). Lightning's WeightAveraging calls
        this before any ``setup`` hook, so the EMA copy holds the network too."""
        if hasattr(self, "model"):
            return
        dm = self.trainer.datamodule
        check_datamodule(dm, LatentData, type(self).__name__)
        self.model = DiTDH(tuple(dm.latent_shape), dm.num_classes, self.dit_config)

    # -- training -----------------------------------------------------------------------------------------------
    def step_generator(self) -> torch.Generator:
        """Generator of this step's times, noise and label dropout: a function of (seed, step, rank) only."""
        return position_generator(self.hparams.seed, self.global_step, self.global_rank)

    @override
    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch
        out = training_loss(self.model, x, y, self.transport, generator=self.step_generator())
        self.log("train/loss", out["loss"].detach(), prog_bar=True)
        self.log("train/loss_full", out["loss_full"])
        if "loss_base" in out:
            self.log("train/loss_base", out["loss_base"])
        return out["loss"]

    @override
    def configure_optimizers(self) -> Any:
        hp = self.hparams
        opt = torch.optim.AdamW(self.model.parameters(), lr=hp.lr, weight_decay=hp.weight_decay)
        trainer = self.trainer
        scheduler = warmup_cosine(opt, hp.lr, hp.lr_min, hp.warmup_steps, lambda: trainer.estimated_stepping_batches)
        return {"optimizer": opt, "lr_scheduler": scheduler}

    # -- validation ---------------------------------------------------------------------------------------------
    @override
    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        x, y = batch
        g = torch.Generator(device="cpu").manual_seed(self.hparams.seed + 104729 * (batch_idx + 1))
        out = training_loss(self.model, x, y, self.transport, generator=g)
        self.log("val/loss", out["loss"], sync_dist=True)
        # Samples are drawn here, not at the epoch end: FigureLogger's epoch-end hook runs before the module's.
        evaluate = self.hparams.eval_per_class > 0 and not self.trainer.sanity_checking
        if batch_idx == 0 and evaluate and self.trainer.is_global_zero:
            self.evaluate_samples()

    def generate(self, labels: torch.Tensor, guidance: GuidanceConfig | None = None, seed: int | None = None,
                 guide_model: torch.nn.Module | None = None) -> tuple[torch.Tensor, int]:  # fmt: skip
        """Normalised latents for ``labels`` and the network evaluations per sample."""
        g = torch.Generator(device="cpu").manual_seed(self.hparams.seed if seed is None else seed)
        return sample(self.model, labels, tuple(self.model.latent_shape), self.transport, guidance or self.guidance,
                      generator=g, guide_model=guide_model)  # fmt: skip

    def evaluate_samples(self) -> None:
        """Class-balanced samples with the configured guidance, scored and kept for the figure (rank 0 only)."""
        n = self.model.num_classes
        labels = torch.arange(n).repeat_interleave(self.hparams.eval_per_class)
        latents, nfe = self.generate(labels)
        images = self.evaluator.decode(latents)
        scores = self.evaluator.score(latents, labels, images)
        scores["nfe"] = float(nfe)
        self.last_scores = scores
        self.log_dict({f"val/{k}": v for k, v in scores.items()}, rank_zero_only=True)
        if images is not None:
            self.last_samples = (images, labels)

    def make_figures(self, stage: str) -> dict[str, Any]:
        """Decoded samples, one row per class."""
        if self.last_samples is None:
            return {}
        images, labels = self.last_samples
        keep = torch.cat([torch.nonzero(labels == c).flatten()[: self.hparams.grid_per_class] for c in labels.unique()])
        fd = self.last_scores.get("fd_eval")
        title = f"step {self.global_step}, guidance {self.guidance.mode}" + (f", FD_eval {fd:.2f}" if fd else "")
        names = self.evaluator.class_names if self.evaluator is not None else None
        return {f"{stage}/samples": class_grid_figure(images[keep], labels[keep], names,
                                                      self.hparams.grid_per_class, title)}  # fmt: skip

    # -- checkpoints --------------------------------------------------------------------------------------------
    @override
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["rae_latent_fingerprint"] = self.latent_fingerprint
        dm = self.trainer.datamodule if self._trainer is not None else None
        checkpoint["rae_dit"] = {  # what ``sample.py`` needs without a config
            "dit": self.hparams.dit, "dit_overrides": dict(self.hparams.dit_overrides or {}),
            "transport": dataclasses.asdict(self.transport), "latent_shape": list(self.model.latent_shape),
            "num_classes": self.model.num_classes, "meta": dict(dm.meta) if dm is not None else {},
        }  # fmt: skip
        if dm is not None and dm.meta.get("pixel_patch"):  # pixel caches decode with their own statistics
            checkpoint["rae_dit"]["stats_state"] = dict(dm.stats_state)

    @override
    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        reopen_epoch_cut_by_max_steps(checkpoint)
        saved = checkpoint.get("rae_latent_fingerprint")
        if saved is not None and self.latent_fingerprint is not None and saved != self.latent_fingerprint:
            raise ValueError(f"the checkpoint was trained on latents with normaliser {saved}, the cache has "
                             f"{self.latent_fingerprint}")  # fmt: skip
        self.latent_fingerprint = saved or self.latent_fingerprint
