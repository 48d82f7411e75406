"""Auction bid laws and the block stream: exact CDFs, inversion sampling, counter-based draws, CSV input, resume."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from scipy.special import betainc

from lightning_papers.datamodules.auction_distributions import (
    Empirical,
    PointMass,
    Uniform,
    beta,
    build_distribution,
    counter_uniform,
    draw_rounds,
    draw_values,
    exact_mean,
    low_shill,
    read_bids_csv,
)
from lightning_papers.datamodules.auctions import AuctionDataModule

ROOT = Path(__file__).resolve().parents[2]


def test_beta_table_matches_the_beta_cdf_and_its_quantile_is_the_exact_inverse() -> None:
    law = beta(2.0, 4.0)
    x = torch.linspace(0, 1, 20001, dtype=torch.float64)
    gap = (law.cdf(x) - torch.from_numpy(betainc(2.0, 4.0, x.numpy()))).abs()
    assert float(gap.max()) < 5e-5 and float(gap[(x > 0.05) & (x < 0.8)].max()) < 1e-6
    u = torch.rand(50000, dtype=torch.float64)
    torch.testing.assert_close(law.cdf(law.quantile(u)), u, atol=1e-12, rtol=0)
    # Kolmogorov–Smirnov distance of counter-based samples to the CDF
    m = torch.sort(law.sample(counter_uniform(0, 0, torch.arange(100), torch.arange(200)).flatten())).values
    n = m.numel()
    ks = (law.cdf(m) - torch.arange(1, n + 1, dtype=torch.float64) / n).abs().max()
    assert float(ks) < 1.63 / n**0.5  # the 1% KS critical value


def test_low_shill_mixture_and_point_mass() -> None:
    law = low_shill(0.3)
    x = torch.tensor([0.0, 0.5, 0.8, 0.9, 1.0], dtype=torch.float64)
    torch.testing.assert_close(law.cdf(x), torch.tensor([0.3, 0.3, 0.3, 0.65, 1.0], dtype=torch.float64))
    s = law.sample(torch.rand(100000, dtype=torch.float64))
    assert abs(float((s == 0).double().mean()) - 0.3) < 0.01 and float(s[s > 0].min()) >= 0.8
    assert torch.equal(PointMass(0.0).cdf(x), torch.ones(5, dtype=torch.float64))


def test_empirical_law_is_the_sample() -> None:
    law = Empirical(torch.tensor([0.5, 0.1, 0.3, 0.3], dtype=torch.float64))
    torch.testing.assert_close(law.cdf(torch.tensor([0.0, 0.1, 0.3, 0.4, 0.6], dtype=torch.float64)),
                               torch.tensor([0.0, 0.25, 0.75, 0.75, 1.0], dtype=torch.float64))  # fmt: skip
    draws = law.sample(torch.arange(4, dtype=torch.float64) / 4 + 0.1)
    assert sorted(draws.tolist()) == [0.1, 0.3, 0.3, 0.5]


def test_draws_do_not_depend_on_blocks_or_on_other_replicas() -> None:
    m, s = draw_rounds(beta(2, 4), Uniform(0, 1), 7, 0, 300, torch.arange(50))
    m2, s2 = draw_rounds(beta(2, 4), Uniform(0, 1), 7, 100, 200, torch.arange(20, 21))
    assert torch.equal(m[100:, 20:21], m2) and torch.equal(s[100:, 20:21], s2)
    assert float(torch.corrcoef(torch.stack([m.flatten(), s.flatten()]))[0, 1].abs()) < 0.02  # independent
    other_seed, _ = draw_rounds(beta(2, 4), Uniform(0, 1), 8, 0, 300, torch.arange(50))
    assert not torch.equal(m, other_seed)


def test_block_size_does_not_change_the_rounds() -> None:
    a = AuctionDataModule(replicas=30, horizon=1000, block=300, shill="low_shill")
    b = AuctionDataModule(replicas=30, horizon=1000, block=1000, shill="low_shill")
    ma = torch.cat([x["m"] for x in a.train_dataloader()])
    (mb,) = [x["m"] for x in b.train_dataloader()]
    assert [x["start"] for x in a.train_dataloader()] == [0, 300, 600, 900]
    assert torch.equal(ma, mb) and ma.shape == (1000, 30)


def test_random_values_are_a_stream_of_their_own() -> None:
    """Batches carry v_t only when values are random; m and s are unchanged by drawing them; E[v] is exact."""
    fixed = AuctionDataModule(replicas=8, horizon=600, block=200, seed=5)
    random = AuctionDataModule(replicas=8, horizon=600, block=200, seed=5, value_distribution="uniform",
                               value_low=0.25, value_revealed="on_win")  # fmt: skip
    assert fixed.values is None and fixed.value_revealed == "always" and random.value_revealed == "on_win"
    for a, b in zip(fixed.train_dataloader(), random.train_dataloader()):
        assert "v" not in a and torch.equal(a["m"], b["m"]) and torch.equal(a["s"], b["s"])
        assert torch.equal(b["v"], draw_values(Uniform(0.25, 1.0), 5, b["start"], 200, torch.arange(8)))
    v = draw_values(Uniform(0.25, 1.0), 5, 0, 4000, torch.arange(8))
    assert 0.25 <= float(v.min()) and float(v.max()) <= 1.0 and abs(float(v.mean()) - 0.625) < 0.01
    assert float(torch.corrcoef(torch.stack([v.flatten(), draw_rounds(beta(2, 4), Uniform(0, 1), 5, 0, 4000,
                                torch.arange(8))[0].flatten()]))[0, 1].abs()) < 0.03  # fmt: skip
    assert exact_mean(Uniform(0.25, 1.0)) == 0.625 and exact_mean(PointMass(0.3)) == 0.3
    assert exact_mean(beta(2, 4)) == pytest.approx(1 / 3, abs=1e-4)


def test_stream_state_resumes_at_the_next_block() -> None:
    dm = AuctionDataModule(replicas=4, horizon=500, block=100)
    stream = dm.train_dataloader()
    it = iter(stream)
    next(it), next(it)
    state = stream.state_dict()
    fresh = AuctionDataModule(replicas=4, horizon=500, block=100).train_dataloader()
    fresh.load_state_dict(state)
    rest = [x["start"] for x in fresh]
    assert state == {"next_block": 2} and rest == [200, 300, 400]


def test_scenarios_and_beliefs() -> None:
    dm = AuctionDataModule(shill="misspecified", rho=0.2)
    x = torch.tensor([0.5], dtype=torch.float64)
    assert float(dm.shill.cdf(x)) == pytest.approx(0.2) and float(dm.believed_shill.cdf(x)) == pytest.approx(0.5)
    assert float(AuctionDataModule(shill="none").shill.cdf(x)) == 1.0


def test_example_csvs_load(tmp_path: Path) -> None:
    dm = AuctionDataModule(
        competing="csv", bids_csv=str(ROOT / "examples/shilled_auctions/competing_bids.csv"),
        shill="csv", shill_csv=str(ROOT / "examples/shilled_auctions/shill_bids.csv"),
    )  # fmt: skip
    assert dm.competing.sorted.numel() == 500 and float(dm.believed_shill.cdf(torch.tensor([0.0]))) > 0.2


def test_bad_input_fails_early_and_names_the_value(tmp_path: Path) -> None:
    bad = tmp_path / "bids.csv"
    bad.write_text("bid\n0.3\nnan\n0.2\n")
    with pytest.raises(ValueError, match="nan at row 1"):
        read_bids_csv(bad, "bid")
    bad.write_text("bid\n0.3\n-0.25\n")
    with pytest.raises(ValueError, match="-0.25 at row 1"):
        AuctionDataModule(competing="csv", bids_csv=str(bad))
    bad.write_text("bid\n0.3\nabc\n")
    with pytest.raises(ValueError, match="'abc'"):
        read_bids_csv(bad, "bid")
    with pytest.raises(ValueError, match="column 'price'"):
        read_bids_csv(bad, "price")
    with pytest.raises(ValueError, match="not found"):
        read_bids_csv(tmp_path / "missing.csv", "bid")
    with pytest.raises(ValueError, match="replicas must be an integer >= 1, got 0"):
        AuctionDataModule(replicas=0)
    with pytest.raises(ValueError, match="value v must be a finite number > 0, got -1"):
        AuctionDataModule(value=-1.0)
    with pytest.raises(ValueError, match="rho must be in"):
        AuctionDataModule(shill="low_shill", rho=0.0)
    with pytest.raises(ValueError, match="unknown bid distribution 'gamma'"):
        build_distribution("gamma")
    with pytest.raises(ValueError, match="low=0.5, high=0.2"):
        Uniform(0.5, 0.2)
