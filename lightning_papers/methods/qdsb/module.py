"""``SF2MModule``: [SF]2M training (flow + score matching on Brownian bridges) with a configurable coupling.

With ``coupling: qdsb`` this is QDSB (arXiv 2605.11983): pairs come from one global anchor-quantised OT plan,
refreshed every ``refresh_every`` epochs; ``minibatch_ot`` is [SF]2M-Exact, ``independent`` is [SF]2M-I and
``exact_ot`` the full plan (small N). The coupling, bridge loss and samplers live in ``coupling.py`` and
``bridge.py``; this class only wires them to Lightning.

Data contract (:class:`PointCloudPairs`, checked in ``setup``): the datamodule holds the four clouds
``train_source``, ``train_target``, ``val_source``, ``val_target`` after ``setup``; its batches are only a step
clock. A datamodule that also satisfies :class:`GaussianReference` (``sb_marginal(t, sigma) -> (mean, cov)``)
adds the KL to the closed-form SB marginals. ``lightning_papers.datamodules.point_clouds`` has both kinds.

Randomness: the pairs and the loss noise of a step come from a generator seeded by (seed, epoch, batch index,
rank), and the anchors refitted at epoch e from seed + e, so a run stopped at any step and resumed with
``--ckpt_path`` repeats an uninterrupted run exactly (the checkpoint holds the plan and the epoch it was fitted).

DDP: the plan is fitted on rank 0 and broadcast, so every rank samples from the same global plan (each rank
with its own draws); ``minibatch_ot`` stays per-rank local, as in TorchCFM. Validation splits the held-out
points across ranks and the torchmetrics metrics gather them, so the scores are over the whole held-out set.
"""

from __future__ import annotations

import time
from typing import Any, Literal, Protocol, runtime_checkable

import numpy as np
import torch
from lightning.pytorch import LightningModule
from lightning.pytorch.utilities import rank_zero_info
from torch import nn
from typing_extensions import override

from lightning_papers.contracts import check_datamodule
from lightning_papers.methods.qdsb.bridge import MLP, sample_ode, sample_sde, sf2m_loss
from lightning_papers.methods.qdsb.coupling import Coupling, build_coupling
from lightning_papers.methods.qdsb.plots import samples_figure
from lightning_papers.metrics.distributions import GaussianKL, SampleDistance
from lightning_papers.resume import reopen_epoch_cut_by_max_steps

DISTANCES = ("w1", "w2", "mmd", "energy")
KL_TIMES = (0.5, 1.0)  # times at which a GaussianReference datamodule's SB marginal is compared


@runtime_checkable
class PointCloudPairs(Protocol):
    """What :class:`SF2MModule` needs from its datamodule: four ``(N, d)`` clouds, set by ``setup``."""

    train_source: torch.Tensor | None
    train_target: torch.Tensor | None
    val_source: torch.Tensor | None
    val_target: torch.Tensor | None

    def setup(self, stage: str) -> None: ...


@runtime_checkable
class GaussianReference(Protocol):
    """Optional: a datamodule with the closed-form Schrödinger-bridge marginals (adds ``val/kl_t0.5``, ``kl_t1``)."""

    def sb_marginal(self, t: float, sigma: float) -> tuple[torch.Tensor, torch.Tensor]: ...


