"""Point-cloud datamodules: toys, user NPZ/CSV files, and the Gaussian closed forms (checked by 1-D Sinkhorn)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from lightning_papers.datamodules.point_clouds import (
    TOYS,
    GaussianPairDataModule,
    PointCloudPairDataModule,
    entropic_cross_covariance,
    entropic_ot_cost,
    load_points,
    sample_toy,
    sb_marginal,
)
from lightning_papers.datamodules.step_clock import StepClock
from lightning_papers.methods.qdsb.transport import sinkhorn_plan


@pytest.mark.parametrize("name", TOYS)
def test_toys_have_the_documented_moments(name: str) -> None:
    x = sample_toy(name, 20000, torch.Generator().manual_seed(0))
    assert x.shape == (20000, 2) and torch.isfinite(x).all()
    if name == "8gaussians":
        assert float(x.norm(dim=1).mean()) == pytest.approx(5.0, abs=0.1)
    if name == "gaussian":
        torch.testing.assert_close(x.std(0), torch.full((2,), 1.5), atol=0.03, rtol=0)
    if name == "checkerboard":
        assert float(x.abs().max()) <= 4.0
        cells = (torch.floor(x[:, 0] / 2) + torch.floor(x[:, 1] / 2)) % 2
        assert cells.unique().numel() == 1  # only dark squares
    if name == "moons":
        # half circles average to (0, 2/pi) and (1, 1/2 - 2/pi): mean (1/2, 1/4), then x 3 - 1
        torch.testing.assert_close(x.mean(0), torch.tensor([0.5, -0.25]), atol=0.05, rtol=0)


def test_user_npz_and_csv_files(tmp_path: Path) -> None:
    g = np.random.default_rng(0)
    a, b = g.normal(size=(100, 5)).astype(np.float32), g.normal(size=(80, 5)).astype(np.float32) + 2
    np.savez(tmp_path / "cells.npz", day2=a, day4=b)
    np.savetxt(tmp_path / "b.csv", b, delimiter=",", header="pc1,pc2,pc3,pc4,pc5", comments="")
    np.savetxt(tmp_path / "a.csv", a, delimiter=",")
    torch.testing.assert_close(load_points(tmp_path / "b.csv"), torch.from_numpy(b))
    torch.testing.assert_close(load_points(tmp_path / "a.csv"), torch.from_numpy(a))
    dm = PointCloudPairDataModule(
        str(tmp_path / "cells.npz"), str(tmp_path / "cells.npz"), source_key="day2", target_key="day4",
        val_fraction=0.25,
    )
    dm.setup("fit")
    assert dm.train_source.shape == (75, 5) and dm.val_source.shape == (25, 5)
    assert dm.train_target.shape == (60, 5) and dm.val_target.shape == (20, 5)
    # the split is a partition of the file's rows
    both = torch.cat([dm.train_source, dm.val_source])
    torch.testing.assert_close(both[both[:, 0].argsort()], torch.from_numpy(a)[torch.from_numpy(a)[:, 0].argsort()])
    assert dm.dim == 5


def test_bad_files_raise_clear_errors(tmp_path: Path) -> None:
    np.savez(tmp_path / "two.npz", x=np.zeros((4, 2)), y=np.zeros((4, 2)))
    with pytest.raises(ValueError, match=r"holds arrays \['x', 'y'\]"):
        load_points(tmp_path / "two.npz")
    with pytest.raises(ValueError, match="has no array 'z'"):
        load_points(tmp_path / "two.npz", "z")
    (tmp_path / "nan.csv").write_text("1,2\n3,nan\n")
    with pytest.raises(ValueError, match="NaN or inf"):
        load_points(tmp_path / "nan.csv")
    np.savez(tmp_path / "flat.npz", x=np.zeros(5))
    with pytest.raises(ValueError, match="2-D array"):
        load_points(tmp_path / "flat.npz")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_points(tmp_path / "missing.csv")
    with pytest.raises(ValueError, match="expected .npz or .csv"):
        (tmp_path / "x.txt").write_text("1")
        load_points(tmp_path / "x.txt")
    np.savez(tmp_path / "d3.npz", x=np.zeros((10, 3)))
    dm = PointCloudPairDataModule("8gaussians", str(tmp_path / "d3.npz"))
    with pytest.raises(ValueError, match=r"same dimension, got \[2, 3\]"):
        dm.setup("fit")
    with pytest.raises(ValueError, match="unknown cloud 'spiral'"):
        PointCloudPairDataModule("spiral", "moons")


@pytest.mark.parametrize(("a", "b", "sigma"), [(1.0, 2.0, 1.0), (0.5, 1.5, 0.7), (1.5, 1.0, 2.0)])
def test_1d_closed_form_matches_grid_sinkhorn(a: float, b: float, sigma: float) -> None:
    """C_sigma = (sqrt(4 a^2 b^2 + sigma^4) - sigma^2) / 2, and the grid Sinkhorn plan's covariance agrees."""
    c = entropic_cross_covariance(torch.tensor([[a**2]]), torch.tensor([[b**2]]), sigma)
    assert float(c) == pytest.approx((math.sqrt(4 * a**2 * b**2 + sigma**4) - sigma**2) / 2, rel=1e-12)
    grid = torch.linspace(-6 * max(a, b), 6 * max(a, b), 601, dtype=torch.float64)
    wa, wb = torch.exp(-(grid**2) / (2 * a**2)), torch.exp(-(grid**2) / (2 * b**2))
    plan = sinkhorn_plan(wa / wa.sum(), wb / wb.sum(), (grid[:, None] - grid[None, :]) ** 2, 2 * sigma**2, tol=1e-8)
    cov = float((plan * grid[:, None] * grid[None, :]).sum())
    assert cov == pytest.approx(float(c), abs=1e-5)


