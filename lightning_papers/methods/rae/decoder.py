"""The RAE pixel decoder: a ViT-MAE style transformer from a frozen encoder's latent grid back to pixels.

RAE v1 (arXiv 2510.11690, §3 "decoder") and RAEv2 (arXiv 2605.18324, stage 1) decode the token grid of a frozen
representation encoder with the decoder of a masked autoencoder (He et al. 2022): a linear map of each latent
token to the decoder width, a trainable CLS token prepended, fixed 2-D sin-cos position embeddings (the CLS
position is zero), pre-norm transformer blocks, a final LayerNorm and a linear map of each token to its
``p x p x 3`` pixel patch, which are put back in place ("unpatchify"); the CLS output is dropped. With a latent
grid of ``g x g`` and images of ``S x S`` the patch size is ``p = S / g``.

Noise augmentation (RAE v1 §3.2): while the decoder is trained, each latent gets Gaussian noise of a per-sample
scale, ``z + sigma * eps``, so that the decoder also maps the slightly-off latents a diffusion model samples back
to clean images. :func:`add_latent_noise` draws ``sigma`` as the reference code does; ``tau = 0`` at inference.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn
from torch.nn import functional as F


@dataclass
class DecoderConfig:
    """Size of the ViT decoder.

    Args:
        width: Token width of the transformer.
        depth: Number of transformer blocks.
        heads: Attention heads (must divide ``width``).
        mlp_ratio: MLP hidden width over ``width`` (the hidden width is ``round(width * mlp_ratio)``).
    """

    width: int = 192
    depth: int = 4
    heads: int = 3
    mlp_ratio: float = 4.0

    def __post_init__(self) -> None:
        for name in ("width", "depth", "heads"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"DecoderConfig.{name} must be a positive integer, got {getattr(self, name)}")
        if self.width % self.heads:
            raise ValueError(f"DecoderConfig.heads = {self.heads} must divide width = {self.width}")
        if self.mlp_ratio <= 0:
            raise ValueError(f"DecoderConfig.mlp_ratio must be positive, got {self.mlp_ratio}")

    @property
    def mlp_dim(self) -> int:
        """Hidden width of each block's MLP."""
        return int(round(self.width * self.mlp_ratio))


# B, L and XL are the ViT-MAE decoder sizes of RAE v1 (its decoder configs ViTB/ViTL/ViTXL; the paper's ViT-XL
# decoder: 28 blocks, width 1152, 16 heads, MLP 4096); S is the standard ViT-S; XS is a small CPU decoder.
DECODER_SIZES: dict[str, DecoderConfig] = {
    "xs": DecoderConfig(width=128, depth=4, heads=4, mlp_ratio=4.0),  # CPU runs in minutes
    "s": DecoderConfig(width=384, depth=12, heads=6, mlp_ratio=4.0),
    "b": DecoderConfig(width=768, depth=12, heads=12, mlp_ratio=4.0),
    "l": DecoderConfig(width=1024, depth=24, heads=16, mlp_ratio=4.0),
    "xl": DecoderConfig(width=1152, depth=28, heads=16, mlp_ratio=4096 / 1152),
}


def build_decoder_config(name: Literal["xs", "s", "b", "l", "xl"]) -> DecoderConfig:
    """The registered decoder size ``name`` (a fresh copy): ``xs``, ``s``, ``b``, ``l`` or ``xl``."""
    key = name.lower()
    if key not in DECODER_SIZES:
        raise ValueError(f"decoder size must be one of {sorted(DECODER_SIZES)}, got {name!r}")
    c = DECODER_SIZES[key]
    return DecoderConfig(width=c.width, depth=c.depth, heads=c.heads, mlp_ratio=c.mlp_ratio)


