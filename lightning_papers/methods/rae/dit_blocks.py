"""Building blocks of the DiT-DH denoiser (RAE v1, arXiv 2510.11690, Sec. 4-5; RAEv2, arXiv 2605.18324, Sec. 3).

* ``RMSNorm`` and ``SwiGLU`` (the LightningDiT trunk of RAE v1), query/key RMS-normalised attention.
* ``RoPE2D``: 2-D rotary position embedding over an ``h x w`` token grid (half of each head's rotary pairs encode
  the row, half the column). Extra tokens appended after the grid (RAEv2's in-context time and class tokens) get
  angle 0, i.e. no position.
* ``DiTBlock``: pre-norm attention + SwiGLU block, optionally adaLN-Zero modulated by a condition that is either
  one vector per sample ``[B, 1, D]`` (the v1 trunk: t + y) or one vector per token ``[B, N, D]`` (the DDT head,
  modulated per token by the trunk's output).
* ``FinalLayer``: RMSNorm, adaLN shift/scale, zero-initialised linear map to the latent channels.
* ``FourierTimeEmbedding``: Gaussian random Fourier features of ``t`` in [0, 1] followed by an MLP.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class RMSNorm(nn.Module):
    """Root-mean-square normalisation over the last dimension with a learned gain (computed in float32)."""

    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)).type_as(x) * self.weight


class SwiGLU(nn.Module):
    """``w3(SiLU(w1 x) * w2 x)`` with hidden size ``2/3 * mlp_ratio * dim`` (parameter-matched to a 4x MLP)."""

    def __init__(self, dim: int, mlp_ratio: float) -> None:
        super().__init__()
        hidden = int(2 / 3 * dim * mlp_ratio)
        self.w1 = nn.Linear(dim, hidden)
        self.w2 = nn.Linear(dim, hidden)
        self.w3 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w3(F.silu(self.w1(x)) * self.w2(x))


class RoPE2D(nn.Module):
    """Rotary embedding for ``grid = (h, w)`` tokens (row-major) followed by ``num_extra`` position-free tokens."""

    def __init__(self, head_dim: int, grid: tuple[int, int], num_extra: int = 0, theta: float = 10000.0) -> None:
        super().__init__()
        if head_dim % 4 != 0:
            raise ValueError(f"2-D RoPE needs a head dimension divisible by 4, got {head_dim}")
        h, w = grid
        quarter = head_dim // 4
        freqs = 1.0 / theta ** (torch.arange(quarter, dtype=torch.float64) / quarter)
        rows = torch.arange(h, dtype=torch.float64)[:, None].expand(h, w).reshape(-1)
        cols = torch.arange(w, dtype=torch.float64)[None, :].expand(h, w).reshape(-1)
        angles = torch.cat([rows[:, None] * freqs, cols[:, None] * freqs], dim=1)  # [h*w, head_dim/2]
        angles = torch.cat([angles, torch.zeros(num_extra, head_dim // 2, dtype=torch.float64)], dim=0)
        angles = angles.repeat_interleave(2, dim=1)  # one angle per (even, odd) pair
        self.register_buffer("cos", angles.cos().float(), persistent=False)
        self.register_buffer("sin", angles.sin().float(), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Rotate ``x`` of shape ``[B, heads, N, head_dim]``."""
        pairs = x.unflatten(-1, (-1, 2))
        rotated = torch.stack((-pairs[..., 1], pairs[..., 0]), dim=-1).flatten(-2)
        return x * self.cos.to(x.dtype) + rotated * self.sin.to(x.dtype)


class Attention(nn.Module):
    """Multi-head self-attention with RMS-normalised queries and keys and rotary positions."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        if dim % heads != 0:
            raise ValueError(f"width {dim} is not divisible by the number of heads {heads}")
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.q_norm = RMSNorm(dim // heads)
        self.k_norm = RMSNorm(dim // heads)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, rope: RoPE2D) -> torch.Tensor:
        b, n, d = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        q, k = rope(self.q_norm(q)), rope(self.k_norm(k))
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(b, n, d))


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """adaLN: ``x * (1 + scale) + shift``."""
    return x * (1 + scale) + shift


class DiTBlock(nn.Module):
    """Pre-norm transformer block; ``modulated=True`` adds adaLN-Zero (shift, scale, gate for both sub-layers)."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float, modulated: bool) -> None:
        super().__init__()
        self.norm1 = RMSNorm(dim)
        self.attn = Attention(dim, heads)
        self.norm2 = RMSNorm(dim)
        self.mlp = SwiGLU(dim, mlp_ratio)
        self.modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 6 * dim)) if modulated else None

    def forward(self, x: torch.Tensor, rope: RoPE2D, cond: torch.Tensor | None = None) -> torch.Tensor:
        if self.modulation is None:
            x = x + self.attn(self.norm1(x), rope)
            return x + self.mlp(self.norm2(x))
        if cond is None:
            raise ValueError("an adaLN-modulated block needs a condition tensor")
        shift1, scale1, gate1, shift2, scale2, gate2 = self.modulation(cond).chunk(6, dim=-1)
        x = x + gate1 * self.attn(modulate(self.norm1(x), shift1, scale1), rope)
        return x + gate2 * self.mlp(modulate(self.norm2(x), shift2, scale2))


class FinalLayer(nn.Module):
    """RMSNorm, adaLN shift/scale from the condition, linear map to ``out_channels`` (all zero-initialised)."""

    def __init__(self, dim: int, out_channels: int) -> None:
        super().__init__()
        self.norm = RMSNorm(dim)
        self.modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 2 * dim))
        self.linear = nn.Linear(dim, out_channels)

    def zero_init(self) -> None:
        for layer in (self.modulation[-1], self.linear):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        shift, scale = self.modulation(cond).chunk(2, dim=-1)
        return self.linear(modulate(self.norm(x), shift, scale))


class FourierTimeEmbedding(nn.Module):
    """Gaussian Fourier features ``[sin, cos](2 pi t W)`` (W ~ N(0, 1), fixed, seeded) followed by a 2-layer MLP."""

    def __init__(self, dim: int, num_features: int = 256) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(0)
        self.register_buffer("freqs", torch.randn(num_features, generator=gen))
        self.mlp = nn.Sequential(nn.Linear(2 * num_features, dim), nn.SiLU(), nn.Linear(dim, dim))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        """``t`` of shape ``[B]`` in [0, 1] -> ``[B, dim]``."""
        arg = 2 * math.pi * t.float()[:, None] * self.freqs[None, :]
        return self.mlp(torch.cat([arg.sin(), arg.cos()], dim=-1).to(self.mlp[0].weight.dtype))