def test_gaussian_datamodule_ground_truth_is_consistent() -> None:
    dm = GaussianPairDataModule(dim=4, shift=2.0, n_train=20000, n_val=100, seed=3)
    dm.setup("fit")
    x0, x1 = dm.train_source.double(), dm.train_target.double()
    torch.testing.assert_close(x0.mean(0), dm.m0, atol=0.05, rtol=0)
    torch.testing.assert_close(torch.cov(x1.T), dm.cov1, atol=0.08, rtol=0)
    assert float((dm.m1 - dm.m0).norm()) == pytest.approx(2.0)
    sigma = 0.5
    for t, cov in ((0.0, dm.cov0), (1.0, dm.cov1)):
        mean, c = dm.sb_marginal(t, sigma)
        torch.testing.assert_close(c, cov)
        torch.testing.assert_close(mean, dm.m0 if t == 0 else dm.m1)
    _, mid = dm.sb_marginal(0.5, sigma)
    assert bool((torch.linalg.eigvalsh(mid) > 0).all())
    # sigma -> 0: the plan becomes the Monge map's, whose cost is the Bures-Wasserstein distance
    c0 = entropic_cross_covariance(dm.cov0, dm.cov1, 1e-4)
    w, v = torch.linalg.eigh(dm.cov0)
    a_half = (v * w.sqrt()) @ v.T
    w2, v2 = torch.linalg.eigh(a_half @ dm.cov1 @ a_half)
    bures_trace = float(((v2 * w2.sqrt()) @ v2.T).trace())
    assert float(c0.trace()) == pytest.approx(bures_trace, rel=1e-4)
    cost = entropic_ot_cost(dm.m0, dm.cov0, dm.m1, dm.cov1, sigma)
    assert cost > entropic_ot_cost(dm.m0, dm.cov0, dm.m1, dm.cov1, 1e-4)


def test_diagonal_gaussians_split_into_1d_problems() -> None:
    dm = GaussianPairDataModule(dim=3, diagonal=True, seed=1)
    c = entropic_cross_covariance(dm.cov0, dm.cov1, 0.6)
    a2, b2 = dm.cov0.diagonal(), dm.cov1.diagonal()
    torch.testing.assert_close(c, torch.diag((torch.sqrt(4 * a2 * b2 + 0.6**4) - 0.6**2) / 2))
    mean, cov = sb_marginal(dm.m0, dm.cov0, dm.m1, dm.cov1, 0.6, 0.3)
    assert torch.count_nonzero(cov - torch.diag(cov.diagonal())) == 0


def test_step_clock_and_argument_checks() -> None:
    dm = PointCloudPairDataModule(n_train=64, n_val=16, steps_per_epoch=7)
    dm.setup("fit")
    assert len(dm.train_dataloader()) == 7 and len(dm.val_dataloader()) == 1
    with pytest.raises(ValueError, match="steps_per_epoch must be >= 1"):
        PointCloudPairDataModule(steps_per_epoch=0)
    with pytest.raises(ValueError, match="val_fraction must be in"):
        PointCloudPairDataModule(val_fraction=1.0)


def test_step_clock_resumes_in_the_middle_of_an_epoch() -> None:
    clock = StepClock.of(5)
    it = iter(clock)
    assert [int(next(it)) for _ in range(2)] == [0, 1]
    state = clock.state_dict()
    assert state == {"served": 2}
    resumed = StepClock.of(5)
    resumed.load_state_dict(state)
    assert [int(b) for b in resumed] == [2, 3, 4]  # the rest of the interrupted epoch
    assert [int(b) for b in resumed] == [0, 1, 2, 3, 4]  # then whole epochs again
    assert resumed.state_dict() == {"served": 5}
    finished = StepClock.of(5)
    finished.load_state_dict({"served": 5})  # saved at an epoch end: the next epoch is a whole one
    assert [int(b) for b in finished] == [0, 1, 2, 3, 4]
