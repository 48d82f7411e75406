"""The learners: elimination keeps the best bid, replicas are independent, block-wise play equals round-by-round
play, the anytime versions double, the race drops a branch, and the naive learner is misled by shills."""

from __future__ import annotations

import pytest
import torch

from lightning_papers.datamodules.auction_distributions import PointMass, Uniform, beta, low_shill
from lightning_papers.methods.shilled_auctions.base import AnytimeLearner, play
from lightning_papers.methods.shilled_auctions.config import BiddingConfig
from lightning_papers.methods.shilled_auctions.environment import ShilledAuctionEnv
from lightning_papers.methods.shilled_auctions.learners import LEARNERS, build_learner


@pytest.mark.parametrize(("name", "shill"), [("robust", low_shill(0.1)), ("optimistic", Uniform(0, 1)),
                                             ("optimistic", PointMass(0.0))])  # fmt: skip
def test_elimination_never_drops_the_best_grid_bid(name: str, shill) -> None:
    R, T = 200, 8000
    env = ShilledAuctionEnv(beta(2, 4), shill, replicas=R, seed=5)
    learner = build_learner(name, R, 1.0, T, shill=shill)
    play(learner, env, T)
    best = int(torch.argmax(env.utility(learner.grid)))
    kept = (learner.lo <= best) & (best <= learner.hi)
    assert bool(kept.all()), f"{int((~kept).sum())} of {R} replicas dropped the best grid bid"
    assert float((learner.hi - learner.lo + 1).double().mean()) < learner.K  # and something was eliminated


@pytest.mark.parametrize("name", ["robust", "optimistic", "racing", "naive", "exp3", "oracle"])
def test_a_replica_is_the_same_alone_or_among_a_thousand(name: str) -> None:
    T, r = 500 if name == "exp3" else 2000, 537
    streams = []
    for replicas, first in ((1000, 0), (1, r)):
        env = ShilledAuctionEnv(beta(2, 4), Uniform(0, 1), replicas=replicas, seed=2, first_replica=first)
        learner = build_learner(name, replicas, 1.0, T, shill=Uniform(0, 1), best_bid=env.best_bid, seed=4,
                                first_replica=first, config=BiddingConfig(race_first_check=256))  # fmt: skip
        bids = []
        for _ in range(T // 100):
            n = 0
            while n < 100:
                k = min(learner.block_length(), 100 - n)
                b = learner.bids(k)
                learner.update(b, *env.step(b))
                bids.append(b[:, r - first])
                n += k
        streams.append((torch.cat(bids), env.regret[r - first]))
    assert torch.equal(streams[0][0], streams[1][0])  # the same bids, round for round
    assert float(streams[0][1]) == pytest.approx(float(streams[1][1]), rel=1e-12)  # float sums in another order


@pytest.mark.parametrize("name", ["racing", "optimistic", "transparent"])
def test_round_by_round_play_equals_block_play(name: str) -> None:
    T, R = 1000, 16
    shill = PointMass(0.0) if name == "transparent" else Uniform(0, 1)
    results = []
    for blockwise in (True, False):
        env = ShilledAuctionEnv(beta(2, 4), shill, replicas=R, seed=1, transparent=name == "transparent")
        learner = build_learner(name, R, 1.0, T, shill=shill, config=BiddingConfig(race_first_check=256))
        bids = []
        if blockwise:
            while env.t < T:
                b = learner.bids(min(learner.block_length(), T - env.t))
                learner.update(b, *env.step(b))
                bids.append(b)
        else:
            for t in range(T):
                b = learner.bid(t)
                won, reports = env.step(b)
                learner.update(b, won, reports)
                bids.append(b[None])
        results.append((torch.cat(bids), env.regret))
    assert torch.equal(results[0][0], results[1][0])  # the same bids, round for round
    torch.testing.assert_close(results[0][1], results[1][1], rtol=1e-12, atol=1e-9)  # sums in another order


def test_anytime_version_doubles_its_phases() -> None:
    config = BiddingConfig(first_horizon=512)
    learner = build_learner("optimistic", 8, 1.0, None, shill=Uniform(0, 1), config=config)
    assert isinstance(learner, AnytimeLearner) and learner.inner.horizon == 512
    env = ShilledAuctionEnv(beta(2, 4), Uniform(0, 1), replicas=8)
    play(learner, env, 512 + 1024 + 10)
    assert learner.inner.horizon == 2048 and learner.phase_start == 1536 and learner.inner.t == 10
    race = build_learner("racing", 8, 1.0, None, shill=Uniform(0, 1), config=config)
    play(race, ShilledAuctionEnv(beta(2, 4), Uniform(0, 1), replicas=8), 2000)
    assert all(isinstance(b, AnytimeLearner) and b.inner.horizon == 2048 for b in race.branches)


def test_state_dict_roundtrip_continues_identically() -> None:
    config = BiddingConfig(race_first_check=256)
    env = ShilledAuctionEnv(beta(2, 4), Uniform(0, 1), replicas=32, seed=7)
    a = build_learner("racing", 32, 1.0, None, shill=Uniform(0, 1), config=config)
    play(a, env, 3000)
    b = build_learner("racing", 32, 1.0, None, shill=Uniform(0, 1), config=config)
    b.load_state_dict(a.state_dict())
    env_b = ShilledAuctionEnv(beta(2, 4), Uniform(0, 1), replicas=32, seed=7)
    env_b.load_state_dict(env.state_dict())
    play(a, env, 3000)
    play(b, env_b, 3000)
    assert torch.equal(env.regret, env_b.regret)


def test_naive_learner_is_misled_and_validation_catches_a_wrong_shill_law() -> None:
    """Under low shills the naive learner (R taken for m) underbids with a constant loss per round; the
    optimistic learner told the wrong F_s (S3) stops trusting its debiased statistics."""
    R, T = 100, 12000
    regret = {}
    for name, believed in (("naive", None), ("robust", None), ("optimistic", Uniform(0, 1))):
        env = ShilledAuctionEnv(beta(2, 4), low_shill(0.1), replicas=R, seed=3)
        learner = build_learner(name, R, 1.0, T, shill=believed)
        play(learner, env, T)
        regret[name] = env.regret.mean().item()
        if name == "naive":
            mean_bid = learner.bids(1).mean().item()
            assert mean_bid < env.best_bid - 0.05  # trusting inflated reports: it underbids
        if name == "optimistic":
            assert learner.diagnostics()["z_trusted"] < 0.05
    assert regret["naive"] > 2 * regret["robust"]


def test_every_learner_builds_and_bids_inside_zero_v() -> None:
    for name in LEARNERS:
        shill = PointMass(0.0) if name == "transparent" else Uniform(0, 1)
        env = ShilledAuctionEnv(beta(2, 4), shill, value=2.0, replicas=4, transparent=name == "transparent")
        learner = build_learner(name, 4, 2.0, 500, shill=shill, best_bid=env.best_bid)
        play(learner, env, 500)
        assert env.t == 500 and torch.isfinite(env.regret).all() and (env.regret >= -1e-9).all()
