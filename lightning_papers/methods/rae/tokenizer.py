"""A trained RAE as an image tokenizer: encoder + per-element normaliser + decoder from one stage-1 checkpoint.

    tok = RAETokenizer.from_checkpoint("runs/rae/decoder_debug/checkpoints/last.ckpt")
    z = tok.encode(images)      # [B, C, h, w], normalised: what a latent diffusion model trains on
    x = tok.decode(z)           # [B, 3, S, S] in [0, 1]

``RAEDecoderModule`` writes what this needs into its checkpoints (``rae_tokenizer``: the encoder's constructor
arguments and weights file, the decoder size and shapes; ``rae_statistics``; a random encoder's own weights), so no
config is needed. An encoder with a weights file is rebuilt only when ``encode`` is first called (stage 2 only
decodes).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from lightning_papers.methods.rae.decoder import ViTDecoder, build_decoder_config
from lightning_papers.methods.rae.normalizer import LatentStatistics

DECODER_PREFIX = "decoder."


class RAETokenizer(nn.Module):
    """Frozen RAE encoder/normaliser/decoder (see the module docstring)."""

    def __init__(self, decoder: ViTDecoder, statistics: LatentStatistics, encoder_spec: dict[str, Any]) -> None:
        super().__init__()
        self.decoder = decoder.requires_grad_(False).eval()
        self.statistics = statistics
        self.encoder_spec = encoder_spec
        self._encoder: nn.Module | None = None

    @classmethod
    def from_checkpoint(cls, path: str | Path, map_location: str | torch.device = "cpu") -> RAETokenizer:
        """Load from an ``RAEDecoderModule`` checkpoint (its EMA weights when an EMA callback wrote it)."""
        if not Path(path).is_file():
            raise FileNotFoundError(f"RAE checkpoint {str(path)!r} does not exist")
        ckpt = torch.load(path, map_location=map_location, weights_only=False)
        if "rae_tokenizer" not in ckpt or "rae_statistics" not in ckpt:
            raise ValueError(f"{str(path)!r} is not an RAEDecoderModule checkpoint (no rae_tokenizer/rae_statistics)")
        spec = ckpt["rae_tokenizer"]
        channels, grid, _ = spec["latent_shape"]
        decoder = ViTDecoder(channels, grid, spec["image_size"], build_decoder_config(spec["decoder"]))
        state = {k[len(DECODER_PREFIX):]: v for k, v in ckpt["state_dict"].items() if k.startswith(DECODER_PREFIX)}
        decoder.load_state_dict(state)
        stats = LatentStatistics(tuple(spec["latent_shape"]))
        stats.load_state_dict(ckpt["rae_statistics"])
        if stats.count == 0:
            raise ValueError(f"{str(path)!r} holds no latent statistics (saved before the fit started?)")
        tok = cls(decoder, stats, spec["encoder"])
        encoder_state = {k[len("encoder."):]: v for k, v in ckpt["state_dict"].items() if k.startswith("encoder.")}
        if encoder_state:  # a random encoder without a weights file was saved in the checkpoint
            tok.encoder().load_state_dict(encoder_state)
        return tok

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        return tuple(self.statistics.mean.shape)  # type: ignore[return-value]

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Normalised latents ``[B, C, h, w]`` -> images ``[B, 3, S, S]`` in [0, 1]."""
        if tuple(latents.shape[1:]) != self.latent_shape:
            raise ValueError(f"latents of shape {tuple(latents.shape[1:])} do not match the tokenizer's "
                             f"{self.latent_shape}")  # fmt: skip
        device = next(self.decoder.parameters()).device
        raw = self.statistics.denormalize(latents.to(device))
        return self.decoder(raw).clamp(0, 1)

    def encoder(self) -> nn.Module:
        """The frozen encoder, rebuilt from the checkpoint's spec on first use."""
        if self._encoder is None:
            from lightning_papers.methods.rae.encoder import RepresentationEncoder

            spec = dict(self.encoder_spec)
            weights = spec.pop("weights", None)
            if weights is not None and not Path(weights).is_file():
                raise FileNotFoundError(f"the encoder weights {weights!r} named in the checkpoint do not exist")
            self._encoder = RepresentationEncoder(**spec, checkpoint_path=weights)
        return self._encoder

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Images ``[B, 3, S, S]`` in [0, 1] -> normalised latents ``[B, C, h, w]``."""
        encoder = self.encoder().to(images.device)
        return self.statistics.normalize(encoder(images))
