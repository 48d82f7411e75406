"""``build_learner(name, ...)``: every bidding learner by name, with a known horizon or anytime (doubling)."""

from __future__ import annotations

from typing import Any, Literal

from lightning_papers.datamodules.auction_distributions import BidDistribution, PointMass
from lightning_papers.methods.shilled_auctions.base import AnytimeLearner, Learner
from lightning_papers.methods.shilled_auctions.baselines import Exp3Learner, FixedBidLearner, TransparentLearner
from lightning_papers.methods.shilled_auctions.config import BiddingConfig
from lightning_papers.methods.shilled_auctions.optimistic import OptimisticLearner
from lightning_papers.methods.shilled_auctions.racing import RacingLearner
from lightning_papers.methods.shilled_auctions.robust import RobustLearner

LearnerName = Literal["racing", "robust", "optimistic", "naive", "exp3", "transparent", "oracle"]
LEARNERS: tuple[str, ...] = LearnerName.__args__


def build_learner(
    name: str,
    replicas: int,
    value: float,
    horizon: int | None,
    shill: BidDistribution | None = None,
    config: BiddingConfig | None = None,
    best_bid: float | None = None,
    seed: int = 0,
    first_replica: int = 0,
    device: Any = "cpu",
    value_known: bool = True,
) -> Learner:
    """Build a learner.

    Args:
        name: ``racing`` (the method), ``robust``, ``optimistic``, ``naive`` (trusts reports: F_s ≡ 1, no
            validation), ``exp3`` (EXP3-IX), ``transparent`` (needs a transparent auction) or ``oracle``.
        replicas: R.
        value: v.
        horizon: T; ``None`` builds the anytime version (doubling phases of ``config.first_horizon``·2^k rounds).
        shill: The shill law the learner believes (optimistic, racing); ``None`` means no shill.
        config: Hyper-parameters.
        best_bid: b* (oracle only).
        seed: Seed of EXP3-IX's sampling.
        first_replica: Id of replica 0 (EXP3-IX's random stream).
        device: Where the state lives.
        value_known: False when the auction does not tell v (``value_revealed="on_win"`` or random values): the
            learner then estimates E[v] from the values it is shown and ``value`` only caps its bids
            (:meth:`~lightning_papers.methods.shilled_auctions.base.Learner.hide_value`).
    """
    learner = _build(name, replicas, value, horizon, shill, config, best_bid, seed, first_replica, device)
    return learner if value_known else learner.hide_value()


def _build(
    name: str,
    replicas: int,
    value: float,
    horizon: int | None,
    shill: BidDistribution | None,
    config: BiddingConfig | None,
    best_bid: float | None,
    seed: int,
    first_replica: int,
    device: Any,
) -> Learner:
    config = config or BiddingConfig()
    shill = shill if shill is not None else PointMass(0.0)
    if name not in LEARNERS:
        raise ValueError(f"unknown learner {name!r}; expected one of {LEARNERS}")
    if horizon is not None and (int(horizon) != horizon or horizon < 1):
        raise ValueError(f"horizon T must be an integer >= 1 or None (anytime), got {horizon}")
    if name == "oracle":
        if best_bid is None:
            raise ValueError("the oracle needs best_bid=b*")
        return FixedBidLearner(replicas, value, best_bid, device)

    def factory(T: int) -> Learner:
        if name == "robust":
            return RobustLearner(replicas, value, T, config, device)
        if name == "optimistic":
            return OptimisticLearner(replicas, value, T, shill, config, device)
        if name == "naive":
            return OptimisticLearner(replicas, value, T, PointMass(0.0), config, device, validate=False)
        if name == "exp3":
            return Exp3Learner(replicas, value, T, config, seed, first_replica, device)
        if name == "transparent":
            return TransparentLearner(replicas, value, T, config, device)
        return RacingLearner(
            RobustLearner(replicas, value, T, config, device),
            OptimisticLearner(replicas, value, T, shill, config, device),
            config,
        )

    if horizon is None:
        if name == "racing":  # one race over anytime branches: its checkpoints already double
            return RacingLearner(
                AnytimeLearner(lambda T: RobustLearner(replicas, value, T, config, device), config.first_horizon),
                AnytimeLearner(
                    lambda T: OptimisticLearner(replicas, value, T, shill, config, device), config.first_horizon
                ),
                config,
            )
        return AnytimeLearner(factory, config.first_horizon)
    return factory(int(horizon))