def sincos_position_embedding(width: int, grid: int) -> Tensor:
    """MAE's fixed 2-D sin-cos embedding ``[grid * grid, width]`` (row-major tokens; ``width`` divisible by 4).

    Half of the channels encode the column, half the row; each half is ``[sin(pos * w_k), cos(pos * w_k)]`` with
    ``w_k = 10000^(-k / (width / 4))``, ``k = 0 .. width/4 - 1`` (He et al. 2022, ``get_2d_sincos_pos_embed``).
    """
    if width % 4:
        raise ValueError(f"the sin-cos position embedding needs a width divisible by 4, got {width}")
    omega = 1.0 / 10000 ** (torch.arange(width // 4, dtype=torch.float64) / (width / 4.0))
    pos = torch.arange(grid, dtype=torch.float64)
    ys, xs = torch.meshgrid(pos, pos, indexing="ij")

    def embed(p: Tensor) -> Tensor:
        out = torch.outer(p.reshape(-1), omega)
        return torch.cat([out.sin(), out.cos()], dim=1)

    return torch.cat([embed(xs), embed(ys)], dim=1).float()


class Block(nn.Module):
    """Pre-norm transformer block: ``x + Attn(LN(x))`` then ``x + MLP(LN(x))`` (GELU MLP, qkv with bias)."""

    def __init__(self, width: int, heads: int, mlp_dim: int) -> None:
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(width, eps=1e-6)
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)
        self.norm2 = nn.LayerNorm(width, eps=1e-6)
        self.fc1 = nn.Linear(width, mlp_dim)
        self.fc2 = nn.Linear(mlp_dim, width)

    def forward(self, x: Tensor) -> Tensor:
        b, n, d = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        a = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, d)
        x = x + self.proj(a)
        return x + self.fc2(F.gelu(self.fc1(self.norm2(x))))


