"""The pixel-space baseline: pixel patches as latents, written to a cache and decoded back exactly."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from lightning_papers.datamodules.latents import write_latent_cache
from lightning_papers.methods.rae.dit_module import statistics_fingerprint
from lightning_papers.methods.rae.evaluation import SampleEvaluator
from lightning_papers.methods.rae.normalizer import LatentStatistics
from lightning_papers.methods.rae.pixels import PixelPatches, PixelTokenizer


def test_patches_are_the_image_blocks() -> None:
    images = torch.rand(2, 3, 8, 8)
    z = PixelPatches(4, 8)(images)
    assert z.shape == (2, 48, 2, 2)
    # token (i, j) holds the 4 x 4 block at rows 4i.., columns 4j.. of every channel
    block = images[1, :, 4:8, 0:4].reshape(3, 16)
    assert torch.equal(z[1, :, 1, 0].reshape(3, 16), block)


def test_cache_round_trip_and_evaluator_decodes_pixels(tmp_path: Path) -> None:
    g = torch.Generator().manual_seed(0)
    images = torch.rand(20, 3, 8, 8, generator=g)
    images[:, :, 0, :] = 0.25  # a constant row: zero variance must still decode exactly
    labels = torch.arange(20) % 2
    loader = DataLoader(TensorDataset(images, labels), batch_size=6)
    enc = PixelPatches(2, 8)
    meta = {"encoder": enc.model_name, "layers": [], "image_size": 8, "num_classes": 2, "pixel_patch": 2}
    cache = write_latent_cache(enc, loader, LatentStatistics(enc.latent_shape), tmp_path / "train", meta,
                               fit_stats=True)  # fmt: skip
    z = torch.from_numpy(np.array(cache.latents))
    assert z.mean((0,)).abs().max() < 1e-5  # per-element standardised
    tok = PixelTokenizer(cache.stats_state, 2, cache.meta["norm_eps"])
    assert torch.allclose(tok.decode(z), images, atol=1e-5)
    ev = SampleEvaluator.from_folder(tmp_path, json.loads((tmp_path / "train" / "meta.json").read_text()),
                                     statistics_fingerprint(cache.stats_state))  # fmt: skip
    assert torch.allclose(ev.decode(z), images, atol=1e-5)


def test_bad_patch_and_shapes_fail_naming_the_value() -> None:
    with pytest.raises(ValueError, match="patch size 3"):
        PixelPatches(3, 8)
    with pytest.raises(ValueError, match=r"\[B, 3, 8, 8\]"):
        PixelPatches(2, 8)(torch.rand(1, 1, 8, 8))
    state = {"mean": torch.zeros(12, 4, 4), "var": torch.ones(12, 4, 4)}
    with pytest.raises(ValueError, match="12 channels"):
        PixelTokenizer(state, 4)
    with pytest.raises(ValueError, match="do not match"):
        PixelTokenizer(state, 2).decode(torch.zeros(1, 12, 2, 2))
