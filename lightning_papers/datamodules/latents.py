"""A dataset encoded once into a memory-mapped latent cache, and ``LatentCacheDataModule`` serving it.

A latent diffusion model trained on a frozen encoder's latents should never run the encoder per step: the
encoder costs more than the small diffusion models of a laptop run, and re-encoding every epoch repeats the same
work (fast-DiT keeps all pre-encoded latents in one array for this reason). ``write_latent_cache`` encodes a loader
chunk by chunk without gradients, on whatever device the encoder lives, and writes one folder:

    latents.npy   float32 [N, C, h, w], **normalised** per element, (z - mean) / sqrt(var + eps) (a .npy memmap)
    labels.npy    int64 [N]
    stats.pt      the normaliser's state dict (plain tensors: ``mean``, ``var`` per element, float64; ``count``)
    meta.json     {"encoder", "layers", "latent_shape", "image_size", "num_classes", "split", "num_items",
                   "norm_eps", ...}

The folder is written under ``<path>.partial`` and renamed when complete, so a crashed write never leaves a
half cache behind. Statistics either come fitted (a normaliser of the training split, reused for the validation
split) or are fitted in the same encoder pass (``fit_stats=True``: raw latents go to the memmap while exact
statistics accumulate, then the memmap is normalised in place chunk by chunk). Either way every cached latent is
``normalize(encoder(images).cpu())`` of its batch, bit for bit.

This module imports nothing from ``lightning_papers.methods``: a normaliser is any object with ``normalize``,
``state_dict`` (and ``update`` to fit), or a mapping of ``mean``/``var`` tensors (standardised by
:func:`standardize`, the same arithmetic RAE's ``LatentStatistics.normalize`` uses).
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from lightning.pytorch import LightningDataModule
from torch import Tensor
from torch.utils.data import DataLoader, Dataset
from typing_extensions import override

from lightning_papers.datamodules.jsonl_text import EpochSampler, ResumableLoader

FILES = ("latents.npy", "labels.npy", "stats.pt", "meta.json")


def _work_dtype(device: torch.device) -> torch.dtype:
    return torch.float32 if device.type == "mps" else torch.float64  # MPS has no float64


def standardize(z: Tensor, mean: Tensor, var: Tensor, eps: float = 1e-6) -> Tensor:
    """``(z - mean) / sqrt(var + eps)`` per element, computed in float64 (float32 on MPS), returned as float32."""
    dt = _work_dtype(z.device)
    scale = torch.rsqrt(var.detach().double() + eps).to(device=z.device, dtype=dt)
    return ((z.to(dt) - mean.detach().to(device=z.device, dtype=dt)) * scale).float()


def destandardize(z: Tensor, mean: Tensor, var: Tensor, eps: float = 1e-6) -> Tensor:
    """The inverse of :func:`standardize`: ``z * sqrt(var + eps) + mean``, computed as it, returned as float32."""
    dt = _work_dtype(z.device)
    std = torch.sqrt(var.detach().double() + eps).to(device=z.device, dtype=dt)
    return (z.to(dt) * std + mean.detach().to(device=z.device, dtype=dt)).float()


class LatentNormalizer(Protocol):
    """What the cache needs of a normaliser (RAE's ``LatentStatistics`` is one)."""

    def normalize(self, z: Tensor, eps: float = 1e-6) -> Tensor: ...

    def state_dict(self) -> dict[str, Any]: ...


@dataclass
class LatentCache:
    """An opened cache: ``latents`` (read-only np.memmap ``[N, C, h, w]``), ``labels``, ``meta``, ``stats_state``."""

    path: Path
    latents: np.ndarray
    labels: np.ndarray
    meta: dict[str, Any]
    stats_state: dict[str, Any]

    @classmethod
    def open(cls, path: str | Path) -> LatentCache:
        path = Path(path)
        missing = [f for f in FILES if not (path / f).is_file()]
        if missing:
            raise FileNotFoundError(f"{str(path)!r} is not a latent cache (missing {missing}); write one with "
                                    "`python -m lightning_papers.methods.rae.cache --config ...`")  # fmt: skip
        latents = np.load(path / "latents.npy", mmap_mode="r")
        labels = np.load(path / "labels.npy")
        meta = json.loads((path / "meta.json").read_text())
        if latents.shape[0] != labels.shape[0] or list(latents.shape[1:]) != list(meta["latent_shape"]):
            raise ValueError(f"{str(path)!r}: latents {latents.shape}, labels {labels.shape} and meta latent_shape "
                             f"{meta['latent_shape']} disagree")  # fmt: skip
        stats = torch.load(path / "stats.pt", map_location="cpu", weights_only=True)
        return cls(path, latents, labels, meta, stats)

    def __len__(self) -> int:
        return int(self.labels.shape[0])


def _stats_parts(stats: LatentNormalizer | Mapping[str, Tensor]) -> tuple[Callable[[Tensor, float], Tensor], dict]:
    if isinstance(stats, Mapping):
        if "mean" not in stats or "var" not in stats:
            raise ValueError(f"a statistics mapping needs 'mean' and 'var' tensors, got keys {sorted(stats)}")
        return (lambda z, eps: standardize(z, stats["mean"], stats["var"], eps)), dict(stats)
    return (lambda z, eps: stats.normalize(z, eps=eps)), stats.state_dict()


def write_latent_cache(
    encoder: Callable[[Tensor], Tensor],
    loader: Iterable[tuple[Tensor, Tensor]],
    stats: LatentNormalizer | Mapping[str, Tensor],
    path: str | Path,
    meta: dict[str, Any],
    fit_stats: bool = False,
    num_items: int | None = None,
    device: str | torch.device | None = None,
    eps: float = 1e-6,
    overwrite: bool = False,
) -> LatentCache:
    """Encode every ``(images, labels)`` batch of ``loader`` once (no grad) and write a normalised latent cache.

    Args:
        encoder: Maps images ``[B, 3, H, W]`` to latents ``[B, C, h, w]`` (e.g. a ``RepresentationEncoder``).
        loader: Yields ``(images, labels)`` in the order the cache stores them.
        stats: A fitted normaliser, or with ``fit_stats`` a fresh one with ``update``; or ``{"mean", "var"}``.
        path: The cache folder to create.
        meta: Stored in ``meta.json`` (``encoder``, ``layers``, ``image_size``, ``num_classes``, ``split``, ...);
            ``latent_shape``, ``num_items`` and ``norm_eps`` are added, ``num_classes`` defaults to max label + 1.
        fit_stats: Fit ``stats`` on this data in the same pass (``stats.update`` per batch) before normalising.
        num_items: Number of items the loader yields; None = ``len(loader.dataset)``.
        device: Where images go before the encoder; None = the encoder's parameters' device (CPU if none).
        eps: Added to the variance in the normalisation.
        overwrite: Replace an existing folder at ``path``.
    """
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"latent cache {str(path)!r} exists (pass overwrite=True to replace it)")
    if num_items is None:
        if not hasattr(loader, "dataset"):
            raise ValueError("num_items is needed when the loader has no .dataset to take the length from")
        num_items = len(loader.dataset)  # type: ignore[attr-defined]
    if fit_stats and not hasattr(stats, "update"):
        raise ValueError(f"fit_stats=True needs a normaliser with update(), got {type(stats).__name__}")
    if device is None:
        first = None
        if isinstance(encoder, torch.nn.Module):
            first = next(itertools.chain(encoder.parameters(), encoder.buffers()), None)
        device = first.device if first is not None else torch.device("cpu")
    tmp = path.with_name(path.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        _write(encoder, loader, stats, tmp, meta, fit_stats, num_items, torch.device(device), eps)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if path.exists():
        shutil.rmtree(path)
    os.replace(tmp, path)
    return LatentCache.open(path)


def _write(
    encoder: Callable[[Tensor], Tensor],
    loader: Iterable[tuple[Tensor, Tensor]],
    stats: LatentNormalizer | Mapping[str, Tensor],
    tmp: Path,
    meta: dict[str, Any],
    fit_stats: bool,
    num_items: int,
    device: torch.device,
    eps: float,
) -> None:
    normalize, _ = _stats_parts(stats)
    latents, labels, filled = None, np.empty(num_items, dtype=np.int64), 0
    with torch.no_grad():
        for images, y in loader:
            z = encoder(images.to(device)).detach().float().cpu()
            b = z.shape[0]
            if filled + b > num_items:
                raise ValueError(f"the loader yielded more than num_items={num_items} items")
            if latents is None:
                latents = np.lib.format.open_memmap(tmp / "latents.npy", "w+", np.float32, (num_items, *z.shape[1:]))
            if fit_stats:
                stats.update(z)  # type: ignore[union-attr]
            latents[filled : filled + b] = (z if fit_stats else normalize(z, eps)).numpy()
            labels[filled : filled + b] = y.cpu().numpy()
            filled += b
        if filled != num_items or latents is None:
            raise ValueError(f"the loader yielded {filled} items, expected num_items={num_items}")
        if fit_stats:  # raw latents are in the memmap: normalise them in place, chunk by chunk
            chunk = max(1, (1 << 24) // int(np.prod(latents.shape[1:])))
            for a in range(0, num_items, chunk):
                latents[a : a + chunk] = normalize(torch.from_numpy(np.array(latents[a : a + chunk])), eps).numpy()
        latents.flush()
        shape = list(latents.shape[1:])
        del latents
    _, state = _stats_parts(stats)
    np.save(tmp / "labels.npy", labels)
    torch.save(state, tmp / "stats.pt")
    info = {"num_classes": int(labels.max()) + 1 if num_items else 0, **meta}
    info.update(latent_shape=shape, num_items=num_items, norm_eps=eps)
    (tmp / "meta.json").write_text(json.dumps(info, indent=1, default=str))


class LatentArrayDataset(Dataset):
    """``(latent float32 [C, h, w], label int64)`` items of a cache folder at ``indices`` (memmap opened lazily per
    process, so worker processes never pickle the array; ``__getitems__`` reads a batch in one fancy index)."""

    def __init__(self, root: str | Path, indices: np.ndarray) -> None:
        self.root, self.indices = Path(root), np.asarray(indices, dtype=np.int64)
        self._latents: np.ndarray | None = None
        self._labels = np.load(self.root / "labels.npy")

    def __len__(self) -> int:
        return len(self.indices)

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_latents": None}

    def _array(self) -> np.ndarray:
        if self._latents is None:
            self._latents = np.load(self.root / "latents.npy", mmap_mode="r")
        return self._latents

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor]:
        j = self.indices[i]
        return torch.from_numpy(np.array(self._array()[j])), torch.tensor(self._labels[j])

    def __getitems__(self, items: list[int]) -> list[tuple[Tensor, Tensor]]:
        rows = self.indices[np.asarray(items, dtype=np.int64)]
        order = np.argsort(rows, kind="stable")  # increasing reads are kinder to the page cache
        block = np.empty((len(rows), *self._array().shape[1:]), dtype=np.float32)
        block[order] = self._array()[rows[order]]
        z = torch.from_numpy(block)
        return [(z[k], torch.tensor(self._labels[r])) for k, r in enumerate(rows)]


class LatentCacheDataModule(LightningDataModule):
    """Serves a latent cache: batches ``(latent float32 [B, C, h, w] normalised, label int64 [B])``.

    Args:
        root: The cache folder (see the module docstring).
        batch_size: Latents per batch (per device).
        val_fraction: Fraction of the cache held out for validation (a seeded random subset); 0 = none.
        val_root: A second cache folder (e.g. the validation split) served by ``val_dataloader`` instead.
        seed: Seed of the held-out subset and of the epochs' shuffling orders (saved in checkpoints: a resumed
            run continues mid-epoch with the same order).
        num_workers: DataLoader workers.
        shuffle: Shuffle the training latents every epoch.
    """

    def __init__(
        self,
        root: str,
        batch_size: int = 64,
        val_fraction: float = 0.0,
        val_root: str | None = None,
        seed: int = 0,
        num_workers: int = 0,
        shuffle: bool = True,
    ) -> None:
        super().__init__()
        if batch_size < 1 or num_workers < 0:
            raise ValueError(f"batch_size must be >= 1 and num_workers >= 0, got {batch_size} and {num_workers}")
        if not 0.0 <= val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
        if val_fraction > 0 and val_root is not None:
            raise ValueError(f"give val_fraction={val_fraction} or val_root={val_root!r}, not both")
        self.save_hyperparameters()
        self._cache: LatentCache | None = None  # opened on first use (a config parses before the cache exists)
        self.train_set: LatentArrayDataset | None = None
        self.val_set: LatentArrayDataset | None = None

    @property
    def cache(self) -> LatentCache:
        """The opened training cache (opened on first access)."""
        if self._cache is None:
            self._cache = LatentCache.open(self.hparams.root)
        return self._cache

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        """``(C, h, w)`` of one latent."""
        return tuple(self.cache.meta["latent_shape"])  # type: ignore[return-value]

    @property
    def num_classes(self) -> int:
        return int(self.cache.meta["num_classes"])

    @property
    def meta(self) -> dict[str, Any]:
        return self.cache.meta

    @property
    def stats_state(self) -> dict[str, Any]:
        """The normaliser's state dict (plain tensors ``mean``, ``var``, ...) the cache was normalised with."""
        return self.cache.stats_state

    def denormalize(self, z: Tensor) -> Tensor:
        """Cached (normalised) latents back to the encoder's scale, e.g. for a decoder."""
        eps = float(self.cache.meta.get("norm_eps", 1e-6))
        return destandardize(z, self.stats_state["mean"], self.stats_state["var"], eps)

    @override
    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        hp, n = self.hparams, len(self.cache)
        order = np.arange(n)
        n_val = 0
        if hp.val_fraction > 0:
            order = torch.randperm(n, generator=torch.Generator().manual_seed(hp.seed)).numpy()
            n_val = max(1, round(hp.val_fraction * n))
            if n_val >= n:
                raise ValueError(f"val_fraction={hp.val_fraction} leaves no training latents out of {n}")
            self.val_set = LatentArrayDataset(hp.root, np.sort(order[:n_val]))
        elif hp.val_root is not None:
            val = LatentCache.open(hp.val_root)
            if list(val.meta["latent_shape"]) != list(self.latent_shape):
                raise ValueError(f"val_root latents {val.meta['latent_shape']} differ from root's {self.latent_shape}")
            self.val_set = LatentArrayDataset(hp.val_root, np.arange(len(val)))
        self.train_set = LatentArrayDataset(hp.root, np.sort(order[n_val:]))

    @override
    def train_dataloader(self) -> ResumableLoader:
        hp = self.hparams
        assert self.train_set is not None, "call setup() first"
        state = torch.Generator().manual_seed(hp.seed).get_state()
        world_size, rank = 1, 0
        if self.trainer is not None:
            world_size, rank = self.trainer.world_size, self.trainer.global_rank
        sampler = EpochSampler(len(self.train_set), hp.shuffle, state, num_replicas=world_size, rank=rank)
        return ResumableLoader(self.train_set, sampler, batch_size=hp.batch_size, num_workers=hp.num_workers)

    @override
    def val_dataloader(self) -> DataLoader | list:
        if self.val_set is None:
            return []
        return DataLoader(self.val_set, batch_size=self.hparams.batch_size, num_workers=self.hparams.num_workers)
