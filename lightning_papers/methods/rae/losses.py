"""Losses of the RAE decoder: L1, feature matching in the frozen encoder, and an adaptive-weight hinge GAN.

RAE v1 (arXiv 2510.11690, §3 and its appendix on decoder training) trains the decoder with
``L = L1 + LPIPS + lambda_adv * w_ada * L_gan``, where the GAN term (weight 0.75) starts at epoch 8 and the
discriminator trains from epoch 6, with hinge losses and DiffAug; RAEv2 (arXiv 2605.18324) keeps the recipe.
Here:

* **Feature matching** replaces LPIPS (whose VGG/AlexNet weights cannot be downloaded offline): the distance
  between the frozen encoder's own intermediate features of the reconstruction and of the target,
  ``sum_b mean(|phi_b(x_hat) - phi_b(x)|^2)``, each token's feature vector first scaled to unit length as LPIPS does
  per channel vector. It is zero exactly when the features agree, and its gradient reaches the reconstruction
  through the encoder (whose parameters stay frozen).
* **GAN**: a small convolutional patch discriminator (the papers use a frozen DINO-S/8 with trainable heads),
  hinge losses ``L_D = (mean relu(1 - D(x)) + mean relu(1 + D(x_hat))) / 2`` and ``L_G = -mean D(x_hat)``
  (taming-transformers' ``hinge_d_loss``), DiffAug on both real and fake inputs of ``D``
  (Zhao et al. 2020: colour, translation by up to 1/8, cutout of 1/2), and VQGAN's adaptive weight
  ``w_ada = ||grad_last L_rec|| / (||grad_last L_G|| + 1e-4)`` clamped to ``[0, 1e4]`` and detached.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

import torch
from torch import Tensor, nn
from torch.nn import functional as F


class FeatureExtractor(Protocol):
    """What feature matching needs of an encoder (``RepresentationEncoder`` has it)."""

    def features(self, images: Tensor, block_ids: list[int]) -> list[Tensor]:
        """Intermediate features ``[B, C, h, w]`` of ``block_ids``, differentiable w.r.t. ``images``."""
        ...


@dataclass
class ReconstructionLossConfig:
    """Weights and schedule of the decoder loss (RAE v1, arXiv 2510.11690, decoder training recipe).

    Args:
        l1_weight: Weight of the pixel L1 loss.
        feature_weight: Weight of feature matching in the frozen encoder (the stand-in for LPIPS; 0 turns it off).
        feature_blocks: Encoder blocks (0-based) whose features are matched; ``None``: the blocks of the latent.
        feature_distance: ``"l2"`` (squared difference, as LPIPS) or ``"l1"`` between normalised features.
        gan_weight: Weight of the adaptively weighted GAN term (paper: 0.75).
        gan_start_epoch: First epoch whose generator loss includes the GAN term (paper: 8); ``None``: no GAN.
        disc_start_epoch: First epoch the discriminator trains (paper: 6); ``None``: ``gan_start_epoch``.
        diffaug: Apply DiffAug (colour, translation, cutout) to the discriminator's inputs.
        adaptive_weight_max: Clamp of the adaptive weight (VQGAN: 1e4).
        disc_channels: Channels of the discriminator's first convolution (doubled per down-sampling).
        disc_layers: Stride-2 convolutions of the discriminator.
    """

    l1_weight: float = 1.0
    feature_weight: float = 1.0
    feature_blocks: list[int] | None = None
    feature_distance: Literal["l2", "l1"] = "l2"
    gan_weight: float = 0.75
    gan_start_epoch: int | None = None
    disc_start_epoch: int | None = None
    diffaug: bool = True
    adaptive_weight_max: float = 1e4
    disc_channels: int = 64
    disc_layers: int = 3

    def __post_init__(self) -> None:
        for name in ("l1_weight", "feature_weight", "gan_weight", "adaptive_weight_max"):
            if getattr(self, name) < 0:
                raise ValueError(f"ReconstructionLossConfig.{name} must be >= 0, got {getattr(self, name)}")
        if self.feature_distance not in ("l2", "l1"):
            raise ValueError(f"feature_distance must be 'l2' or 'l1', got {self.feature_distance!r}")
        for name in ("gan_start_epoch", "disc_start_epoch"):
            v = getattr(self, name)
            if v is not None and v < 0:
                raise ValueError(f"ReconstructionLossConfig.{name} must be None or >= 0, got {v}")
        if self.disc_start_epoch is not None and self.gan_start_epoch is None:
            raise ValueError(f"disc_start_epoch = {self.disc_start_epoch} needs a gan_start_epoch (the GAN is off)")
        if self.disc_channels < 1 or self.disc_layers < 1:
            raise ValueError(f"disc_channels and disc_layers must be >= 1, got {self.disc_channels}, "
                             f"{self.disc_layers}")  # fmt: skip

    def gan_active(self, epoch: int) -> bool:
        """Whether the generator loss of ``epoch`` includes the GAN term."""
        return self.gan_start_epoch is not None and epoch >= self.gan_start_epoch

    def disc_active(self, epoch: int) -> bool:
        """Whether the discriminator trains in ``epoch``."""
        start = self.disc_start_epoch if self.disc_start_epoch is not None else self.gan_start_epoch
        return start is not None and epoch >= start


class FeatureMatchingLoss:
    """Perceptual loss in a frozen encoder's own intermediate features (not LPIPS: no learned layer weights).

    ``loss(recon, target) = sum_b mean_{n,h,w} d(f_b(recon), f_b(target))`` with ``f_b`` block ``b``'s feature
    map, each token's ``C``-vector divided by its L2 norm, and ``d`` the squared (``"l2"``) or absolute
    (``"l1"``) difference summed over channels. Target features carry no gradient. Not an ``nn.Module``: it
    holds a reference to the encoder, which its owner registers.
    """

    def __init__(self, encoder: FeatureExtractor, block_ids: Sequence[int],
                 distance: Literal["l2", "l1"] = "l2") -> None:  # fmt: skip
        if not block_ids:
            raise ValueError("FeatureMatchingLoss needs at least one block id, got an empty list")
        if distance not in ("l2", "l1"):
            raise ValueError(f"distance must be 'l2' or 'l1', got {distance!r}")
        self.encoder, self.block_ids, self.distance = encoder, [int(b) for b in block_ids], distance

    @staticmethod
    def _unit(f: Tensor) -> Tensor:
        return f / (f.pow(2).sum(dim=1, keepdim=True).sqrt() + 1e-10)

    def loss(self, recon: Tensor, target: Tensor) -> Tensor:
        """Feature distance between ``recon`` (with gradient) and ``target`` images ``[B, 3, H, W]``."""
        if recon.shape != target.shape:
            raise ValueError(f"recon {list(recon.shape)} and target {list(target.shape)} must have the same shape")
        with torch.no_grad():
            target_feats = self.encoder.features(target, self.block_ids)
        total = recon.new_zeros(())
        for fr, ft in zip(self.encoder.features(recon, self.block_ids), target_feats, strict=True):
            diff = self._unit(fr.float()) - self._unit(ft.float())
            d = diff.pow(2) if self.distance == "l2" else diff.abs()
            total = total + d.sum(dim=1).mean()
        return total

    __call__ = loss


class Discriminator(nn.Module):
    """Small convolutional patch discriminator: logits ``[B, 1, h, w]`` for images ``[B, 3, H, W]`` in [0, 1].

    ``layers`` stride-2 4x4 convolutions (channels ``c, 2c, 4c, ...``; GroupNorm after the first, LeakyReLU 0.2),
    then a 3x3 convolution to one logit per location (PatchGAN, Isola et al. 2017). Inputs are mapped to [-1, 1].
    """

    def __init__(self, in_channels: int = 3, channels: int = 64, layers: int = 3) -> None:
        super().__init__()
        if in_channels < 1 or channels < 1 or layers < 1:
            raise ValueError(f"in_channels, channels and layers must be >= 1, got {in_channels}, {channels}, {layers}")
        mods: list[nn.Module] = []
        c_in = in_channels
        for i in range(layers):
            c_out = channels * 2**i
            mods.append(nn.Conv2d(c_in, c_out, 4, stride=2, padding=1))
            if i > 0:
                mods.append(nn.GroupNorm(min(32, c_out), c_out))
            mods.append(nn.LeakyReLU(0.2))
            c_in = c_out
        mods.append(nn.Conv2d(c_in, 1, 3, padding=1))
        self.net = nn.Sequential(*mods)

    def forward(self, images: Tensor) -> Tensor:
        return self.net(images * 2 - 1)


def build_discriminator(config: ReconstructionLossConfig, in_channels: int = 3) -> Discriminator:
    """The discriminator of ``config`` (``disc_channels``, ``disc_layers``)."""
    return Discriminator(in_channels, config.disc_channels, config.disc_layers)


def hinge_d_loss(logits_real: Tensor, logits_fake: Tensor) -> Tensor:
    """Discriminator hinge loss ``(mean relu(1 - D(real)) + mean relu(1 + D(fake))) / 2``."""
    return 0.5 * (F.relu(1.0 - logits_real).mean() + F.relu(1.0 + logits_fake).mean())


def hinge_g_loss(logits_fake: Tensor) -> Tensor:
    """Generator hinge loss ``-mean D(fake)``."""
    return -logits_fake.mean()


def diff_augment(x: Tensor, policy: Sequence[str] = ("color", "translation", "cutout"),
                 generator: torch.Generator | None = None) -> Tensor:  # fmt: skip
    """DiffAugment (Zhao et al. 2020, arXiv 2006.10738) of images ``[B, C, H, W]`` in [0, 1], differentiable in ``x``.

    ``color``: brightness ``+U(-0.5, 0.5)``, saturation ``x(U(0, 2))`` and contrast ``x(U(0.5, 1.5))`` around the
    channel/image mean, on the [-1, 1] scale of the original code; ``translation``: integer shift by up to
    ``H/8, W/8`` with zero padding; ``cutout``: one zeroed square of half the side per image. Every draw is per
    image, from ``generator`` (CPU) when given.
    """
    unknown = set(policy) - {"color", "translation", "cutout"}
    if unknown:
        raise ValueError(f"DiffAug policies are 'color', 'translation', 'cutout', got {sorted(unknown)}")
    b, _, h, w = x.shape

    def rand(*shape: int) -> Tensor:
        return torch.rand(shape, generator=generator).to(device=x.device, dtype=x.dtype)

    def randint(high: int, *shape: int, low: int = 0) -> Tensor:
        return torch.randint(low, high, shape, generator=generator).to(x.device)

    if "color" in policy:
        y = x * 2 - 1
        y = y + (rand(b, 1, 1, 1) - 0.5)
        mean = y.mean(dim=1, keepdim=True)
        y = (y - mean) * (rand(b, 1, 1, 1) * 2) + mean
        mean = y.mean(dim=(1, 2, 3), keepdim=True)
        y = (y - mean) * (rand(b, 1, 1, 1) + 0.5) + mean
        x = (y + 1) / 2
    if "translation" in policy:
        sh, sw = int(h * 0.125 + 0.5), int(w * 0.125 + 0.5)
        ty, tx = randint(sh + 1, b, 1, 1, low=-sh), randint(sw + 1, b, 1, 1, low=-sw)
        gb, gy, gx = torch.meshgrid(torch.arange(b, device=x.device), torch.arange(h, device=x.device),
                                    torch.arange(w, device=x.device), indexing="ij")  # fmt: skip
        gy = torch.clamp(gy + ty + 1, 0, h + 1)
        gx = torch.clamp(gx + tx + 1, 0, w + 1)
        x = F.pad(x, [1, 1, 1, 1]).permute(0, 2, 3, 1)[gb, gy, gx].permute(0, 3, 1, 2)
    if "cutout" in policy:
        ch, cw = int(h * 0.5 + 0.5), int(w * 0.5 + 0.5)
        oy, ox = randint(h + (1 - ch % 2), b, 1, 1), randint(w + (1 - cw % 2), b, 1, 1)
        gb, gy, gx = torch.meshgrid(torch.arange(b, device=x.device), torch.arange(ch, device=x.device),
                                    torch.arange(cw, device=x.device), indexing="ij")  # fmt: skip
        gy = torch.clamp(gy + oy - ch // 2, 0, h - 1)
        gx = torch.clamp(gx + ox - cw // 2, 0, w - 1)
        mask = torch.ones(b, h, w, dtype=x.dtype, device=x.device)
        mask[gb, gy, gx] = 0
        x = x * mask.unsqueeze(1)
    return x


def adaptive_gan_weight(rec_loss: Tensor, gan_loss: Tensor, last_layer: Tensor, max_weight: float = 1e4,
                        eps: float = 1e-4) -> Tensor:  # fmt: skip
    """VQGAN's adaptive weight ``||grad_last rec|| / (||grad_last gan|| + eps)``, clamped to [0, max], detached.

    ``last_layer`` is the decoder's output weight (:attr:`ViTDecoder.last_layer`); both losses must depend on it.
    The graphs are kept (``retain_graph``) so that the total loss can still be back-propagated.
    """
    g_rec = torch.autograd.grad(rec_loss, last_layer, retain_graph=True)[0]
    g_gan = torch.autograd.grad(gan_loss, last_layer, retain_graph=True)[0]
    return torch.clamp(g_rec.norm() / (g_gan.norm() + eps), 0.0, max_weight).detach()


def generator_loss(recon: Tensor, target: Tensor, config: ReconstructionLossConfig, epoch: int,
                   feature_loss: FeatureMatchingLoss | None = None, discriminator: nn.Module | None = None,
                   last_layer: Tensor | None = None, generator: torch.Generator | None = None,
                   ) -> tuple[Tensor, dict[str, Tensor]]:  # fmt: skip
    """The decoder's loss of one batch and its detached parts (``l1``, ``feature``, ``rec``, ``gan``, ``gan_weight``).

    ``rec = l1_weight * L1 + feature_weight * feature`` (feature matching only if ``feature_loss`` is given and
    ``feature_weight > 0``); from ``gan_start_epoch`` on, ``+ gan_weight * w_ada * L_G`` with ``L_G`` the hinge
    generator loss of ``discriminator`` on (DiffAug-ed) ``recon`` and ``w_ada`` :func:`adaptive_gan_weight` at
    ``last_layer``. In evaluation (``torch.is_grad_enabled()`` false) the adaptive weight is not computed.
    """
    l1 = (recon - target).abs().mean()
    rec = config.l1_weight * l1
    logs = {"l1": l1.detach()}
    if feature_loss is not None and config.feature_weight > 0:
        feat = feature_loss(recon, target)
        rec = rec + config.feature_weight * feat
        logs["feature"] = feat.detach()
    total = rec
    if config.gan_active(epoch) and config.gan_weight > 0:
        if discriminator is None or last_layer is None:
            raise ValueError(f"epoch {epoch} >= gan_start_epoch = {config.gan_start_epoch} needs a discriminator "
                             "and the decoder's last_layer")  # fmt: skip
        fake = diff_augment(recon, generator=generator) if config.diffaug else recon
        gan = hinge_g_loss(discriminator(fake))
        if torch.is_grad_enabled() and rec.requires_grad:
            w = adaptive_gan_weight(rec, gan, last_layer, config.adaptive_weight_max)
        else:
            w = rec.new_ones(())
        total = total + config.gan_weight * w * gan
        logs["gan"], logs["gan_weight"] = gan.detach(), w.detach()
    logs["rec"] = rec.detach()
    return total, logs


def discriminator_loss(recon: Tensor, target: Tensor, discriminator: nn.Module, config: ReconstructionLossConfig,
                       generator: torch.Generator | None = None) -> tuple[Tensor, dict[str, Tensor]]:  # fmt: skip
    """Hinge loss of ``discriminator`` on real ``target`` and detached fake ``recon`` (DiffAug-ed if configured).

    Returns the loss and detached logs ``d_loss``, ``logits_real``, ``logits_fake`` (means).
    """
    fake, real = recon.detach(), target
    if config.diffaug:
        fake, real = diff_augment(fake, generator=generator), diff_augment(real, generator=generator)
    lr, lf = discriminator(real), discriminator(fake)
    loss = hinge_d_loss(lr, lf)
    return loss, {"d_loss": loss.detach(), "logits_real": lr.mean().detach(), "logits_fake": lf.mean().detach()}


class ReconstructionLoss(nn.Module):
    """The decoder's whole loss as one module: feature matching in ``encoder`` and, if configured, a discriminator.

    The discriminator (``None`` without a GAN) is a submodule, so it is saved with its owner; the encoder is only
    referenced (its owner registers it). ``feature_blocks = None`` matches the encoder's ``block_ids`` (the blocks
    of the latent). Pass a ``generator`` to make DiffAug's draws a function of the step (exact resume).

    Args:
        config: Weights and schedule.
        encoder: The frozen encoder (anything with ``features(images, block_ids)``); ``None``: no feature matching.
        image_channels: Channels of the images the discriminator sees.
    """

    def __init__(self, config: ReconstructionLossConfig, encoder: FeatureExtractor | None = None,
                 image_channels: int = 3) -> None:  # fmt: skip
        super().__init__()
        self.config = config
        self.feature_loss: FeatureMatchingLoss | None = None
        if encoder is not None and config.feature_weight > 0:
            blocks = config.feature_blocks if config.feature_blocks is not None else getattr(encoder, "block_ids", None)
            if blocks is None:
                raise ValueError("feature_blocks is None and the encoder has no block_ids: name the blocks to match")
            self.feature_loss = FeatureMatchingLoss(encoder, blocks, config.feature_distance)
        self.discriminator = build_discriminator(config, image_channels) if self.uses_gan else None

    @property
    def uses_gan(self) -> bool:
        """Whether the configuration has a GAN term at all (``gan_start_epoch`` set and ``gan_weight > 0``)."""
        return self.config.gan_start_epoch is not None and self.config.gan_weight > 0

    def gan_active(self, epoch: int) -> bool:
        return self.uses_gan and self.config.gan_active(epoch)

    def disc_active(self, epoch: int) -> bool:
        return self.uses_gan and self.config.disc_active(epoch)

    def generator_loss(self, recon: Tensor, target: Tensor, epoch: int, last_layer: Tensor | None = None,
                       generator: torch.Generator | None = None) -> dict[str, Tensor]:  # fmt: skip
        """``{"loss": total (with gradient), "l1", "rec", ["feature"], ["gan", "gan_weight"]}`` (see
        :func:`generator_loss`; the parts are detached)."""
        total, logs = generator_loss(recon, target, self.config, epoch, self.feature_loss, self.discriminator,
                                     last_layer, generator)  # fmt: skip
        return {"loss": total, **logs}

    def discriminator_loss(self, recon: Tensor, target: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Hinge loss of the discriminator on ``target`` (real) and detached ``recon`` (fake)."""
        if self.discriminator is None:
            raise ValueError("this ReconstructionLoss has no discriminator (gan_start_epoch is None or gan_weight 0)")
        return discriminator_loss(recon, target, self.discriminator, self.config, generator)[0]
