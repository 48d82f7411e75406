"""ShiftingImageDataModule: the schedule, the corruptions against closed forms, determinism, the digits fallback."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch

from lightning_papers.datamodules.shifting_images import ShiftingImageDataModule, corrupt


def test_corruptions_match_closed_forms() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.rand(4, 1, 8, 8, generator=g)
    zero, one = torch.zeros(4), torch.ones(4)
    for kind in ("none", "rotation", "blur", "noise", "contrast"):
        torch.testing.assert_close(corrupt(x, kind, zero, g), x, atol=1e-5, rtol=0)  # severity 0: unchanged
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    torch.testing.assert_close(corrupt(x, "contrast", one, g), mean + 0.2 * (x - mean))
    flat = torch.full((2, 1, 9, 9), 0.5)
    blurred = corrupt(flat, "blur", torch.ones(2), g)
    torch.testing.assert_close(blurred[..., 3:6, 3:6], flat[..., 3:6, 3:6])  # a normalised kernel keeps constants
    assert corrupt(x, "noise", one, g).sub(x).std() > 0.2
    point = torch.zeros(1, 1, 9, 9)
    point[0, 0, 4, 1] = 1.0  # left of the centre: a rotation by ±60° moves it off its row
    assert corrupt(point, "rotation", torch.ones(1), g)[0, 0, 4, 1] < 0.5
    with pytest.raises(ValueError, match="'shear'"):
        corrupt(x, "shear", one, g)


def test_piecewise_and_drift_schedules_on_digits(caplog: pytest.LogCaptureFixture, tmp_path: Path) -> None:
    kw = dict(n_train=600, n_clean=200, n_stream=500, data_dir=str(tmp_path), batch_size=100)
    with caplog.at_level(logging.INFO):
        dm = ShiftingImageDataModule(corruptions=("none", "noise"), severity=1.0, **kw)
        dm.setup()
    assert dm.dataset_name == "digits" and "using scikit-learn's 8x8 digits" in caplog.text
    np.testing.assert_array_equal(dm.segment, np.repeat([0, 1], 250))
    x, y = dm.stream_set.tensors
    assert x.shape == (500, 1, 8, 8) and dm.image_shape == (1, 8, 8)
    again = ShiftingImageDataModule(corruptions=("none", "noise"), severity=1.0, **kw)
    again.setup()
    torch.testing.assert_close(again.stream_set.tensors[0], x)  # one seed, one stream
    batches = list(dm.val_dataloader())
    torch.testing.assert_close(torch.cat([b[1] for b in batches]), y)  # served in order
    clean_pool = torch.cat([dm.train_set.tensors[0], dm.clean_set.tensors[0]])
    assert torch.all(x[:250] <= 1) and (x[250:] - x[250:].round(decimals=4)).abs().max() > 0  # noise segment
    assert clean_pool.reshape(-1).unique().numel() <= 17  # clean digits keep their 17 grey levels

    drift = ShiftingImageDataModule(schedule="drift", drift_corruption="contrast", severity=0.5, **kw)
    drift.setup()
    np.testing.assert_allclose(drift.stream_severity, 0.5 * np.arange(500) / 499)
    assert drift.segment_names == ["contrast"]

    with pytest.raises(FileNotFoundError, match="dataset-fashion-mnist"):
        ShiftingImageDataModule(source="fashion_mnist", **kw).setup()
    with pytest.raises(ValueError, match="exceeds the 1797 digits images"):
        ShiftingImageDataModule(source="digits", n_train=2000).setup()
    with pytest.raises(ValueError, match="'blurr'"):
        ShiftingImageDataModule(corruptions=("blurr",))
