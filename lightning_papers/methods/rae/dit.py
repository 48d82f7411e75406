"""DiT-DH: a diffusion transformer with a wide, shallow DDT head, over representation latents ``[B, C, h, w]``.

RAE v1 (arXiv 2510.11690, Sec. 5) and RAEv2 (arXiv 2605.18324, Sec. 3):

* **Trunk**: ``depth`` transformer blocks of width ``width`` (RMSNorm, SwiGLU, 2-D RoPE, q/k-norm) over one
  token per latent position (patch size 1: each token is the ``C``-dim latent vector).
  - ``conditioning="in_context"`` (RAEv2): no adaLN in the trunk; ``num_time_tokens`` tokens (learned offsets +
    the time embedding) and ``num_class_tokens`` tokens (learned offsets + the class embedding) are appended to
    the sequence, without a position.
  - ``conditioning="adaln"`` (RAE v1): every trunk block is adaLN-Zero modulated by ``t_emb + y_emb``.
* **DDT head**: ``head_depth`` blocks of width ``head_width`` that re-embed ``x_t`` and are adaLN-modulated
  *per token* by ``s = proj(SiLU(t_emb + trunk output))``; a zero-initialised final layer gives the prediction.
* **IG / REPA head** (``DiTwDDTHeadIG`` of RAEv2): a second zero-initialised final layer reads the trunk after block
  ``ig_depth`` (about L/3) and gives ``base``, a prediction of the same kind (x or v) from a shallow sub-network;
  it is trained with the same loss and used by REPA-head ("internal") guidance (``guidance.py``).
* **Width rule** (RAE v1, Sec. 4): the network that produces the prediction must be at least as wide as a token
  (``C``). With the DDT head that network is the head: RAE's own DiT-DH-S runs a 384-wide trunk on 768-d DINOv2-B
  tokens with a 2048-wide head, so the rule is enforced on ``head_width``, not on the trunk.
* Labels: ``0 .. num_classes - 1``; ``num_classes`` is the null (unconditional) class used by label dropout and
  classifier-free guidance, so the embedding table has ``num_classes + 1`` rows for any number of classes.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from lightning_papers.methods.rae.dit_blocks import DiTBlock, FinalLayer, FourierTimeEmbedding, RoPE2D


@dataclass
class DiTConfig:
    """Sizes and options of DiT-DH.

    Defaults are the CPU "xs" size; ``build_dit_config`` gives the paper's sizes (RAE v1 configs
    ``DiTDH-S``/``DiTDH-XL``: trunk 12x384 / 28x1152, head 2x2048 with 16 heads; RAEv2 XL: trunk 28x1440 with 20
    heads, IG head after block 8, 4 time + 8 class tokens, x-prediction).
    """

    depth: int = 3
    width: int = 64
    heads: int = 4
    head_depth: int = 2
    head_width: int = 128
    head_heads: int = 4
    mlp_ratio: float = 4.0
    conditioning: Literal["in_context", "adaln"] = "in_context"
    num_time_tokens: int = 4
    num_class_tokens: int = 8
    ig_head: bool = True
    ig_depth: int | None = None  # None: round(depth / 3), at least 1
    prediction: Literal["x", "v"] = "x"

    def __post_init__(self) -> None:
        for name in ("depth", "width", "heads", "head_depth", "head_width", "head_heads"):
            if getattr(self, name) < 1:
                raise ValueError(f"DiTConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.conditioning not in ("in_context", "adaln"):
            raise ValueError(f"conditioning must be 'in_context' or 'adaln', got {self.conditioning!r}")
        if self.prediction not in ("x", "v"):
            raise ValueError(f"prediction must be 'x' or 'v', got {self.prediction!r}")
        if self.conditioning == "in_context" and (self.num_time_tokens < 1 or self.num_class_tokens < 1):
            raise ValueError(
                "in-context conditioning needs >= 1 time and class token, got "
                f"num_time_tokens={self.num_time_tokens}, num_class_tokens={self.num_class_tokens}"
            )
        for width, heads in ((self.width, self.heads), (self.head_width, self.head_heads)):
            if width % heads != 0 or (width // heads) % 4 != 0:
                raise ValueError(f"width {width} with {heads} heads: head dim must be an integer divisible by 4")
        if self.ig_depth is not None and not 1 <= self.ig_depth <= self.depth:
            raise ValueError(f"ig_depth must lie in [1, depth={self.depth}], got {self.ig_depth}")

    @property
    def resolved_ig_depth(self) -> int:
        """Trunk block whose output feeds the IG head (1-based)."""
        return self.ig_depth if self.ig_depth is not None else max(1, round(self.depth / 3))


# RAE v1's DiT-DH: a 2 x 2048 DDT head (16 heads), adaLN conditioning, v-prediction, no IG head
_V1 = dict(head_depth=2, head_width=2048, head_heads=16, conditioning="adaln", ig_head=False, prediction="v")
_SIZES: dict[str, dict[str, object]] = {
    # CPU sizes (tests, debug configs; "s" is the small-scale protocol: trunk = RAE's S, head narrowed to 512)
    "xs": dict(depth=3, width=64, heads=4, head_depth=2, head_width=128, head_heads=4, ig_depth=1),
    "s": dict(depth=12, width=384, heads=6, head_depth=2, head_width=512, head_heads=8, ig_depth=4),
    # RAE v1 DiT-DH-S (configs/stage2/training/ImageNet256/DiTDH-S_DINOv2-B.yaml of the v1 release)
    "s_v1": dict(depth=12, width=384, heads=6, **_V1),
    "b": dict(depth=12, width=768, heads=12, head_depth=2, head_width=2048, head_heads=16, ig_depth=4),
    # RAEv2 XL (DiTwDDTHeadIG: hidden [1440, 2048], depth [28, 2], heads [20, 16], base_model_depth 8)
    "xl": dict(depth=28, width=1440, heads=20, head_depth=2, head_width=2048, head_heads=16, ig_depth=8),
    # RAE v1 DiT-DH-XL (hidden [1152, 2048], depth [28, 2], heads [16, 16], adaLN, v-prediction)
    "xl_v1": dict(depth=28, width=1152, heads=16, **_V1),
}


def build_dit_config(name: str, **overrides: object) -> DiTConfig:
    """DiT-DH size by name (``xs``, ``s``, ``s_v1``, ``b``, ``xl``, ``xl_v1``); keyword overrides replace fields."""
    if name not in _SIZES:
        raise ValueError(f"unknown DiT-DH size {name!r}; choose one of {sorted(_SIZES)}")
    return dataclasses.replace(DiTConfig(**_SIZES[name]), **overrides)  # type: ignore[arg-type]


class DiTOutput(NamedTuple):
    """Predictions of the full network and of the IG (base) head; ``base`` is None when the IG head is off."""

    full: torch.Tensor
    base: torch.Tensor | None


class DiTDH(nn.Module):
    """DiT with a DDT head (and optionally RAEv2's IG head) predicting x or v from ``(x_t, t, y)``.

    Args:
        latent_shape: ``(C, h, w)`` of the latents.
        num_classes: number of real classes; label ``num_classes`` is the null class.
        config: sizes and options (``build_dit_config``).
    """

    def __init__(self, latent_shape: tuple[int, int, int], num_classes: int, config: DiTConfig | None = None) -> None:
        super().__init__()
        config = config if config is not None else DiTConfig()
        if len(latent_shape) != 3 or min(latent_shape) < 1:
            raise ValueError(f"latent_shape must be (C, h, w) with positive entries, got {latent_shape}")
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        channels, h, w = (int(v) for v in latent_shape)
        if config.head_width < channels:
            raise ValueError(
                f"DiT-DH head width {config.head_width} is smaller than the latent token dimension {channels}; "
                "RAE's width rule needs width >= token dimension (raise head_width or pick a larger size)"
            )
        self.config = config
        self.latent_shape = (channels, h, w)
        self.num_classes = num_classes
        self.null_class = num_classes
        self.prediction = config.prediction
        width, head_width = config.width, config.head_width
        in_context = config.conditioning == "in_context"
        num_extra = config.num_time_tokens + config.num_class_tokens if in_context else 0

        self.trunk_embed = nn.Linear(channels, width)
        self.head_embed = nn.Linear(channels, head_width)
        self.time_embed = FourierTimeEmbedding(width)
        self.class_embed = nn.Embedding(num_classes + 1, width)
        if in_context:
            self.time_tokens = nn.Parameter(torch.randn(config.num_time_tokens, width) / width**0.5)
            self.class_tokens = nn.Parameter(torch.randn(config.num_class_tokens, width) / width**0.5)
        self.trunk = nn.ModuleList(
            DiTBlock(width, config.heads, config.mlp_ratio, modulated=not in_context) for _ in range(config.depth)
        )
        self.to_head = nn.Linear(width, head_width) if width != head_width else nn.Identity()
        self.head = nn.ModuleList(
            DiTBlock(head_width, config.head_heads, config.mlp_ratio, modulated=True) for _ in range(config.head_depth)
        )
        self.final = FinalLayer(head_width, channels)
        self.base_final = FinalLayer(width, channels) if config.ig_head else None
        self.trunk_rope = RoPE2D(width // config.heads, (h, w), num_extra)
        self.head_rope = RoPE2D(head_width // config.head_heads, (h, w), 0)
        self._init_weights()

    @property
    def has_ig_head(self) -> bool:
        return self.base_final is not None

    def _init_weights(self) -> None:
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)
        nn.init.normal_(self.class_embed.weight, std=0.02)
        nn.init.normal_(self.time_embed.mlp[0].weight, std=0.02)
        nn.init.normal_(self.time_embed.mlp[2].weight, std=0.02)
        for block in [*self.trunk, *self.head]:
            if block.modulation is not None:
                nn.init.zeros_(block.modulation[-1].weight)
                nn.init.zeros_(block.modulation[-1].bias)
        self.final.zero_init()
        if self.base_final is not None:
            self.base_final.zero_init()

    def check_labels(self, y: torch.Tensor) -> None:
        """Labels must be in ``[0, num_classes]`` (``num_classes`` = null class)."""
        if y.dtype not in (torch.int64, torch.int32):
            raise ValueError(f"labels must be int64 class ids, got dtype {y.dtype}")
        if not y.numel():
            return
        lo, hi = torch.stack([y.min(), y.max()]).tolist()  # one device sync
        if lo < 0 or hi > self.null_class:
            bad = lo if lo < 0 else hi
            raise ValueError(
                f"class id {bad} is outside [0, {self.num_classes - 1}] and is not the null id {self.null_class}"
            )

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> DiTOutput:
        """``x_t [B, C, h, w]``, ``t [B]`` in [0, 1], ``y [B]`` int64 -> ``DiTOutput(full, base)``, each like x_t."""
        if tuple(x_t.shape[1:]) != self.latent_shape:
            raise ValueError(f"x_t must have shape [B, *{self.latent_shape}], got {tuple(x_t.shape)}")
        b = x_t.shape[0]
        if t.shape != (b,) or y.shape != (b,):
            raise ValueError(f"t and y must have shape [{b}], got {tuple(t.shape)} and {tuple(y.shape)}")
        tokens = x_t.flatten(2).transpose(1, 2)  # [B, N, C], row-major over (h, w)
        n = tokens.shape[1]
        t_emb = self.time_embed(t)
        y_emb = self.class_embed(y)
        seq = self.trunk_embed(tokens)
        cond = None
        if self.config.conditioning == "in_context":
            extra = torch.cat([self.time_tokens + t_emb[:, None], self.class_tokens + y_emb[:, None]], dim=1)
            seq = torch.cat([seq, extra], dim=1)
        else:
            cond = (t_emb + y_emb)[:, None]
        hidden_base = None
        for i, block in enumerate(self.trunk):
            seq = block(seq, self.trunk_rope, cond)
            if i + 1 == self.config.resolved_ig_depth:
                hidden_base = seq[:, :n]
        s = self.to_head(F.silu(t_emb[:, None] + seq[:, :n]))  # per-token condition of the head
        z = self.head_embed(tokens)
        for block in self.head:
            z = block(z, self.head_rope, s)
        full = self._to_grid(self.final(z, s))
        base = None
        if self.base_final is not None and hidden_base is not None:
            hb = F.silu(t_emb[:, None] + hidden_base)
            base = self._to_grid(self.base_final(hb, hb))
        return DiTOutput(full, base)

    def _to_grid(self, tokens: torch.Tensor) -> torch.Tensor:
        c, h, w = self.latent_shape
        return tokens.transpose(1, 2).reshape(tokens.shape[0], c, h, w)