class ViTDecoder(nn.Module):
    """ViT-MAE decoder from a latent ``[B, C, g, g]`` to images ``[B, image_channels, S, S]``.

    The output is on the scale of the training images ([0, 1] here) and is not clamped (clamp for display and
    metrics). The head predicts pixels on the centred [-1, 1] scale, mapped by ``0.5 * y + 0.5`` (RAE's decoder
    likewise predicts normalised pixels that are de-normalised afterwards), so that the initial output is centred
    on mid-grey with the scale of the images. Position embeddings are a fixed buffer (recomputed, not saved); the
    CLS token is trained.

    Args:
        latent_channels: ``C`` of the latent (the encoder's token width).
        latent_grid: ``g``, side of the latent's token grid.
        image_size: ``S``, side of the images; ``S / g`` is the patch size and must be a whole number.
        config: Decoder size (:func:`build_decoder_config`).
        image_channels: Channels of the output images.
    """

    def __init__(self, latent_channels: int, latent_grid: int, image_size: int, config: DecoderConfig,
                 image_channels: int = 3) -> None:  # fmt: skip
        super().__init__()
        for name, v in (("latent_channels", latent_channels), ("latent_grid", latent_grid),
                        ("image_size", image_size), ("image_channels", image_channels)):  # fmt: skip
            if v < 1:
                raise ValueError(f"{name} must be a positive integer, got {v}")
        if image_size % latent_grid:
            raise ValueError(
                f"image_size = {image_size} must be a whole multiple of latent_grid = {latent_grid} "
                "(the patch size is image_size / latent_grid)"
            )
        self.latent_channels, self.latent_grid, self.image_size = latent_channels, latent_grid, image_size
        self.image_channels, self.config = image_channels, config
        self.patch_size = image_size // latent_grid
        w = config.width
        self.embed = nn.Linear(latent_channels, w)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, w))
        pos = torch.cat([torch.zeros(1, w), sincos_position_embedding(w, latent_grid)])  # CLS position: 0
        self.register_buffer("pos_embed", pos.unsqueeze(0), persistent=False)
        self.blocks = nn.ModuleList(Block(w, config.heads, config.mlp_dim) for _ in range(config.depth))
        self.norm = nn.LayerNorm(w, eps=1e-6)
        self.head = nn.Linear(w, self.patch_size**2 * image_channels)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """MAE's initialisation: Xavier-uniform linear weights, zero biases, unit LayerNorms, CLS ~ N(0, 0.02²)."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        nn.init.normal_(self.cls_token, std=0.02)

    @property
    def last_layer(self) -> Tensor:
        """Weight of the output projection: the "last layer" of the adaptive GAN weight (VQGAN)."""
        return self.head.weight

    def unpatchify(self, patches: Tensor) -> Tensor:
        """``[B, g*g, p*p*c]`` (row-major tokens, each patch row-major then channels) -> ``[B, c, g*p, g*p]``."""
        b, g, p, c = patches.shape[0], self.latent_grid, self.patch_size, self.image_channels
        x = patches.view(b, g, g, p, p, c)
        return torch.einsum("bhwpqc->bchpwq", x).reshape(b, c, g * p, g * p)

    def forward(self, z: Tensor) -> Tensor:
        """Decode latents ``[B, C, g, g]`` to images ``[B, image_channels, S, S]``."""
        if z.dim() != 4 or z.shape[1:] != (self.latent_channels, self.latent_grid, self.latent_grid):
            raise ValueError(
                f"expected latents [B, {self.latent_channels}, {self.latent_grid}, {self.latent_grid}], "
                f"got {list(z.shape)}"
            )
        x = self.embed(z.flatten(2).transpose(1, 2))
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed.to(x.dtype)
        for block in self.blocks:
            x = block(x)
        return self.unpatchify(self.head(self.norm(x))[:, 1:]) * 0.5 + 0.5  # the head predicts on [-1, 1]


def sample_noise_sigma(batch: int, tau: float, distribution: Literal["uniform", "half_normal"] = "uniform",
                       generator: torch.Generator | None = None,
                       device: torch.device | str | None = None) -> Tensor:  # fmt: skip
    """Per-sample noise scales ``sigma`` ``[batch]``: ``tau * U(0, 1)`` or ``|N(0, tau^2)|``.

    Drawn on ``generator``'s device (CPU without one) and moved to ``device``. :func:`add_latent_noise` draws
    ``sigma`` with exactly this call before the noise itself, so the same generator state gives the same ``sigma``.
    """
    if tau < 0 or not math.isfinite(tau):
        raise ValueError(f"noise tau must be a finite number >= 0, got {tau}")
    if distribution not in ("uniform", "half_normal"):
        raise ValueError(f"noise distribution must be 'uniform' or 'half_normal', got {distribution!r}")
    at = generator.device if generator is not None else device
    if distribution == "uniform":
        u = torch.rand(batch, generator=generator, device=at)
    else:
        u = torch.randn(batch, generator=generator, device=at).abs()
    return (tau * u).to(device) if device is not None else tau * u


def add_latent_noise(z: Tensor, tau: float, distribution: Literal["uniform", "half_normal"] = "uniform",
                     generator: torch.Generator | None = None) -> Tensor:  # fmt: skip
    """Noise-augment latents for decoder training: ``z + sigma_i * eps``, ``eps ~ N(0, I)``, one ``sigma_i`` per sample.

    ``distribution="uniform"`` draws ``sigma = tau * U(0, 1)``, as RAE's reference code does (``noise_tau = 0.8``);
    ``"half_normal"`` draws ``sigma ~ |N(0, tau^2)|``, as the RAE v1 paper's text (arXiv 2510.11690, §3.2) states.
    The two disagree (mean ``tau / 2`` vs ``tau * sqrt(2 / pi)``, and the half-normal is unbounded); the default
    follows the code, whose numbers the paper reports. ``tau = 0`` returns ``z`` itself (inference and stage 2).
    """
    if tau == 0:
        sample_noise_sigma(0, tau, distribution)  # validates the arguments
        return z
    sigma = sample_noise_sigma(z.shape[0], tau, distribution, generator, device=z.device).to(z.dtype)
    if generator is not None:
        eps = torch.randn(z.shape, generator=generator, device=generator.device).to(device=z.device, dtype=z.dtype)
    else:
        eps = torch.randn_like(z)
    return z + sigma.view(-1, *([1] * (z.dim() - 1))) * eps
