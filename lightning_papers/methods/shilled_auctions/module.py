"""``ShilledAuctionModule``: R bidders learning in shilled first-price auctions, as a (thin) LightningModule.

There is no gradient training: each training batch is a block of rounds (competing and shill bids of every
replica, from :class:`lightning_papers.datamodules.auctions.AuctionDataModule`), played by the learner against
:class:`~lightning_papers.methods.shilled_auctions.environment.ShilledAuctionEnv` with the same ``play`` loop a
plain Python user runs. A no-op optimizer (learning rate 0 on a frozen placeholder) is stepped once per block so
that ``global_step`` counts blocks: logging, checkpoints and ``--ckpt_path`` resume behave as usual (the learner,
the environment and the curves are in the checkpoint; the loader resumes at the next block).
"""

from __future__ import annotations

from typing import Any, ClassVar, Protocol, runtime_checkable

import numpy as np
import torch
from lightning.pytorch import LightningModule
from typing_extensions import override

from lightning_papers.contracts import check_datamodule
from lightning_papers.datamodules.auction_distributions import BidDistribution
from lightning_papers.methods.shilled_auctions.base import Learner, play
from lightning_papers.methods.shilled_auctions.config import BiddingConfig
from lightning_papers.methods.shilled_auctions.environment import ShilledAuctionEnv
from lightning_papers.methods.shilled_auctions.learners import LearnerName, build_learner
from lightning_papers.methods.shilled_auctions.plots import bid_figure, loglog_slope, regret_figure, trust_figure


@runtime_checkable
class AuctionSource(Protocol):
    """What the module needs from its datamodule besides the batches: the laws (for the exact regret and the
    learner's belief about the shill), v, R and T (optionally ``values``, the law of v_t, and ``value_revealed``)."""

    competing: BidDistribution
    shill: BidDistribution
    believed_shill: BidDistribution
    value: float
    replicas: int
    horizon: int


