"""PAIRS as one LightningModule: stage 1 (encoder + head on N ∈ {1, 2}) then stage 2 (frozen encoder, head refit on
pre-aggregated embeddings) inside a single ``fit``; the switch happens at epoch ``stage1_epochs``.

The datamodule (:class:`~lightning_papers.datamodules.simulated_sets.SimulatedSetsDataModule`) serves simulated
sets before the switch and the bank of (θ, z, log N) triples after it (built once by ``pre_aggregate``, which
calls :meth:`PairsNPE.on_bank_built`), so the trainer needs ``reload_dataloaders_every_n_epochs: 1``. The same
module gives the baselines by configuration: ``train_set_sizes: [1]`` (N = 1-only encoder + refit),
``stage1_epochs == max_epochs`` (PAIRS without stage 2), ``train_set_sizes: [1000]`` with no stage 2 (end to end).
"""

from __future__ import annotations

import math

import torch
from lightning.pytorch import LightningModule
from torch import nn

import lightning_papers.datamodules.simulated_sets as simulated_sets  # a module alias: no import cycle
from lightning_papers.methods.pairs.data import EmbeddingBank
from lightning_papers.methods.pairs.encoder import DeepSetEncoder, embed_sets
from lightning_papers.methods.pairs.evaluation import head_log_q_grid
from lightning_papers.methods.pairs.heads import HeadKind, build_head
from lightning_papers.methods.pairs.training import cosine_lr, init_head_normalization, npe_loss, reset_parameters
from lightning_papers.metrics.posterior import (
    GridKL,
    PosteriorCoverage,
    SBCRanks,
    StandardizedMeanError,
    grid_marginal_cdf,
    grid_mean_sd,
)


