"""Pixel patches as a "latent space": the pixel-space baseline of stage 2 (RAEv2, arXiv 2605.18324, Sec. 4).

RAEv2 compares diffusion in a representation space with the same DiT on raw pixels. Here an image
``[B, 3, S, S]`` becomes the token grid ``[B, 3 p^2, S/p, S/p]`` by ``pixel_unshuffle`` (patch size ``p``), so the
DiT, the transport, the latent cache and the evaluation are exactly those of the RAE runs; only the "encoder" is a
reshape and the "decoder" its inverse. ``python -m lightning_papers.methods.rae.cache --pixels 4`` writes such a
cache; ``SampleEvaluator`` decodes it with :class:`PixelTokenizer` (named by ``pixel_patch`` in the cache's meta).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


def check_patch(patch: int, image_size: int) -> None:
    """Raise ValueError unless ``patch`` is a positive divisor of ``image_size``."""
    if patch < 1 or image_size % patch:
        raise ValueError(f"pixel patch size {patch} must be a positive divisor of the image size {image_size}")


class PixelPatches(nn.Module):
    """The identity "encoder" of the pixel baseline: images in [0, 1] -> non-overlapping ``patch x patch`` tokens."""

    model_name = "pixels"
    block_ids: tuple[int, ...] = ()

    def __init__(self, patch: int, image_size: int) -> None:
        super().__init__()
        check_patch(patch, image_size)
        self.patch, self.image_size = patch, image_size
        self.latent_shape = (3 * patch * patch, image_size // patch, image_size // patch)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.ndim != 4 or tuple(images.shape[1:]) != (3, self.image_size, self.image_size):
            raise ValueError(f"images must have shape [B, 3, {self.image_size}, {self.image_size}], "
                             f"got {tuple(images.shape)}")  # fmt: skip
        return F.pixel_unshuffle(images.float(), self.patch)


class PixelTokenizer:
    """Decode normalised pixel-patch latents back to images (the inverse of :class:`PixelPatches` + normalisation).

    Args:
        stats_state: The cache's normaliser state (``mean``, ``var`` of the patch tokens).
        patch: The patch size the cache was written with.
        eps: The normalisation's epsilon (the cache's ``norm_eps``).
    """

    def __init__(self, stats_state: dict[str, Any], patch: int, eps: float = 1e-6) -> None:
        self.mean = torch.as_tensor(stats_state["mean"]).float()
        self.var = torch.as_tensor(stats_state["var"]).float()
        channels = self.mean.shape[0]
        if channels != 3 * patch * patch:
            raise ValueError(f"latents with {channels} channels are not 3 x {patch}^2 pixel patches")
        self.patch, self.eps = patch, eps

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        return tuple(self.mean.shape)  # type: ignore[return-value]

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Normalised latents ``[B, 3 p^2, h, w]`` -> images ``[B, 3, h p, w p]`` in [0, 1]."""
        from lightning_papers.datamodules.latents import destandardize

        if tuple(latents.shape[1:]) != self.latent_shape:
            raise ValueError(f"latents of shape {tuple(latents.shape[1:])} do not match the pixel tokenizer's "
                             f"{self.latent_shape}")  # fmt: skip
        raw = destandardize(latents.float().cpu(), self.mean, self.var, self.eps)
        return F.pixel_shuffle(raw, self.patch).clamp(0, 1)
