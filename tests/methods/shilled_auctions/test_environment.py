"""The shilled auction: the debiasing identity, what a win reveals, exact pseudo-regret, and bad input."""

from __future__ import annotations

import pytest
import torch

from lightning_papers.datamodules.auction_distributions import PointMass, Uniform, beta, low_shill
from lightning_papers.methods.shilled_auctions.environment import ShilledAuctionEnv, best_bid
from lightning_papers.methods.shilled_auctions.learners import build_learner


@pytest.mark.parametrize("shill", [Uniform(0.0, 1.0), low_shill(0.3), PointMass(0.0)], ids=["S1", "S2", "S0"])
def test_suffix_statistic_is_unbiased_above_the_bid(shill) -> None:
    """Z_x = 1{win} + 1{loss, R <= x}/F_s(x) has mean F_m(x) for every x >= b (Monte Carlo vs the exact CDF)."""
    competing = beta(2.0, 4.0)
    env = ShilledAuctionEnv(competing, shill, replicas=1000, seed=3)
    b = 0.3
    won, reports = env.step(torch.full((200, 1000), b, dtype=torch.float64))
    n = won.numel()
    for x in (0.3, 0.4, 0.5, 0.7, 0.9):
        fs = float(shill.cdf(torch.tensor([x], dtype=torch.float64)))
        z = won.double() + (~won & (torch.nan_to_num(reports, nan=2.0) <= x)).double() / fs
        truth = float(competing.cdf(torch.tensor([x], dtype=torch.float64)))
        assert abs(float(z.mean()) - truth) < 5 * float(z.std()) / n**0.5 + 1e-9, x
    # the naive estimate that takes R for m is biased under a shill (it sees fewer reports below x)
    if not isinstance(shill, PointMass):
        naive = won.double() + (~won & (torch.nan_to_num(reports, nan=2.0) <= 0.5)).double()
        assert float(naive.mean()) < float(competing.cdf(torch.tensor([0.5]))) - 0.05


def test_a_win_reveals_nothing() -> None:
    env_a = ShilledAuctionEnv(Uniform(0, 1), Uniform(0, 1), replicas=64, seed=0)
    env_b = ShilledAuctionEnv(Uniform(0, 1), Uniform(0, 1), replicas=64, seed=0)
    m, s = env_a.draw(50)
    bids = torch.full((50, 64), 0.5, dtype=torch.float64)
    won_a, rep_a = env_a.step(bids, m, s)
    m_other = torch.where(m <= 0.5, m * 0.1, m)  # change every competing bid the learner beat
    won_b, rep_b = env_b.step(bids, m_other, s)
    assert torch.equal(won_a, won_b) and torch.equal(won_a, bids >= m)
    assert torch.isnan(rep_a[won_a]).all() and torch.equal(torch.isnan(rep_a), won_a)
    assert torch.equal(torch.nan_to_num(rep_a), torch.nan_to_num(rep_b))  # same feedback: nothing about m leaks
    assert torch.equal(rep_a[~won_a], torch.maximum(m, s)[~won_a])


def test_a_learner_that_reads_m_after_a_win_fails() -> None:
    env = ShilledAuctionEnv(Uniform(0, 1), Uniform(0, 1), replicas=32, seed=0)
    won, reports = env.step(torch.full((32,), 0.9, dtype=torch.float64))
    peeked = reports[won]  # what a cheating learner would take as the competing bid it beat
    assert won.any() and torch.isnan(peeked).all()
    with pytest.raises(ValueError, match="finite"):
        env.step(torch.where(won, reports, torch.full_like(reports, 0.5)))


def test_pseudo_regret_closed_form() -> None:
    """m ~ U[0, 1], v = 1: U(b) = b(1 − b), b* = 1/2, U* = 1/4."""
    env = ShilledAuctionEnv(Uniform(0, 1), Uniform(0, 1), value=1.0, replicas=2)
    assert env.best_bid == pytest.approx(0.5, abs=1e-9) and env.best_utility == pytest.approx(0.25, abs=1e-15)
    for _ in range(3):
        env.step(torch.tensor([0.2, 0.7], dtype=torch.float64))
    torch.testing.assert_close(env.regret, torch.tensor([3 * (0.25 - 0.16), 3 * (0.25 - 0.21)], dtype=torch.float64))
    # v = 2: U(b) = (2 − b)·b on [0, 1], b* = 1 with U* = 1
    assert best_bid(Uniform(0, 1), 2.0) == pytest.approx((1.0, 1.0), abs=1e-9)


def test_oracle_has_zero_pseudo_regret() -> None:
    env = ShilledAuctionEnv(beta(2, 4), low_shill(0.1), replicas=100, seed=1)
    assert 0.45 < env.best_bid < 0.48  # Beta(2, 4), v = 1: b* ≈ 0.464
    oracle = build_learner("oracle", 100, 1.0, 5000, best_bid=env.best_bid)
    for _ in range(5):
        bids = oracle.bids(1000)
        oracle.update(bids, *env.step(bids))
    assert env.t == 5000 and torch.all(env.regret == 0)


def test_bad_input_fails_early_and_names_the_value() -> None:
    with pytest.raises(ValueError, match="-1"):
        ShilledAuctionEnv(Uniform(0, 1), Uniform(0, 1), value=-1.0)
    with pytest.raises(ValueError, match="0"):
        ShilledAuctionEnv(Uniform(0, 1), Uniform(0, 1), value=0.0)
    with pytest.raises(ValueError, match="replicas R must be an integer >= 1, got 0"):
        ShilledAuctionEnv(Uniform(0, 1), Uniform(0, 1), replicas=0)
    env = ShilledAuctionEnv(Uniform(0, 1), Uniform(0, 1), replicas=3)
    with pytest.raises(ValueError, match="1.5"):
        env.step(torch.tensor([0.2, 1.5, 0.3], dtype=torch.float64))
    with pytest.raises(ValueError, match="-0.1"):
        env.step(torch.tensor([0.2, 0.1, -0.1], dtype=torch.float64))
    with pytest.raises(ValueError, match="shape"):
        env.step(torch.zeros(4, dtype=torch.float64))
    # Z_x divides by F_s(x): a believed shill with F_s = 0 somewhere on the grid is refused, naming x and F_s(x)
    with pytest.raises(ValueError, match=r"F_s\(x\)=0.0 at grid bid x=0.01"):
        build_learner("optimistic", 4, 1.0, 10000, shill=Uniform(0.3, 1.0))
    with pytest.raises(ValueError, match=r"F_s\(x\)=0.0"):
        build_learner("racing", 4, 1.0, 10000, shill=Uniform(0.3, 1.0))
    build_learner("robust", 4, 1.0, 10000, shill=Uniform(0.3, 1.0))  # the robust branch never divides by F_s
    with pytest.raises(ValueError, match="replicas R must be an integer >= 1, got 0"):
        build_learner("robust", 0, 1.0, 100)
    with pytest.raises(ValueError, match="value v must be a finite number > 0, got -2"):
        build_learner("optimistic", 2, -2.0, 100)
    with pytest.raises(ValueError, match="unknown learner 'magic'"):
        build_learner("magic", 2, 1.0, 100)
