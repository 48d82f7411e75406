"""Stream generators have the planted structure (K segments, budget C) and serve batches in time order."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from lightning_papers.datamodules.streams import (
    CSVStreamDataModule,
    DeviationBudgetStreamDataModule,
    IIDStreamDataModule,
    PiecewiseStreamDataModule,
    budget_means,
    deviation_budget,
)


def collect(dm) -> tuple[np.ndarray, np.ndarray]:
    ys, refs = zip(*[(y.numpy(), r.numpy()) for y, r in dm.train_dataloader()])
    return np.concatenate(ys), np.concatenate(refs)


def test_iid_stream_in_order_with_planted_mean() -> None:
    dm = IIDStreamDataModule(length=20000, mean=0.3, batch_size=700, seed=1)
    y, ref = collect(dm)
    np.testing.assert_array_equal(y, dm.y)  # served in time order, nothing dropped
    assert np.all(ref == 0.3)
    assert abs(y.mean() - 0.3) < 4 * np.sqrt(0.21 / 20000)
    assert set(np.unique(y)) <= {0.0, 1.0}


def test_piecewise_has_k_equal_segments() -> None:
    dm = PiecewiseStreamDataModule(length=1000, segments=4, seed=2)
    dm.setup()
    mu = dm.reference
    change_points = np.flatnonzero(np.diff(mu)) + 1
    np.testing.assert_array_equal(change_points, [250, 500, 750])
    assert np.all((mu >= 0.1) & (mu <= 0.9))
    with pytest.raises(ValueError, match="segments"):
        PiecewiseStreamDataModule(length=10, segments=11)


@pytest.mark.parametrize("budget", [0.0, 30.0, 900.0])
def test_deviation_budget_shifts_is_exact(budget: float) -> None:
    mu = budget_means(10000, budget, np.random.default_rng(0), "shifts", base=0.5, shift=0.3)
    assert deviation_budget(mu) == pytest.approx(round(budget / 0.3) * 0.3)


def test_deviation_budget_drift_is_close() -> None:
    dm = DeviationBudgetStreamDataModule(length=20000, budget=2000.0, mode="drift")
    dm.setup()
    assert deviation_budget(dm.reference) == pytest.approx(2000.0, rel=0.01)
    with pytest.raises(ValueError, match="amplitude"):
        DeviationBudgetStreamDataModule(length=1000, budget=900.0, mode="drift")
    with pytest.raises(ValueError, match="half the stream"):
        DeviationBudgetStreamDataModule(length=1000, budget=900.0, mode="shifts")


def test_deviation_budget_is_distance_to_best_constant() -> None:
    mu = np.array([0.1, 0.5, 0.5, 0.9])
    assert deviation_budget(mu) == pytest.approx(0.8)  # the median 0.5; a mean-based centre would not be minimal


def test_csv_stream_roundtrip_and_validation(tmp_path: Path) -> None:
    path = tmp_path / "stream.csv"
    path.write_text("probability,label\n0.2,0\n0.9,1\n0.5,1\n")
    dm = CSVStreamDataModule(str(path), batch_size=2)
    y, ref = collect(dm)
    np.testing.assert_array_equal(y, [0, 1, 1])
    np.testing.assert_allclose(ref, [0.2, 0.9, 0.5])
    assert dm.length == 3
    bad = tmp_path / "bad.csv"
    bad.write_text("probability,label\n0.2,0\n1.5,1\n")
    with pytest.raises(ValueError, match="1.5"):
        CSVStreamDataModule(str(bad)).setup()
    bad.write_text("probability,label\n0.2,3\n")
    with pytest.raises(ValueError, match="binary labels"):
        CSVStreamDataModule(str(bad)).setup()
    with pytest.raises(ValueError, match="columns"):
        CSVStreamDataModule(str(path), prob_column="p").setup()


def test_batches_are_float_tensors() -> None:
    y, ref = next(iter(IIDStreamDataModule(length=10, batch_size=4).train_dataloader()))
    assert y.dtype == torch.float64 and ref.dtype == torch.float64 and y.shape == (4,)


def test_stream_batches_resume_from_saved_position() -> None:
    """A loader whose state was saved after 3 of 5 batches, loaded into a fresh loader, serves batches 4-5 and then
    starts the next pass at round 0; a different stream or batch size is refused."""
    dm = PiecewiseStreamDataModule(length=1000, segments=2, batch_size=200, seed=3)
    loader = dm.train_dataloader()
    assert len(loader) == 5
    it = iter(loader)
    first = [next(it) for _ in range(3)]
    state = loader.state_dict()
    assert state == {"position": 600, "length": 1000, "batch_size": 200}
    fresh = dm.train_dataloader()
    fresh.load_state_dict(state)
    rest = list(fresh)
    np.testing.assert_array_equal(torch.cat([b[0] for b in first + rest]).numpy(), dm.y)
    assert fresh.state_dict()["position"] == 1000
    np.testing.assert_array_equal(torch.cat([b[0] for b in fresh]).numpy(), dm.y)  # next pass: whole stream
    with pytest.raises(ValueError, match="batch_size 200"):
        PiecewiseStreamDataModule(length=1000, segments=2, batch_size=100, seed=3).train_dataloader().load_state_dict(
            state
        )


def test_subclasses_share_the_base_constructor_arguments() -> None:
    """length / batch_size / seed are declared once (BernoulliStreamDataModule) and reach every generator."""
    for cls, extra in ((IIDStreamDataModule, {"mean": 0.4}), (PiecewiseStreamDataModule, {"segments": 3}),
                       (DeviationBudgetStreamDataModule, {"budget": 3.0})):  # fmt: skip
        dm = cls(length=300, batch_size=70, seed=5, **extra)
        assert (dm.length, dm.batch_size, dm.seed) == (300, 70, 5)
        assert len(dm.train_dataloader()) == 5
    with pytest.raises(ValueError, match="length must be a positive integer, got 0"):
        IIDStreamDataModule(length=0)
    with pytest.raises(ValueError, match="batch_size must be a positive integer, got 0"):
        CSVStreamDataModule("x.csv", batch_size=0)