class SF2MModule(LightningModule):
    """Simulation-free Schrödinger bridge ([SF]2M) between two point clouds, QDSB coupling by default.

    Args:
        sigma: Bridge diffusion sigma (QDSB toys and EB/Cite: 0.25; Multi: 1.0; images 0.1).
        coupling: ``qdsb``, ``minibatch_ot`` ([SF]2M-Exact), ``independent`` or ``exact_ot`` (full plan).
        n_anchors: QDSB anchors per marginal (paper: 256 toys/cells, 512 images).
        anchors: ``farthest_first`` (paper) or ``kmeans``.
        ot: Plan solver, ``exact`` (``ot.emd``: what the released runs use) or ``sinkhorn`` (entropic, as the
            paper text says; torch log-domain, on the device).
        epsilon: Sinkhorn regulariser; None means the [SF]2M choice 2 sigma^2.
        n_restarts: Farthest-first random starts (smallest covering radius wins).
        ot_batch_size: Minibatch-OT problem size B; None means ``batch_size``.
        refresh_every: Re-draw anchors and re-solve the plan every this many epochs (paper: 100; 0 = never).
        batch_size: Pairs per training step on each device (paper: 256 toys/cells).
        width: Hidden width of the flow and score MLPs (paper: 64 toys/cells, 512 images).
        lr: AdamW learning rate (paper: 1e-4 toys/cells).
        weight_decay: AdamW weight decay (paper: 0.01).
        sampler: ``sde`` (Euler-Maruyama, paper) or ``ode`` (probability flow) for validation samples.
        n_sample_steps: Integration steps of the sampler (paper: 100).
        n_eval: Held-out points used for validation metrics (None: all); W1 is O(n^3).
        dim: Data dimension; None infers it from the datamodule.
        num_threads: If set, ``torch.set_num_threads`` at setup. The networks are tiny, so on a small shared
            CPU one thread avoids oversubscription (measured 14x faster steps on the 2-core CI box); None
            leaves torch's setting alone.
        seed: Seed of the anchors (refit at epoch e uses seed + e, the same on every rank), of each step's pair
            draws and loss noise (seeded by seed, epoch, batch index and rank) and of the validation sampler.
    """

    def __init__(
        self,
        sigma: float = 0.25,
        coupling: Literal["qdsb", "minibatch_ot", "independent", "exact_ot"] = "qdsb",
        n_anchors: int = 256,
        anchors: Literal["farthest_first", "kmeans"] = "farthest_first",
        ot: Literal["exact", "sinkhorn"] = "exact",
        epsilon: float | None = None,
        n_restarts: int = 4,
        ot_batch_size: int | None = None,
        refresh_every: int = 100,
        batch_size: int = 256,
        width: int = 64,
        lr: float = 1e-4,
        weight_decay: float = 0.01,
        sampler: Literal["sde", "ode"] = "sde",
        n_sample_steps: int = 100,
        n_eval: int | None = None,
        dim: int | None = None,
        num_threads: int | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if not sigma > 0:
            raise ValueError(f"sigma must be > 0, got {sigma}")
        if batch_size < 1 or refresh_every < 0 or n_sample_steps < 1:
            raise ValueError(
                f"need batch_size >= 1, refresh_every >= 0, n_sample_steps >= 1; got {batch_size}, "
                f"{refresh_every}, {n_sample_steps}"
            )
        if sampler not in ("sde", "ode"):
            raise ValueError(f"sampler must be 'sde' or 'ode', got {sampler!r}")
        self.save_hyperparameters()
        self.epsilon = epsilon if epsilon is not None else 2 * sigma**2
        self.coupling: Coupling = build_coupling(
            coupling, n_anchors, anchors, ot, self.epsilon, ot_batch_size or batch_size, n_restarts, seed
        )
        self.coupling_seconds = 0.0  # wall time spent drawing pairs (and solving minibatch plans) this fit
        self.fit_seconds = 0.0  # wall time spent fitting the coupling (anchors + plan)
        self._pending_state: dict[str, torch.Tensor] | None = None  # a plan read from a checkpoint, not yet loaded
        self._last_fit_epoch = -1
        self.distances = nn.ModuleDict({k: SampleDistance(k) for k in DISTANCES})
        self.marginal_kls = nn.ModuleList()  # GaussianKL per KL_TIMES, built in setup for a GaussianReference
        self.last_eval: dict[str, Any] = {}  # points and scores of the latest evaluate(), for make_figures
        if dim is not None:
            self._build(dim)

    def _build(self, dim: int) -> None:
        self.hparams["dim"] = dim
        self.flow = MLP(dim, self.hparams.width)
        self.score = MLP(dim, self.hparams.width)

    @override
    def setup(self, stage: str) -> None:
        if self.hparams.num_threads is not None:
            torch.set_num_threads(self.hparams.num_threads)
        dm = self.trainer.datamodule
        check_datamodule(dm, PointCloudPairs, type(self).__name__)
        for name in ("train_source", "train_target", "val_source", "val_target"):
            if not isinstance(getattr(dm, name), torch.Tensor):
                raise TypeError(f"{type(dm).__name__}.{name} must be an (N, d) tensor after setup, got "
                                f"{type(getattr(dm, name)).__name__}")  # fmt: skip
        if not hasattr(self, "flow"):
            self._build(int(dm.train_source.shape[1]))
        self.marginal_kls = nn.ModuleList()
        if isinstance(dm, GaussianReference):
            for t in KL_TIMES:
                self.marginal_kls.append(GaussianKL(*dm.sb_marginal(t, self.hparams.sigma)))

    @property
    def last_fit_epoch(self) -> int:
        """Epoch at which the coupling in use was fitted (-1 before the first fit)."""
        return self._last_fit_epoch

    def _clouds(self, split: str) -> tuple[torch.Tensor, torch.Tensor]:
        dm = self.trainer.datamodule
        x0, x1 = getattr(dm, f"{split}_source"), getattr(dm, f"{split}_target")
        if x0.shape[1] != self.hparams.dim or x1.shape[1] != self.hparams.dim:
            raise ValueError(f"data has dims {x0.shape[1]}/{x1.shape[1]}, the model was built for {self.hparams.dim}")
        return x0.to(self.device), x1.to(self.device)

    def _fit_seed(self, epoch: int) -> int:
        """Seed of the coupling fit at ``epoch`` (same on every rank; refreshes get new anchors)."""
        return self.hparams.seed + epoch

    def step_seed(self, epoch: int, batch_idx: int) -> int:
        """Seed of one training step's pair draws and loss noise on this rank (a function of where it is only)."""
        entropy = [self.hparams.seed % 2**32, epoch, batch_idx, self.global_rank]
        lo, hi = (int(v) for v in np.random.SeedSequence(entropy).generate_state(2, np.uint32))
        return (hi >> 1) << 32 | lo  # 63 bits

    def refit_coupling(self) -> None:
        """Fit the coupling on rank 0 (seed + epoch), broadcast its state and load it on every rank."""
        x0, x1 = self._clouds("train")
        t0 = time.perf_counter()
        state = None
        if self.trainer.is_global_zero:
            self.coupling.reseed(self._fit_seed(self.current_epoch))
            self.coupling.fit(x0, x1)
            state = self.coupling.state_dict()
        state = self.trainer.strategy.broadcast(state, src=0)
        if not self.trainer.is_global_zero:
            self.coupling.load_state_dict(state, x0, x1)
        self.fit_seconds += time.perf_counter() - t0
        self._adopt(self.current_epoch, "fitted")

    def _load_pending(self) -> None:
        """Adopt the plan read from a checkpoint (fitted at ``_last_fit_epoch``) instead of fitting a new one."""
        x0, x1 = self._clouds("train")
        assert self._pending_state is not None
        self.coupling.load_state_dict(self._pending_state, x0, x1)
        self._pending_state = None
        self._adopt(self._last_fit_epoch, "loaded from the checkpoint")

    def _adopt(self, fit_epoch: int, how: str) -> None:
        self._last_fit_epoch = fit_epoch
        self.coupling.reseed(self._fit_seed(fit_epoch) * 1000 + self.global_rank + 1)  # per-rank draw stream
        rank_zero_info(f"[SF2M] epoch {self.current_epoch}: coupling {self.coupling.describe()} {how}"
                       f" (fit at epoch {fit_epoch})")  # fmt: skip

    @override
    def on_train_start(self) -> None:
        # Runs on a fresh start and on every resume, also mid-epoch (where Lightning skips on_train_epoch_start).
        if self._pending_state is not None:
            self._load_pending()
        elif self._last_fit_epoch < 0:
            self.refit_coupling()

    @override
    def on_train_epoch_start(self) -> None:
        every = self.hparams.refresh_every
        if every > 0 and self.current_epoch - self._last_fit_epoch >= every:
            self.refit_coupling()

    @override
    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x0_all, x1_all = self.coupling.x0, self.coupling.x1
        t0 = time.perf_counter()
        self.coupling.reseed(self.step_seed(self.current_epoch, batch_idx))
        i0, i1 = self.coupling.sample(self.hparams.batch_size)
        self.coupling_seconds += time.perf_counter() - t0
        flow_loss, score_loss = sf2m_loss(
            self.flow, self.score, x0_all[i0], x1_all[i1], self.hparams.sigma, generator=self.coupling.generator
        )
        loss = flow_loss + score_loss
        self.log_dict({"train/flow_loss": flow_loss, "train/score_loss": score_loss})
        self.log("train/loss", loss, prog_bar=True)
        return loss

    def generate(
        self, x0: torch.Tensor, return_path: bool = False, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Push source points through the learned bridge with the configured sampler."""
        if self.hparams.sampler == "sde":
            return sample_sde(self.flow, self.score, x0, self.hparams.sigma, self.hparams.n_sample_steps,
                              generator=generator, return_path=return_path)  # fmt: skip
        return sample_ode(self.flow, x0, self.hparams.n_sample_steps, return_path=return_path)

    def evaluate(self, split: str = "val") -> dict[str, float]:
        """W1, W2, MMD, energy distance (and Gaussian KLs to the SB marginals) of generated vs held-out points.

        Each rank generates from its share of the first ``n_eval`` held-out source points (a sampler seeded by
        ``seed`` and the rank); the torchmetrics states are gathered across ranks, so every rank returns the
        scores of the whole held-out set.
        """
        x0, x1 = self._clouds(split)
        n = self.hparams.n_eval
        x0, x1 = (x0, x1) if n is None else (x0[:n], x1[:n])
        rank, world = self.global_rank, (self.trainer.world_size if self._trainer is not None else 1)
        x0, x1 = x0[rank::world], x1[rank::world]
        gen = torch.Generator(device=self.device).manual_seed(self.hparams.seed + rank)
        path = self.generate(x0, return_path=True, generator=gen)
        for metric in self.distances.values():
            metric.update(path[-1], x1)
        steps = path.shape[0] - 1
        for t, metric in zip(KL_TIMES, self.marginal_kls, strict=False):
            metric.update(path[round(t * steps)])
        out = {k: float(m.compute()) for k, m in self.distances.items()}
        out.update({f"kl_t{t:g}": float(m.compute()) for t, m in zip(KL_TIMES, self.marginal_kls, strict=False)})
        for metric in [*self.distances.values(), *self.marginal_kls]:
            metric.reset()
        self.last_eval = {"source": x0.cpu(), "target": x1.cpu(), "generated": path[-1].cpu(),
                          "path": path[:, :64].cpu(), "scores": out, "step": self.global_step}  # fmt: skip
        return dict(out)

    @override
    def validation_step(self, batch: Any, batch_idx: int) -> None:
        if batch_idx > 0:  # the held-out clouds are scored once per validation, whatever the loader yields
            return
        metrics = self.evaluate("val")
        self.log("val/w1", metrics.pop("w1"), prog_bar=True, sync_dist=True)
        self.log_dict({f"val/{k}": v for k, v in metrics.items()}, sync_dist=True)
        if self.coupling.fitted and self.hparams.coupling != "minibatch_ot":
            self.log("coupling/expected_cost", self.coupling.expected_cost(), sync_dist=True)
        # wall time differs between runs: straight to the loggers, not into the (reproducible) callback metrics
        for logger in self.loggers:
            logger.log_metrics({"coupling/seconds": self.coupling_seconds + self.fit_seconds}, step=self.global_step)

    @override
    def test_step(self, batch: Any, batch_idx: int) -> None:
        if batch_idx == 0:
            self.log_dict({f"test/{k}": v for k, v in self.evaluate("val").items()}, sync_dist=True)

    def make_figures(self, stage: str) -> dict[str, Any]:
        """Generated samples over the held-out target, with the source and a few trajectories (two coordinates)."""
        if not self.last_eval:
            return {}
        e = self.last_eval
        scores = ", ".join(f"{k.upper()} {e['scores'][k]:.3f}" for k in ("w1", "mmd") if k in e["scores"])
        title = f"{self.coupling.describe()}\nafter {e['step']} steps, held-out {scores}"
        fig = samples_figure(e["source"], e["target"], e["generated"], e["path"], title)
        return {f"{'val' if stage == 'validate' else stage}/samples": fig}

    @override
    def configure_optimizers(self) -> torch.optim.Optimizer:
        params = list(self.flow.parameters()) + list(self.score.parameters())
        return torch.optim.AdamW(params, lr=self.hparams.lr, weight_decay=self.hparams.weight_decay)

    @override
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if self.coupling.fitted:
            checkpoint["sf2m_coupling"] = self.coupling.state_dict()
            checkpoint["sf2m_last_fit_epoch"] = self._last_fit_epoch

    @override
    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        reopen_epoch_cut_by_max_steps(checkpoint)  # runs before Lightning restores its loops from the same dict
        if "sf2m_last_fit_epoch" in checkpoint:  # loaded (not refitted) in on_train_start
            self._pending_state = checkpoint["sf2m_coupling"]
            self._last_fit_epoch = int(checkpoint["sf2m_last_fit_epoch"])
