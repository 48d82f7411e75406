"""Latent cache: bit-for-bit the normalised encoder output, exact statistics, and a resumable datamodule over it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from lightning_papers.datamodules.latents import LatentCache, LatentCacheDataModule, standardize, write_latent_cache
from lightning_papers.methods.rae.encoder import RepresentationEncoder
from lightning_papers.methods.rae.normalizer import LatentStatistics

SMALL = {"depth": 2, "embed_dim": 16, "num_heads": 2}
META = {"encoder": "rae_vit_tiny", "layers": [0, 1], "image_size": 32, "num_classes": 3, "split": "train"}


@pytest.fixture(scope="module")
def setup_data() -> tuple[RepresentationEncoder, DataLoader]:
    torch.manual_seed(0)
    enc = RepresentationEncoder("rae_vit_tiny", layers=2, model_kwargs=SMALL)
    g = torch.Generator().manual_seed(0)
    images, labels = torch.rand(37, 3, 32, 32, generator=g), torch.randint(0, 3, (37,), generator=g)
    return enc, DataLoader(TensorDataset(images, labels), batch_size=8)  # uneven last batch


def reference(enc: RepresentationEncoder, loader: DataLoader, stats: LatentStatistics) -> torch.Tensor:
    return torch.cat([stats.normalize(enc(x)) for x, _ in loader])  # batch by batch, as the cache encodes


def test_fitted_in_one_pass_is_bit_exact(setup_data: tuple, tmp_path: Path) -> None:
    enc, loader = setup_data
    stats = LatentStatistics(enc.latent_shape)
    cache = write_latent_cache(enc, loader, stats, tmp_path / "c", META, fit_stats=True)
    raw = torch.cat([enc(x) for x, _ in loader]).double()
    torch.testing.assert_close(stats.mean, raw.mean(0), rtol=1e-12, atol=1e-12)  # exact over the whole split
    torch.testing.assert_close(stats.var, raw.var(0, unbiased=False), rtol=1e-10, atol=1e-12)
    assert torch.equal(torch.from_numpy(np.array(cache.latents)), reference(enc, loader, stats))
    assert np.array_equal(cache.labels, loader.dataset.tensors[1].numpy())
    assert isinstance(cache.latents, np.memmap) and cache.latents.dtype == np.float32
    meta = json.loads((tmp_path / "c" / "meta.json").read_text())
    assert meta["latent_shape"] == [16, 8, 8] and meta["num_items"] == 37 and meta["split"] == "train"
    assert torch.equal(cache.stats_state["var"], stats.var) and not (tmp_path / "c.partial").exists()


def test_prefitted_stats_and_plain_mean_var_give_the_same_cache(setup_data: tuple, tmp_path: Path) -> None:
    enc, loader = setup_data
    stats = LatentStatistics(enc.latent_shape)
    for x, _ in loader:
        stats.update(enc(x))
    a = write_latent_cache(enc, loader, stats, tmp_path / "a", META)
    b = write_latent_cache(enc, loader, {"mean": stats.mean, "var": stats.var}, tmp_path / "b", META)
    want = reference(enc, loader, stats)
    assert torch.equal(torch.from_numpy(np.array(a.latents)), want)
    assert torch.equal(torch.from_numpy(np.array(b.latents)), want)
    z = torch.randn(2, 16, 8, 8)
    assert torch.equal(standardize(z, stats.mean, stats.var), stats.normalize(z))


def test_cache_errors(setup_data: tuple, tmp_path: Path) -> None:
    enc, loader = setup_data
    stats = LatentStatistics(enc.latent_shape)
    with pytest.raises(ValueError, match="update"):
        write_latent_cache(enc, loader, {"mean": stats.mean, "var": stats.mean}, tmp_path / "x", META, fit_stats=True)
    with pytest.raises(ValueError, match="num_items=40"):
        write_latent_cache(enc, loader, stats, tmp_path / "x", META, fit_stats=True, num_items=40)
    assert not (tmp_path / "x").exists() and not (tmp_path / "x.partial").exists()  # nothing half-written is left
    write_latent_cache(enc, loader, LatentStatistics(enc.latent_shape), tmp_path / "y", META, fit_stats=True)
    with pytest.raises(FileExistsError, match="y"):
        write_latent_cache(enc, loader, stats, tmp_path / "y", META)
    with pytest.raises(FileNotFoundError, match="latents.npy"):
        LatentCache.open(tmp_path / "nowhere")


def test_datamodule_serves_the_cache_and_resumes_mid_epoch(setup_data: tuple, tmp_path: Path) -> None:
    enc, loader = setup_data
    stats = LatentStatistics(enc.latent_shape)
    cache = write_latent_cache(enc, loader, stats, tmp_path / "c", META, fit_stats=True)
    dm = LatentCacheDataModule(str(tmp_path / "c"), batch_size=5, val_fraction=0.2, seed=3)
    dm.setup("fit")
    assert dm.latent_shape == (16, 8, 8) and dm.num_classes == 3 and set(dm.stats_state) >= {"mean", "var"}
    train_idx, val_idx = dm.train_set.indices, dm.val_set.indices
    assert len(val_idx) == 7 and sorted([*train_idx, *val_idx]) == list(range(37))
    batches = list(dm.train_dataloader())
    z = torch.cat([b[0] for b in batches])
    y = torch.cat([b[1] for b in batches])
    assert z.dtype == torch.float32 and y.dtype == torch.int64 and z.shape == (30, 16, 8, 8)
    order = dm.train_dataloader().sampler.order(0)  # the epoch's shuffled positions in the training subset
    rows = train_idx[order]
    assert torch.equal(z, torch.from_numpy(np.array(cache.latents[rows])))
    assert torch.equal(y, torch.from_numpy(cache.labels[rows]))
    raw = torch.cat([enc(x) for x, _ in loader])
    torch.testing.assert_close(dm.denormalize(z), raw[rows], rtol=1e-5, atol=1e-5)
    first = dm.train_dataloader()  # stop after 2 of 6 batches, then resume in a fresh loader
    it = iter(first)
    next(it), next(it)
    resumed = dm.train_dataloader()
    resumed.load_state_dict(first.state_dict())
    rest = list(resumed)
    assert len(rest) == 4 and all(torch.equal(a[0], b[0]) for a, b in zip(rest, batches[2:]))
    assert sum(len(b[1]) for b in dm.val_dataloader()) == 7


def test_datamodule_checks_arguments_and_opens_lazily(tmp_path: Path) -> None:
    dm = LatentCacheDataModule(str(tmp_path / "not_yet"))  # a config may name a cache written later
    with pytest.raises(FileNotFoundError, match="not_yet"):
        dm.setup("fit")
    with pytest.raises(ValueError, match="1.5"):
        LatentCacheDataModule(str(tmp_path), val_fraction=1.5)


def test_datamodule_serves_a_separate_validation_cache(setup_data: tuple, tmp_path: Path) -> None:
    enc, loader = setup_data
    stats = LatentStatistics(enc.latent_shape)
    write_latent_cache(enc, loader, stats, tmp_path / "train", META, fit_stats=True)
    val = write_latent_cache(enc, loader, stats, tmp_path / "val", {**META, "split": "val"})  # train stats reused
    dm = LatentCacheDataModule(str(tmp_path / "train"), batch_size=16, val_root=str(tmp_path / "val"))
    dm.setup("fit")
    z = torch.cat([b[0] for b in dm.val_dataloader()])
    assert torch.equal(z, torch.from_numpy(np.array(val.latents)))  # in order, all of it
    with pytest.raises(ValueError, match="val_root"):
        LatentCacheDataModule(str(tmp_path / "train"), val_fraction=0.1, val_root=str(tmp_path / "val"))