class PairsNPE(LightningModule):
    """Neural posterior estimation for sets with a mean-pool Deep Set, trained on sets of size ≤ 2 (PAIRS).

    Args:
        theta_dim: p, must match the datamodule's simulator.
        x_dim: d, must match the datamodule's simulator.
        head: ``"gaussian"`` (diagonal) or ``"flow"`` (zuko neural spline flow).
        embed_dim: k, pooled-embedding size (research note §2: 16).
        encoder_hidden: hidden widths of φ (research note §2: 64, 64).
        head_hidden: hidden widths of the head (research note §2: 64).
        stage1_epochs: epochs of stage 1; later epochs are stage 2. Set it to ``trainer.max_epochs`` for
            stage 1 only (the "PAIRS without stage 2" and end-to-end baselines).
        lr: peak Adam learning rate of stage 1 (cosine decay over the stage).
        stage2_lr: peak Adam learning rate of stage 2 (cosine decay over the stage).
        stage2_reset_head: re-initialise the head before stage 2 ("retrain"); ``False`` finetunes it.
        grid_points: validation grid points per θ dimension (KL, coverage and plots are computed on it).
        chunk_elements: elements per encoder call when embedding large validation or prediction sets.
        predict_samples: posterior samples returned per set by ``predict``.
    """

    def __init__(
        self,
        theta_dim: int,
        x_dim: int,
        head: HeadKind = "gaussian",
        embed_dim: int = 16,
        encoder_hidden: list[int] = [64, 64],  # noqa: B006 (a plain list is what jsonargparse serialises)
        head_hidden: list[int] = [64, 64],  # noqa: B006
        stage1_epochs: int = 10,
        lr: float = 1e-3,
        stage2_lr: float = 1e-3,
        stage2_reset_head: bool = True,
        grid_points: int = 2000,
        chunk_elements: int = 2**17,
        predict_samples: int = 1000,
    ) -> None:
        super().__init__()
        if stage1_epochs < 1:
            raise ValueError(f"stage1_epochs must be >= 1, got {stage1_epochs}")
        if lr <= 0 or stage2_lr <= 0:
            raise ValueError(f"learning rates must be > 0, got lr={lr}, stage2_lr={stage2_lr}")
        if grid_points < 10:
            raise ValueError(f"grid_points must be >= 10, got {grid_points}")
        self.save_hyperparameters()
        self.automatic_optimization = False
        self.encoder = DeepSetEncoder(x_dim, embed_dim, encoder_hidden)
        self.head = build_head(head, theta_dim, embed_dim, head_hidden)
        self.register_buffer("stage2_started", torch.zeros((), dtype=torch.bool))
        self.val_sizes: list[int] = []
        self.val_metrics = nn.ModuleList()
        self.last_val: dict[int, dict[str, float]] = {}
        self._plot_cache: dict[int, tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]] = {}

    # ----------------------------------------------------------------------------------------------- stages
    def stage_at_epoch(self, epoch: int) -> int:
        """1 before epoch ``stage1_epochs``, 2 from then on."""
        return 1 if epoch < self.hparams.stage1_epochs else 2

    def on_bank_built(self, bank: EmbeddingBank) -> None:
        """Called by the datamodule once the stage-2 bank exists: freeze the encoder, prepare the head (once)."""
        self.encoder.requires_grad_(False)
        self.encoder.eval()
        if bool(self.stage2_started):  # resumed inside stage 2: the checkpoint holds the refit head
            return
        self.head.set_normalization(bank.z.to(self.device), bank.log_n.to(self.device))
        if self.hparams.stage2_reset_head:
            reset_parameters(self.head)
        self.stage2_started.fill_(True)

    def setup(self, stage: str) -> None:
        dm = self.trainer.datamodule if self.trainer is not None else None
        if not isinstance(dm, simulated_sets.SimulatedSetsDataModule):
            raise ValueError("PairsNPE needs a SimulatedSetsDataModule (it serves both stages' data)")
        sim = dm.simulator
        if (sim.theta_dim, sim.x_dim) != (self.hparams.theta_dim, self.hparams.x_dim):
            raise ValueError(
                f"model.theta_dim/x_dim = {self.hparams.theta_dim}/{self.hparams.x_dim} but the simulator "
                f"{type(sim).__name__} has theta_dim={sim.theta_dim}, x_dim={sim.x_dim}"
            )
        if stage == "fit" and self.trainer.max_epochs > self.hparams.stage1_epochs:
            if self.trainer.reload_dataloaders_every_n_epochs != 1:
                raise ValueError(
                    "stage 2 needs trainer.reload_dataloaders_every_n_epochs=1 (the loader switches from simulated "
                    f"sets to the embedding bank), got {self.trainer.reload_dataloaders_every_n_epochs}"
                )
        self.simulator = sim
        self.grid = sim.grid(self.hparams.grid_points if sim.theta_dim == 1 else min(self.hparams.grid_points, 80))
        if not self.val_sizes:
            self.val_sizes = list(dm.val_set_sizes)
            p = sim.theta_dim
            self.val_metrics = nn.ModuleList(
                nn.ModuleDict(
                    {
                        "coverage": PosteriorCoverage((0.5, 0.9), p),
                        "sbc": SBCRanks(10, p),
                        "kl": GridKL(),
                        "mean_err": StandardizedMeanError(),
                    }
                )
                for _ in self.val_sizes
            )

    def on_fit_start(self) -> None:
        if self.trainer.current_epoch == 0 and self.global_step == 0:
            init_head_normalization(self.encoder, self.head, self.trainer.datamodule.stream)

    def configure_optimizers(self) -> list[torch.optim.Optimizer]:
        stage1 = torch.optim.Adam([*self.encoder.parameters(), *self.head.parameters()], lr=self.hparams.lr)
        stage2 = torch.optim.Adam(self.head.parameters(), lr=self.hparams.stage2_lr)
        return [stage1, stage2]

    # --------------------------------------------------------------------------------------------- training
    def _stage_progress(self, batch_idx: int, stage: int) -> tuple[int, int]:
        per_epoch = max(1, int(self.trainer.num_training_batches))
        first = 0 if stage == 1 else self.hparams.stage1_epochs
        last = self.hparams.stage1_epochs if stage == 1 else int(self.trainer.max_epochs)
        return (self.current_epoch - first) * per_epoch + batch_idx, (last - first) * per_epoch

    def training_step(self, batch: dict[str, torch.Tensor] | list[torch.Tensor], batch_idx: int) -> torch.Tensor:
        stage = self.stage_at_epoch(self.current_epoch)
        if isinstance(batch, dict):
            if stage != 1:
                raise RuntimeError("received simulated sets in stage 2; is reload_dataloaders_every_n_epochs=1?")
            loss = npe_loss(self.encoder, self.head, batch["theta"], batch["x"])
            params = [*self.encoder.parameters(), *self.head.parameters()]
            base_lr = self.hparams.lr
        else:
            theta, z, log_n = batch
            loss = -self.head.log_prob(theta, z, log_n).mean()
            params = list(self.head.parameters())
            base_lr = self.hparams.stage2_lr
        opt = self.optimizers()[stage - 1]
        step, total = self._stage_progress(batch_idx, stage)
        for g in opt.optimizer.param_groups:
            g["lr"] = cosine_lr(step, total, base_lr, warmup=min(100, total // 10))
        opt.zero_grad()
        self.manual_backward(loss)
        torch.nn.utils.clip_grad_norm_(params, 10.0)
        opt.step()
        self.log(f"train/loss_stage{stage}", loss, prog_bar=True)
        self.log("train/stage", float(stage))
        return loss

    # ------------------------------------------------------------------------------------------- validation
    def validation_step(self, batch: list[torch.Tensor], batch_idx: int, dataloader_idx: int = 0) -> None:
        theta, x = batch
        log_q = head_log_q_grid(self.encoder, self.head, self.grid, x, self.hparams.chunk_elements)
        log_p = self.simulator.log_posterior(self.grid, x.cpu()) if self.simulator.has_posterior else None
        m = self.val_metrics[dataloader_idx]
        cdf = grid_marginal_cdf(log_q, self.grid, theta.cpu()).to(self.device)
        m["coverage"].update(cdf)
        m["sbc"].update(cdf)
        if log_p is not None:
            m["kl"].update(log_p.to(self.device), log_q.to(self.device))
            mean_p, sd_p = grid_mean_sd(log_p, self.grid)
            m["mean_err"].update(grid_mean_sd(log_q, self.grid)[0].to(self.device), mean_p.to(self.device),
                                 sd_p.to(self.device))  # fmt: skip
        if batch_idx == 0:
            self._plot_cache[dataloader_idx] = (log_q[:3], theta[:3].cpu(), None if log_p is None else log_p[:3])

    def on_validation_epoch_end(self) -> None:
        self._finish_validation()

    def _finish_validation(self) -> None:
        """Compute, log and reset the metrics of every validation N that has data (a no-op once done).

        Called by :meth:`on_validation_epoch_end` and by :meth:`make_figures`, because Lightning runs callback
        hooks (the :class:`~lightning_papers.callbacks.figures.FigureLogger`) before the module's own hook.
        """
        for n, m in zip(self.val_sizes, self.val_metrics):
            if m["coverage"].update_count == 0:
                continue
            cov = m["coverage"].compute().mean(-1)
            res = {"coverage50": float(cov[0]), "coverage90": float(cov[1]),
                   "sbc_max_dev": float(m["sbc"].max_deviation().max())}  # fmt: skip
            if m["kl"].update_count:
                res["kl"], res["mean_err_sd"] = float(m["kl"].compute()), float(m["mean_err"].compute())
            self.last_val[n] = res
            for k, v in res.items():
                self.log(f"val/N{n}/{k}", v, add_dataloader_idx=False)
            for metric in m.values():
                metric.reset()

    def make_figures(self, stage: str) -> dict:
        """Posterior plots (exact vs learned, 1-D θ) per validation N, and coverage / KL against N."""
        from lightning_papers.methods.pairs.plots import coverage_kl_figure, posterior_figure

        if stage == "validate":
            self._finish_validation()
        figs = {}
        if self.simulator.theta_dim == 1 and self._plot_cache:
            figs["val/posteriors"] = posterior_figure(self.grid, self.val_sizes, self._plot_cache)
        if self.last_val:
            figs["val/coverage_kl_vs_N"] = coverage_kl_figure({"PAIRS": self.last_val})
        return figs

    # ------------------------------------------------------------------------------------------- prediction
    @torch.no_grad()
    def predict_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> dict[str, torch.Tensor]:
        """Posterior mean, sd and ``predict_samples`` samples for one user set ``{"x": [N, d]}``."""
        x = batch["x"][None].to(self.device)
        z = embed_sets(self.encoder, x, self.hparams.chunk_elements)
        samples = self.head.sample(self.hparams.predict_samples, z, math.log(x.shape[1]))[:, 0]
        return {"mean": samples.mean(0), "sd": samples.std(0), "samples": samples, "set_size": x.shape[1]}
