"""``SF2MModule``: [SF]2M training (flow + score matching on Brownian bridges) with a configurable coupling.

With ``coupling: qdsb`` this is QDSB (arXiv 2605.11983): pairs come from one global anchor-quantised OT plan,
refreshed every ``refresh_every`` epochs; ``minibatch_ot`` is [SF]2M-Exact, ``independent`` is [SF]2M-I and
``exact_ot`` the full plan (small N). The coupling, bridge loss and samplers live in ``coupling.py`` and
``bridge.py``; this class only wires them to Lightning.

Data contract (duck-typed, see ``lightning_papers.datamodules.point_clouds``): the datamodule has tensors
``train_source``, ``train_target``, ``val_source``, ``val_target`` after ``setup``; a Gaussian datamodule may
also have ``sb_marginal(t, sigma) -> (mean, cov)``, which adds the KL to the closed-form SB marginals.

DDP: the plan is fitted on rank 0 and broadcast, so every rank samples from the same global plan (each rank
with its own RNG stream); ``minibatch_ot`` stays per-rank local, as in TorchCFM (#19).
"""

from __future__ import annotations

import time
from typing import Any, Literal

import torch
from lightning.pytorch import LightningModule
from lightning.pytorch.utilities import rank_zero_info

from lightning_papers.methods.qdsb.bridge import MLP, sample_ode, sample_sde, sf2m_loss
from lightning_papers.methods.qdsb.coupling import Coupling, build_coupling
from lightning_papers.metrics.distributions import energy_distance, gaussian_kl, mmd_rbf, wasserstein


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
        seed: Seed of the anchors (refit at epoch e uses seed + e, the same on every rank) and of the pair draws
            (rank r draws with its own stream, (seed + e) * 1000 + r + 1).
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
        self._pending_state: dict[str, torch.Tensor] | None = None
        self._last_fit_epoch = -1
        self._eval: dict[str, torch.Tensor] = {}
        if dim is not None:
            self._build(dim)

    def _build(self, dim: int) -> None:
        self.hparams["dim"] = dim
        self.flow = MLP(dim, self.hparams.width)
        self.score = MLP(dim, self.hparams.width)

    def setup(self, stage: str) -> None:
        if self.hparams.num_threads is not None:
            torch.set_num_threads(self.hparams.num_threads)
        if not hasattr(self, "flow"):
            dm = self.trainer.datamodule
            if dm is None or not hasattr(dm, "train_source"):
                raise ValueError("SF2MModule needs dim=... or a datamodule with train_source/train_target tensors")
            dm.setup(stage)
            self._build(int(dm.train_source.shape[1]))

    def _clouds(self, split: str) -> tuple[torch.Tensor, torch.Tensor]:
        dm = self.trainer.datamodule
        x0, x1 = getattr(dm, f"{split}_source"), getattr(dm, f"{split}_target")
        if x0.shape[1] != self.hparams.dim or x1.shape[1] != self.hparams.dim:
            raise ValueError(f"data has dims {x0.shape[1]}/{x1.shape[1]}, the model was built for {self.hparams.dim}")
        return x0.to(self.device), x1.to(self.device)

    def _fit_seed(self) -> int:
        """Seed of the coupling fit at this epoch (same on every rank; refreshes get new anchors)."""
        return self.hparams.seed + self.current_epoch

    def refit_coupling(self) -> None:
        """Fit the coupling on rank 0, broadcast its state, load it on every rank, re-seed draws per rank."""
        x0, x1 = self._clouds("train")
        t0 = time.perf_counter()
        if self._pending_state is not None:  # resumed from a checkpoint: reuse the saved plan
            self.coupling.load_state_dict(self._pending_state, x0, x1)
            self._pending_state = None
        else:
            state = None
            if self.trainer.is_global_zero:
                self.coupling.reseed(self._fit_seed())
                self.coupling.fit(x0, x1)
                state = self.coupling.state_dict()
            state = self.trainer.strategy.broadcast(state, src=0)
            if not self.trainer.is_global_zero:
                self.coupling.load_state_dict(state, x0, x1)
        self.coupling.reseed(self._fit_seed() * 1000 + self.global_rank + 1)
        self.fit_seconds += time.perf_counter() - t0
        self._last_fit_epoch = self.current_epoch
        rank_zero_info(f"[SF2M] epoch {self.current_epoch}: coupling {self.coupling.describe()} fitted")

    def on_train_epoch_start(self) -> None:
        every = self.hparams.refresh_every
        due = every > 0 and self.current_epoch - self._last_fit_epoch >= every
        if self._last_fit_epoch < 0 or due:
            self.refit_coupling()

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x0_all, x1_all = self.coupling.x0, self.coupling.x1
        t0 = time.perf_counter()
        i0, i1 = self.coupling.sample(self.hparams.batch_size)
        self.coupling_seconds += time.perf_counter() - t0
        flow_loss, score_loss = sf2m_loss(self.flow, self.score, x0_all[i0], x1_all[i1], self.hparams.sigma)
        loss = flow_loss + score_loss
        self.log_dict({"train/flow_loss": flow_loss, "train/score_loss": score_loss})
        self.log("train/loss", loss, prog_bar=True)
        return loss

    def generate(self, x0: torch.Tensor, return_path: bool = False) -> torch.Tensor:
        """Push source points through the learned bridge with the configured sampler."""
        if self.hparams.sampler == "sde":
            return sample_sde(
                self.flow, self.score, x0, self.hparams.sigma, self.hparams.n_sample_steps, return_path=return_path
            )
        return sample_ode(self.flow, x0, self.hparams.n_sample_steps, return_path=return_path)

    def evaluate(self, split: str = "val") -> dict[str, float]:
        """W1, W2, MMD, energy distance (and Gaussian KLs to the SB marginals) of generated vs held-out points."""
        x0, x1 = self._clouds(split)
        n = self.hparams.n_eval
        x0, x1 = (x0, x1) if n is None else (x0[:n], x1[:n])
        path = self.generate(x0, return_path=True)
        gen = path[-1]
        out = {
            "w1": wasserstein(gen, x1, 1),
            "w2": wasserstein(gen, x1, 2),
            "mmd": mmd_rbf(gen, x1),
            "energy": energy_distance(gen, x1),
        }
        dm = self.trainer.datamodule if self._trainer is not None else None
        if hasattr(dm, "sb_marginal"):
            steps = path.shape[0] - 1
            for t in (0.5, 1.0):
                xt = path[round(t * steps)].double()
                mean, cov = dm.sb_marginal(t, self.hparams.sigma)
                out[f"kl_t{t:g}"] = gaussian_kl(xt.mean(0), torch.cov(xt.T).reshape(len(mean), -1), mean, cov)
        self._eval = {"source": x0.cpu(), "target": x1.cpu(), "generated": gen.cpu(), "path": path[:, :64].cpu()}
        return out

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        metrics = self.evaluate("val")
        w1 = metrics.pop("w1")
        self.log("val/w1", w1, prog_bar=True, sync_dist=True)
        self.log_dict({f"val/{k}": v for k, v in metrics.items()}, sync_dist=True)
        if self.coupling._fitted and self.hparams.coupling != "minibatch_ot":
            self.log("coupling/expected_cost", self.coupling.expected_cost(), sync_dist=True)
        self.log("coupling/seconds", self.coupling_seconds + self.fit_seconds, sync_dist=True)

    def test_step(self, batch: Any, batch_idx: int) -> None:
        self.log_dict({f"test/{k}": v for k, v in self.evaluate("val").items()}, sync_dist=True)

    def make_figures(self, stage: str) -> dict[str, Any]:
        """Scatter of source, target and generated points (first two coordinates) with a few trajectories."""
        import matplotlib.pyplot as plt

        if not self._eval:
            return {}
        e = self._eval
        fig, ax = plt.subplots(figsize=(5, 5))
        ax.scatter(*e["source"][:, :2].T, s=2, c="0.6", label="source")
        ax.scatter(*e["target"][:, :2].T, s=2, c="tab:blue", alpha=0.5, label="target")
        ax.scatter(*e["generated"][:, :2].T, s=2, c="tab:red", alpha=0.5, label="generated")
        for j in range(e["path"].shape[1]):
            ax.plot(*e["path"][:, j, :2].T, lw=0.4, c="k", alpha=0.3)
        ax.set_title(f"{self.coupling.describe()}, epoch {self.current_epoch}", fontsize=8)
        ax.legend(loc="upper right", markerscale=4, fontsize=7)
        ax.set_aspect("equal")
        return {f"{'val' if stage == 'validate' else stage}/samples": fig}

    def configure_optimizers(self) -> torch.optim.Optimizer:
        params = list(self.flow.parameters()) + list(self.score.parameters())
        return torch.optim.AdamW(params, lr=self.hparams.lr, weight_decay=self.hparams.weight_decay)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if self.coupling._fitted:
            checkpoint["sf2m_coupling"] = self.coupling.state_dict()
            checkpoint["sf2m_last_fit_epoch"] = self._last_fit_epoch

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if checkpoint.get("sf2m_coupling"):
            self._pending_state = checkpoint["sf2m_coupling"]
            self._last_fit_epoch = -1  # refit_coupling on the first epoch loads the pending state
