"""Repeated first-price auctions with shill bids: blocks of rounds for R independent replicas.

Each batch is a dict ``{"m": [B, R], "s": [B, R], "start": int}``: the real competing bids and the shill bids of
rounds ``start .. start+B−1`` for every replica (float64). The draws are counter based
(:mod:`lightning_papers.datamodules.auction_distributions`): round t of replica r is the same whatever the block
size, the number of replicas or the point where a run was resumed. The loader is stateful (``state_dict`` holds
the next block), so a run resumed mid-horizon with ``--ckpt_path`` continues with the next block.

Scenarios (this repository's names for the regimes of arXiv 2605.22438): m ~ Beta(a, b), U[low, high] or the
empirical law of a CSV column of historic competing bids; the shill ``none`` (S0), ``uniform`` U[0, 1] (S1),
``low_shill`` ρ·δ_0 + (1 − ρ)·U[0.8, 1] (S2), ``misspecified`` (S3: the true shill is S2 but the learner is told
U[0, 1]) or ``csv`` (the empirical law of a column of shill bids). The learner's belief is ``believed_shill``.

The value: ``value_distribution: fixed`` (v every round, the default) or ``uniform`` (v_t ~ U[value_low, value]
i.i.d., drawn from a stream of its own; batches then also hold ``"v": [B, R]``); ``value_revealed: on_win`` hides
v_t from the learner except after a win (the environment enforces it).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any, Literal

import torch
from lightning.pytorch import LightningDataModule

from lightning_papers.datamodules.auction_distributions import (
    BidDistribution,
    Uniform,
    build_distribution,
    draw_rounds,
    draw_values,
)

ShillName = Literal["none", "uniform", "low_shill", "misspecified", "csv"]


class BlockStream:
    """An iterable of blocks of rounds that remembers where it is (``state_dict``), so Lightning resumes it."""

    def __init__(
        self,
        competing: BidDistribution,
        shill: BidDistribution,
        seed: int,
        horizon: int,
        block: int,
        replicas: int,
        values: BidDistribution | None = None,
    ) -> None:
        self.competing, self.shill, self.seed, self.values = competing, shill, seed, values
        self.horizon, self.block, self.replicas = horizon, block, replicas
        self.next_block = 0

    def __len__(self) -> int:
        return math.ceil(self.horizon / self.block)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        ids = torch.arange(self.replicas)
        while self.next_block < len(self):
            start = self.next_block * self.block
            n = min(self.block, self.horizon - start)
            m, s = draw_rounds(self.competing, self.shill, self.seed, start, n, ids)
            self.next_block += 1
            if self.values is None:
                yield {"m": m, "s": s, "start": start}
            else:
                yield {"m": m, "s": s, "v": draw_values(self.values, self.seed, start, n, ids), "start": start}
        self.next_block = 0

    def state_dict(self) -> dict[str, int]:
        return {"next_block": self.next_block}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.next_block = int(state["next_block"])


class AuctionDataModule(LightningDataModule):
    """Competing and shill bids of a repeated first-price auction, for R replicas, in blocks of rounds.

    Args:
        replicas: R, independent bidders simulated side by side (>= 1).
        horizon: T, rounds per replica.
        block: Rounds per batch (one training step).
        value: The bidder's value v > 0 (with ``value_distribution: uniform`` the largest value; bids stay in
            [0, v]).
        competing: Law of the real competing bid: ``beta``, ``uniform`` or ``csv``.
        beta_a: a of Beta(a, b).
        beta_b: b of Beta(a, b).
        competing_low: Lower end of the uniform competing law.
        competing_high: Upper end of the uniform competing law.
        bids_csv: CSV file (with a header row) of historic competing bids, for ``competing: csv``.
        bids_column: Column of ``bids_csv`` holding the bids (finite, >= 0).
        shill: True shill law: ``none`` (S0), ``uniform`` (S1), ``low_shill`` (S2), ``misspecified`` (S3) or
            ``csv``.
        rho: Probability of a low shill (s = 0) in ``low_shill`` and ``misspecified``.
        shill_csv: CSV file of shill bids, for ``shill: csv``.
        shill_column: Its column.
        believed_shill: The shill law the learner is told; ``None`` means the true one (``uniform`` for
            ``misspecified``).
        seed: Seed of the draws.
        value_distribution: ``fixed`` (v_t = v) or ``uniform`` (v_t ~ U[value_low, v], i.i.d. per round).
        value_low: Lower end of the uniform value law, in [0, v).
        value_revealed: ``always`` (the learner knows v, or sees v_t after every round) or ``on_win`` (v_t is
            shown only after a win; the learner estimates E[v] from its won rounds).
    """

    def __init__(
        self,
        replicas: int = 1000,
        horizon: int = 20000,
        block: int = 1000,
        value: float = 1.0,
        competing: Literal["beta", "uniform", "csv"] = "beta",
        beta_a: float = 2.0,
        beta_b: float = 4.0,
        competing_low: float = 0.0,
        competing_high: float = 1.0,
        bids_csv: str | None = None,
        bids_column: str = "bid",
        shill: ShillName = "uniform",
        rho: float = 0.1,
        shill_csv: str | None = None,
        shill_column: str = "shill",
        believed_shill: ShillName | None = None,
        seed: int = 0,
        value_distribution: Literal["fixed", "uniform"] = "fixed",
        value_low: float = 0.0,
        value_revealed: Literal["always", "on_win"] = "always",
    ) -> None:
        super().__init__()
        for name, v in (("replicas", replicas), ("horizon", horizon), ("block", block)):
            if int(v) != v or v < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {v}")
        if not (value > 0 and math.isfinite(value)):
            raise ValueError(f"value v must be a finite number > 0, got {value}")
        if value_revealed not in ("always", "on_win"):
            raise ValueError(f"value_revealed must be 'always' or 'on_win', got {value_revealed!r}")
        if value_distribution == "fixed":
            self.values: BidDistribution | None = None
        elif value_distribution == "uniform":
            if not (math.isfinite(value_low) and 0 <= value_low < value):
                raise ValueError(f"value_low must be in [0, value={value}) for uniform values, got {value_low}")
            self.values = Uniform(value_low, value)
        else:
            raise ValueError(f"value_distribution must be 'fixed' or 'uniform', got {value_distribution!r}")
        self.value_revealed = value_revealed
        self.replicas, self.horizon, self.block, self.value, self.seed = replicas, horizon, block, float(value), seed
        self.shill_name = shill
        self.competing = build_distribution(
            competing, low=competing_low, high=competing_high, a=beta_a, b=beta_b, csv_path=bids_csv, column=bids_column
        )
        self.shill = self._shill(shill, rho, shill_csv, shill_column)
        if believed_shill is None:
            believed_shill = "uniform" if shill == "misspecified" else shill
        if believed_shill == "misspecified":
            raise ValueError("believed_shill must name a law the learner is told, not 'misspecified'")
        self.believed_shill = self._shill(believed_shill, rho, shill_csv, shill_column)
        self.stream: BlockStream | None = None

    @staticmethod
    def _shill(name: str, rho: float, path: str | None, column: str) -> BidDistribution:
        if name == "misspecified":
            name = "low_shill"
        return build_distribution(name, rho=rho, csv_path=path, column=column)

    def train_dataloader(self) -> BlockStream:
        if self.stream is None:
            self.stream = BlockStream(
                self.competing, self.shill, self.seed, self.horizon, self.block, self.replicas, self.values
            )
        return self.stream
