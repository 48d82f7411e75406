"""``RAEDecoderModule``: train a representation autoencoder's decoder from a frozen encoder's latent to pixels.

RAE stage 1 (arXiv 2510.11690 §3; RAEv2 arXiv 2605.18324 §3): the encoder (``encoder.py``) is frozen and gives the
latent, the mean of its chosen blocks' patch tokens; the ViT decoder (``decoder.py``) is trained with L1 + feature
matching in the encoder's own layers (+ an optional adaptive-weight GAN, ``losses.py``) on latents with noise
augmentation, σ = τ·U(0, 1) per sample. This class only wires those parts to Lightning.

Per-element latent statistics (``normalizer.py``) are computed exactly over the whole training set at the start of
the fit (each rank over its own shard, merged across ranks), kept in the checkpoint and written to ``stats_path``:
stage 2 trains on normalised latents, and ``decode`` maps a normalised latent back to pixels.

The frozen encoder is not saved in checkpoints when it has its own source (a weights file, the installed weights
package, or the in-process classifier pretraining, which ``setup`` loads from its file or trains once); a randomly
initialised encoder (the ``E-rand`` control) is saved, since nothing else could rebuild it.

Data contract (:class:`LabelledImages`, checked in ``setup``): training batches are ``(images, labels)`` with images
in [0, 1]; the datamodule also gives a fixed labelled subset (linear probe, pretraining) and an unpadded shard of the
training set per rank (exact statistics). ``lightning_papers.datamodules.images.ImageDataModule`` has both.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol, runtime_checkable

import torch
from lightning.pytorch import LightningModule
from lightning.pytorch.utilities import rank_zero_info
from torch.utils.data import DataLoader
from typing_extensions import override

from lightning_papers.contracts import check_datamodule
from lightning_papers.methods.rae.decoder import ViTDecoder, add_latent_noise, build_decoder_config
from lightning_papers.methods.rae.encoder import RepresentationEncoder, load_backbone_weights
from lightning_papers.methods.rae.encoder_pretrain import pretrain_classifier
from lightning_papers.methods.rae.losses import ReconstructionLoss, ReconstructionLossConfig
from lightning_papers.methods.rae.normalizer import LatentStatistics
from lightning_papers.methods.rae.plots import reconstruction_figure
from lightning_papers.methods.rae.probe import linear_probe_accuracy
from lightning_papers.methods.rae.schedule import check_schedule, plain_hparams, position_generator, warmup_cosine
from lightning_papers.resume import reopen_epoch_cut_by_max_steps

ENCODER_PREFIX = "encoder."


@dataclass
class ClassifierPretraining:
    """Train the encoder as a classifier before freezing it (the CPU protocol's supervised encoder, ``E-sup``).

    Args:
        path: File of the trained weights: loaded when it exists, written after training otherwise (so a resumed
            fit, the latent cache and stage 2 use the same encoder).
        samples: Labelled training images used (a fixed subset from the datamodule).
        steps: Optimizer steps.
        lr: Adam learning rate.
        batch_size: Images per step.
        seed: Seed of the head's initialisation and the batch order.
    """

    path: str = "runs/rae/encoders/esup.pt"
    samples: int = 5000
    steps: int = 300
    lr: float = 1e-3
    batch_size: int = 128
    seed: int = 0


@runtime_checkable
class LabelledImages(Protocol):
    """What :class:`RAEDecoderModule` needs from its datamodule besides ``(images, labels)`` training batches."""

    num_classes: int

    def labelled_subset(self, split: str, max_items: int) -> tuple[torch.Tensor, torch.Tensor]: ...

    def shard_dataloader(self, split: str, rank: int, world_size: int, batch_size: int) -> DataLoader: ...


class RAEDecoderModule(LightningModule):
    """A frozen representation encoder + a trainable ViT decoder (RAE stage 1).

    Args:
        encoder: The frozen encoder (``RepresentationEncoder``: timm model name, weights file, chosen blocks).
        encoder_pretraining: Train the encoder in-process as a classifier first (the CPU protocol's ``E-sup``) and
            keep it in a file; None uses the encoder as built (random init = ``E-rand``, or loaded weights).
        decoder: Decoder size: ``xs``/``s`` for CPUs, ``b``/``l``/``xl`` as the paper's ViT-B/L/XL decoders.
        noise_tau: Latent noise augmentation while training, σ ≤ τ per sample (RAE code: 0.8; 0 turns it off).
        noise_distribution: ``uniform`` σ = τ·U(0, 1) (the released code) or ``half_normal`` σ = |N(0, τ²)|
            (the RAE v1 text).
        loss: L1 / feature-matching / GAN weights and schedule.
        lr: AdamW peak learning rate (paper: 2e-4, batch 512).
        lr_min: Final learning rate of the cosine decay (paper: 2e-5).
        warmup_steps: Linear warm-up steps before the cosine decay.
        betas: AdamW betas (paper: 0.9, 0.95).
        weight_decay: AdamW weight decay.
        eval_noise: σ of the latent noise for the ``val/psnr_noisy`` robustness metric (0 skips it).
        probe_samples: Labelled training / validation images for the latent's linear probe (0 skips it).
        stats_path: File for the latent statistics (read by ``cache.py`` and stage 2); None keeps them only in
            the checkpoint.
        stats_batch_size: Batch size of the statistics pass.
        grid_images: Fixed validation images shown in the reconstruction grid.
        num_threads: If set, ``torch.set_num_threads`` at setup. On a small shared CPU one thread avoids
            oversubscription (the CPU configs use 1); None leaves torch's setting alone.
        seed: Seed of the noise draws (a function of seed, step and rank, so a resumed run repeats them).
    """

    def __init__(
        self,
        encoder: RepresentationEncoder,
        encoder_pretraining: ClassifierPretraining | None = None,
        decoder: Literal["xs", "s", "b", "l", "xl"] = "xs",
        noise_tau: float = 0.8,
        noise_distribution: Literal["uniform", "half_normal"] = "uniform",
        loss: ReconstructionLossConfig | None = None,
        lr: float = 2e-4,
        lr_min: float = 2e-5,
        warmup_steps: int = 0,
        betas: tuple[float, float] = (0.9, 0.95),
        weight_decay: float = 0.0,
        eval_noise: float = 0.5,
        probe_samples: int = 1000,
        stats_path: str | None = None,
        stats_batch_size: int = 256,
        grid_images: int = 8,
        num_threads: int | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if noise_tau < 0 or eval_noise < 0:
            raise ValueError(f"noise_tau and eval_noise must be >= 0, got {noise_tau} and {eval_noise}")
        check_schedule(lr, lr_min, warmup_steps)
        if warmup_steps < 0 or probe_samples < 0 or grid_images < 1 or stats_batch_size < 1:
            raise ValueError(f"need warmup_steps >= 0, probe_samples >= 0, grid_images >= 1, stats_batch_size >= 1;"
                             f" got {warmup_steps}, {probe_samples}, {grid_images}, {stats_batch_size}")
        self.save_hyperparameters(ignore=["encoder"])
        plain_hparams(self.hparams)
        self.automatic_optimization = False  # the optional GAN needs two optimizers
        self.encoder = encoder
        channels, grid, _ = encoder.latent_shape
        self.decoder = ViTDecoder(channels, grid, encoder.image_size, build_decoder_config(decoder))
        self.loss = ReconstructionLoss(loss or ReconstructionLossConfig(), encoder)
        self.statistics = LatentStatistics(encoder.latent_shape)
        self.probe_accuracy: float | None = None
        self.encoder_pretraining = encoder_pretraining
        self._encoder_ready = encoder_pretraining is None
        self.grid: tuple[torch.Tensor, torch.Tensor] | None = None  # (images, reconstructions) for the figure
        from torchmetrics.image import PeakSignalNoiseRatio, StructuralSimilarityIndexMeasure

        self.psnr = PeakSignalNoiseRatio(data_range=1.0)
        self.psnr_noisy = PeakSignalNoiseRatio(data_range=1.0)
        self.ssim = StructuralSimilarityIndexMeasure(data_range=1.0)

    # -- encoder, statistics, probe -----------------------------------------------------------------------------
    @override
    def setup(self, stage: str) -> None:
        if self.hparams.num_threads is not None:
            torch.set_num_threads(self.hparams.num_threads)
        # The frozen encoder stays in eval mode on purpose (BatchNorm statistics of a CNN encoder, no dropout):
        # Lightning's "modules in eval mode at the start of training" warning is expected here.
        warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode", category=UserWarning)
        dm = self.trainer.datamodule
        check_datamodule(dm, LabelledImages, type(self).__name__)
        self.encoder.load_weights()  # a missing weights file fails here, before training, naming the file
        if self.encoder_pretraining is not None and not self._encoder_ready:
            self.prepare_encoder(self.encoder_pretraining, dm)

    def prepare_encoder(self, cfg: ClassifierPretraining, dm: LabelledImages) -> None:
        """Load the pretrained encoder from ``cfg.path``, or train it on rank 0, save it and broadcast it.

        The file holds the backbone's weights, so it also works as ``RepresentationEncoder(checkpoint_path=...)``.
        """
        path = Path(cfg.path)
        trainer = self._trainer  # None when used outside a fit (cache.py)
        distributed = trainer is not None and trainer.world_size > 1
        if not path.exists() and (trainer is None or trainer.is_global_zero):
            images, labels = dm.labelled_subset("train", cfg.samples)
            acc = pretrain_classifier(self.encoder, images, labels, dm.num_classes, steps=cfg.steps, lr=cfg.lr,
                                      batch_size=cfg.batch_size, seed=cfg.seed)  # fmt: skip
            path.parent.mkdir(parents=True, exist_ok=True)
            self.encoder.save_weights(path)
            rank_zero_info(f"[RAE] encoder pretrained as a classifier (train accuracy {acc:.3f}), saved to {path}")
        if distributed:
            trainer.strategy.barrier("rae_encoder_pretraining")
        load_backbone_weights(self.encoder.backbone, path)
        rank_zero_info(f"[RAE] encoder weights from {path}")
        self._encoder_ready = True

    @override
    def on_fit_start(self) -> None:
        if self.statistics.count == 0:
            self.compute_statistics()
        if self.hparams.probe_samples and self.probe_accuracy is None:
            self.probe_accuracy = self.linear_probe()

    @torch.no_grad()
    def compute_statistics(self) -> None:
        """Exact per-element mean/variance of the latent over the training set (each rank a shard, merged)."""
        dm = self.trainer.datamodule
        stats = LatentStatistics(self.encoder.latent_shape)
        loader = dm.shard_dataloader("train", self.global_rank, self.trainer.world_size, self.hparams.stats_batch_size)
        for images, _ in loader:
            stats.update(self.encoder(images.to(self.device)))
        stats.merge_across_ranks()
        self.statistics = stats
        rank_zero_info(f"[RAE] latent statistics over {stats.count} training images: mean |mu| "
                       f"{stats.mean.abs().mean():.3f}, mean var {stats.var.mean():.3f}")
        if self.hparams.stats_path and self.trainer.is_global_zero:
            Path(self.hparams.stats_path).parent.mkdir(parents=True, exist_ok=True)
            stats.save(self.hparams.stats_path)

    @torch.no_grad()
    def linear_probe(self) -> float:
        """Linear-probe accuracy of the latent (fit on training images, scored on validation images)."""
        dm, n = self.trainer.datamodule, self.hparams.probe_samples
        (xtr, ytr), (xva, yva) = dm.labelled_subset("train", n), dm.labelled_subset("val", n)
        ztr, zva = self.encode_images(xtr), self.encode_images(xva)
        return linear_probe_accuracy(ztr, ytr, zva, yva, dm.num_classes)

    @torch.no_grad()
    def encode_images(self, images: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
        """Raw (not normalised) latents of ``images``, on the CPU, in chunks."""
        return torch.cat([self.encoder(images[i:i + batch_size].to(self.device)).cpu()
                          for i in range(0, len(images), batch_size)])  # fmt: skip

    def decode(self, latent: torch.Tensor) -> torch.Tensor:
        """Pixels in [0, 1] from a *normalised* latent (stage 2's samples)."""
        return self.decoder(self.statistics.denormalize(latent)).clamp(0, 1)

    # -- training -----------------------------------------------------------------------------------------------
    def noise_generator(self, stream: int = 0) -> torch.Generator:
        """A generator of this step's random draws: a function of (seed, global step, rank, stream) only."""
        return position_generator(self.hparams.seed, self.global_step, self.global_rank, stream)

    @override
    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        images, _ = batch
        latent = self.encoder(images)
        if self.hparams.noise_tau > 0:
            noise = add_latent_noise(latent.cpu(), self.hparams.noise_tau, self.hparams.noise_distribution,
                                     generator=self.noise_generator())  # fmt: skip
            latent = noise.to(latent.device)
        optimizers = self.optimizers()
        opt_g, opt_d = (optimizers, None) if not isinstance(optimizers, list) else optimizers
        recon = self.decoder(latent)
        gan_on = opt_d is not None and self.loss.gan_active(self.current_epoch)
        g = self.noise_generator(stream=1)  # DiffAug's draws
        losses = self.loss.generator_loss(recon, images, self.current_epoch, last_layer=self.decoder.last_layer,
                                          generator=g)  # fmt: skip
        opt_g.zero_grad(set_to_none=True)
        self.manual_backward(losses["loss"])
        opt_g.step()
        self.lr_schedulers().step()
        if opt_d is not None and self.loss.disc_active(self.current_epoch):
            d_loss = self.loss.discriminator_loss(recon.detach(), images, generator=g)
            opt_d.zero_grad(set_to_none=True)
            self.manual_backward(d_loss)
            # The raw optimizer: Lightning's wrapper would count a second global step per batch (manual
            # optimization counts every wrapped step), and ``max_steps`` means decoder steps here.
            opt_d.optimizer.step()
            losses["disc"] = d_loss.detach()
        losses["gan_on"] = torch.tensor(float(gan_on))
        self.log_dict({f"train/{k}": v.detach() for k, v in losses.items() if k != "loss"})
        self.log("train/loss", losses["loss"].detach(), prog_bar=True)
        return losses["loss"]

    @override
    def configure_optimizers(self) -> Any:
        hp = self.hparams
        opt_g = torch.optim.AdamW(self.decoder.parameters(), lr=hp.lr, betas=tuple(hp.betas),
                                  weight_decay=hp.weight_decay)  # fmt: skip
        trainer = self.trainer
        scheduler = warmup_cosine(opt_g, hp.lr, hp.lr_min, hp.warmup_steps, lambda: trainer.estimated_stepping_batches)
        if not self.loss.uses_gan:
            return {"optimizer": opt_g, "lr_scheduler": scheduler}
        opt_d = torch.optim.AdamW(self.loss.discriminator.parameters(), lr=hp.lr, betas=tuple(hp.betas))
        return [opt_g, opt_d], [scheduler]

    # -- validation ---------------------------------------------------------------------------------------------
    @override
    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        images, _ = batch
        latent = self.encoder(images)
        recon = self.decoder(latent).clamp(0, 1)
        self.psnr.update(recon, images)
        self.ssim.update(recon, images)
        self.log("val/l1", (recon - images).abs().mean(), sync_dist=True)
        if self.hparams.eval_noise > 0:
            g = torch.Generator(device="cpu").manual_seed(self.hparams.seed + 7919 * batch_idx)
            noisy = latent + self.hparams.eval_noise * torch.randn(latent.shape, generator=g).to(latent.device)
            self.psnr_noisy.update(self.decoder(noisy).clamp(0, 1), images)
        if batch_idx == 0:
            n = self.hparams.grid_images
            self.grid = (images[:n].detach().cpu(), recon[:n].detach().cpu())

    @override
    def on_validation_epoch_end(self) -> None:
        self.log("val/psnr", self.psnr.compute(), prog_bar=True)
        self.log("val/ssim", self.ssim.compute())
        self.psnr.reset()
        self.ssim.reset()
        if self.hparams.eval_noise > 0:
            self.log("val/psnr_noisy", self.psnr_noisy.compute())
            self.psnr_noisy.reset()
        if self.probe_accuracy is not None:
            self.log("val/probe_accuracy", self.probe_accuracy)

    def make_figures(self, stage: str) -> dict[str, Any]:
        """The reconstruction grid (inputs over reconstructions) of the fixed validation images."""
        if self.grid is None:
            return {}
        images, recons = self.grid
        mse = (images - recons).pow(2).flatten(1).mean(1).clamp_min(1e-10)
        title = f"step {self.global_step}: mean PSNR of these {len(images)} images {(-10 * mse.log10()).mean():.2f} dB"
        return {f"{stage}/reconstructions": reconstruction_figure(*self.grid, title=title)}

    def tokenizer_spec(self) -> dict[str, Any]:
        """What ``RAETokenizer.from_checkpoint`` needs to rebuild encoder and decoder without a config."""
        enc = self.encoder
        weights = self.encoder_pretraining.path if self.encoder_pretraining is not None else enc.checkpoint_path
        return {
            "encoder": {"model_name": enc.model_name, "layers": list(enc.block_ids), "img_size": enc.img_size,
                        "input_size": enc.input_size, "model_kwargs": enc.model_kwargs, "weights": weights},
            "decoder": self.hparams.decoder, "latent_shape": list(enc.latent_shape), "image_size": enc.image_size,
        }  # fmt: skip

    # -- checkpoints --------------------------------------------------------------------------------------------
    @property
    def encoder_has_source(self) -> bool:
        """Whether the encoder's weights can be rebuilt without the checkpoint (a weights file or its pretraining)."""
        return self.encoder_pretraining is not None or self.encoder.checkpoint_path is not None

    @override
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if self.encoder_has_source:  # a random encoder (E-rand) is saved: nothing else could rebuild it
            for key in ("state_dict", "current_model_state"):  # the latter is written by WeightAveraging callbacks
                if key in checkpoint:
                    checkpoint[key] = {k: v for k, v in checkpoint[key].items() if not k.startswith(ENCODER_PREFIX)}
        checkpoint["rae_statistics"] = self.statistics.state_dict()
        checkpoint["rae_tokenizer"] = self.tokenizer_spec()
        checkpoint["rae_probe_accuracy"] = self.probe_accuracy

    @override
    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        reopen_epoch_cut_by_max_steps(checkpoint)
        encoder_state = {ENCODER_PREFIX + k: v for k, v in self.encoder.state_dict().items()}
        for key in ("state_dict", "current_model_state"):
            if key in checkpoint and not any(k.startswith(ENCODER_PREFIX) for k in checkpoint[key]):
                checkpoint[key] = {**checkpoint[key], **encoder_state}
        if "rae_statistics" in checkpoint:
            self.statistics.load_state_dict(checkpoint["rae_statistics"])
        self.probe_accuracy = checkpoint.get("rae_probe_accuracy")