class ShilledAuctionModule(LightningModule):
    """Plays a repeated first-price auction with shilled loss feedback for R replicas (arXiv 2605.22438).

    Args:
        learner: ``racing`` (the paper's method), ``robust``, ``optimistic``, ``naive``, ``exp3``, ``transparent``
            (needs no shill to be meaningful) or ``oracle``.
        anytime: Use the doubling version (the horizon is not given to the learner).
        delta: Failure probability of a learner's confidence intervals.
        robust_exponent: Robust grid K_r = ⌈T^e⌉ (paper: 1/3).
        optimistic_exponent: Optimistic grid K_o = ⌈T^e⌉ (paper: 1/2).
        check_fraction: Eliminations are re-evaluated every max(K, check_fraction·t) rounds.
        validate: Validate the debiased statistics against own-pull win rates.
        race_first_check: First racing checkpoint (then doubling).
        race_warmup: The first checkpoint waits at least race_warmup × the larger branch grid.
        race_delta: Failure probability of the race's comparisons.
        exp3_exponent: EXP3-IX grid exponent.
        first_horizon: First phase of the anytime versions.
        band: The band of the regret figure covers the replicas between quantiles ``band`` and 1 − ``band``.
        bins: Bins of the bid histograms on [0, v].
        chunk: Replica-rounds per inner step of the bidding loop (memory/cache trade-off; results do not depend
            on it).
        num_threads: If set, ``torch.set_num_threads`` at setup. The per-round tensors are small, so on a small
            shared CPU one thread avoids oversubscription (the debug config ran 5x faster on a loaded 2-core
            machine); None leaves torch's setting alone.
    """

    #: Single process: every replica is simulated on one device (raise ``replicas`` to scale, not devices).
    max_world_size: ClassVar[int] = 1

    def __init__(
        self,
        learner: LearnerName = "racing",
        anytime: bool = False,
        delta: float = 0.05,
        robust_exponent: float = 1.0 / 3.0,
        optimistic_exponent: float = 0.5,
        check_fraction: float = 1.0 / 16.0,
        validate: bool = True,
        race_first_check: int = 1024,
        race_warmup: float = 8.0,
        race_delta: float = 0.05,
        exp3_exponent: float = 1.0 / 3.0,
        first_horizon: int = 1024,
        band: float = 0.1,
        bins: int = 60,
        chunk: int = 1 << 16,
        num_threads: int | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.automatic_optimization = False
        if learner not in LearnerName.__args__:
            raise ValueError(f"unknown learner {learner!r}; expected one of {LearnerName.__args__}")
        if not 0 <= band < 0.5:
            raise ValueError(f"band must be in [0, 0.5), got {band}")
        if bins < 1 or chunk < 1:
            raise ValueError(f"bins and chunk must be >= 1, got bins={bins}, chunk={chunk}")
        self.config = BiddingConfig(
            delta=delta, robust_exponent=robust_exponent, optimistic_exponent=optimistic_exponent,
            check_fraction=check_fraction, validate=validate, race_first_check=race_first_check,
            race_warmup=race_warmup, race_delta=race_delta, exp3_exponent=exp3_exponent, first_horizon=first_horizon,
        )  # fmt: skip
        self.learner_name, self.anytime, self.band, self.bins, self.chunk = learner, anytime, band, bins, chunk
        self.num_threads = num_threads
        self.step_counter = torch.nn.Parameter(torch.zeros(1), requires_grad=False)
        self.env: ShilledAuctionEnv | None = None
        self.learner: Learner | None = None
        self._pending: dict[str, Any] | None = None
        self.curve: dict[str, list[float]] = {"t": [], "mean": [], "low": [], "high": []}
        self.trust: dict[str, list[float]] = {}
        self.hist_all = np.zeros(bins)
        self.hist_last = np.zeros(bins)

    @override
    def setup(self, stage: str) -> None:
        if self.trainer is not None and self.trainer.world_size > 1:
            raise ValueError(
                "ShilledAuctionModule simulates all replicas on one device; got world_size="
                f"{self.trainer.world_size}. Raise the number of replicas instead of devices."
            )
        if self.num_threads is not None:
            torch.set_num_threads(self.num_threads)
        dm = getattr(self.trainer, "datamodule", None)
        check_datamodule(dm, AuctionSource, type(self).__name__)
        self.source = dm

    def build(self, device: torch.device) -> None:
        """The environment and the learner, on ``device``, from the datamodule's laws."""
        dm = self.source
        self.env = ShilledAuctionEnv(
            dm.competing, dm.shill, dm.value, dm.replicas, getattr(dm, "seed", 0), device=device,
            transparent=self.learner_name == "transparent", histogram_bins=self.bins,
            values=getattr(dm, "values", None), value_revealed=getattr(dm, "value_revealed", "always"),
        )  # fmt: skip
        self.learner = build_learner(
            self.learner_name, dm.replicas, dm.value, None if self.anytime else dm.horizon, shill=dm.believed_shill,
            config=self.config, best_bid=self.env.best_bid, seed=getattr(dm, "seed", 0), device=device,
            value_known=self.env.value_known,
        )  # fmt: skip

    @override
    def on_fit_start(self) -> None:
        if self.learner is None:
            self.build(self.device)
        if self._pending is not None:
            self.load_auction_state(self._pending)
            self._pending = None

    @override
    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD([self.step_counter], lr=0.0)

    @override
    def training_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        m, s, start = batch["m"], batch["s"], int(batch["start"])
        if start != self.env.t:
            raise RuntimeError(
                f"block of rounds starting at {start} arrived while the auction is at round {self.env.t}"
            )
        before = self.env.bid_histogram.detach().cpu().numpy().copy()
        play(self.learner, self.env, m.shape[0], m, s, chunk=self.chunk, v=batch.get("v"))
        self.hist_all = self.env.bid_histogram.detach().cpu().numpy().copy()
        self.hist_last = self.hist_all - before
        edges = torch.linspace(0, self.env.value, self.bins + 1, dtype=torch.float64)
        regret = self.env.regret.detach().cpu()
        q = torch.quantile(regret, torch.tensor([self.band, 1 - self.band], dtype=torch.float64))
        for k, v in zip(("t", "mean", "low", "high"), (self.env.t, regret.mean(), q[0], q[1])):
            self.curve[k].append(float(v))
        for k, v in self.learner.diagnostics().items():
            self.trust.setdefault(k, []).append(v)
        mid = (edges[:-1] + edges[1:]) / 2
        mean_bid = float((torch.from_numpy(self.hist_last) * mid).sum() / max(self.hist_last.sum(), 1))
        self.log_dict(
            {
                "train/regret": float(regret.mean()),
                "train/regret_per_round": float(regret.mean()) / self.env.t,
                "train/mean_bid": mean_bid,
                "train/rounds": float(self.env.t),
                **{f"train/{k}": v for k, v in self.learner.diagnostics().items()},
            },
            on_step=True, on_epoch=False, batch_size=m.shape[0],
        )  # fmt: skip
        self.optimizers().step()  # no-op (lr 0, no gradient); advances global_step by one block
        return None

    @override
    def on_train_epoch_end(self) -> None:
        if not self.curve["t"]:
            return
        slope = loglog_slope(self.curve["t"], self.curve["mean"])
        self.log_dict(
            {
                "train/regret_slope": slope,
                "train/best_bid": self.env.best_bid,
                "train/final_regret": self.curve["mean"][-1],
            }  # fmt: skip
        )
        if self.trainer is not None and not self.trainer.sanity_checking:
            from lightning_papers.plotting import log_figure

            for key, fig in self.make_figures("train").items():
                log_figure(self.trainer, key, fig)

    def make_figures(self, stage: str) -> dict[str, Any]:
        """Regret vs t, bids against b*, and (racing, optimistic) branch trust over time, for the run so far."""
        if not self.curve["t"]:
            return {}
        label = self.learner_name + (" (anytime)" if self.anytime else "")
        band = f"replicas between quantiles {self.band:g} and {1 - self.band:g}"
        c = self.curve
        edges = np.linspace(0, self.env.value, self.bins + 1)
        figures = {
            f"{stage}/regret": regret_figure(c["t"], c["mean"], c["low"], c["high"], label, band),
            f"{stage}/bids": bid_figure(edges, self.hist_last, self.hist_all, self.env.best_bid, label),
        }
        fractions = {k: v for k, v in self.trust.items() if k.endswith(("alive", "trusted"))}
        if fractions:  # the race's branches and the optimistic branch's trust in Z (fractions of replicas)
            figures[f"{stage}/trust"] = trust_figure(c["t"], fractions, label)
        return figures

    def auction_state(self) -> dict[str, Any]:
        return {
            "env": self.env.state_dict(), "learner": self.learner.state_dict(), "curve": self.curve,
            "trust": self.trust, "hist_all": self.hist_all.tolist(), "hist_last": self.hist_last.tolist(),
        }  # fmt: skip

    def load_auction_state(self, state: dict[str, Any]) -> None:
        self.env.load_state_dict(state["env"])
        self.learner.load_state_dict(state["learner"])
        self.curve = {k: list(v) for k, v in state["curve"].items()}
        self.trust = {k: list(v) for k, v in state["trust"].items()}
        self.hist_all, self.hist_last = np.asarray(state["hist_all"]), np.asarray(state["hist_last"])

    @override
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if self.learner is not None:
            checkpoint["shilled_auction"] = self.auction_state()

    @override
    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self._pending = checkpoint.get("shilled_auction")
