"""PAIRS as one LightningModule: stage 1 (encoder + head on N ∈ {1, 2}) then stage 2 (frozen encoder, head refit
on pre-aggregated embeddings) inside a single ``fit``; the switch happens at epoch ``stage1_epochs``.

A thin shell over :mod:`~lightning_papers.methods.pairs.training`: every optimizer step is
:func:`~lightning_papers.methods.pairs.training.stage1_step` or
:func:`~lightning_papers.methods.pairs.training.head_step`, the same functions the plain-torch loops (and the
benchmark) call. The datamodule only serves simulated sets; this module owns what needs its encoder: at the first
stage-2 step it embeds the datamodule's :meth:`stage2_sets` once into the bank
(:func:`~lightning_papers.methods.pairs.bank.pre_aggregate`) and fits the head on it. Stage-2 steps take one
batch of the training stream each as their clock and do not read it (simulating it costs microseconds).

Exact resume: the bank and the stage-2 optimizer's state are in the checkpoint, the training stream and the
stage-2 minibatches are seeded by the optimizer step, and the head's re-initialisation by ``seed``; a run stopped
at any step and resumed with ``--ckpt_path`` ends with the same weights and metrics as an uninterrupted one.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any, Protocol, runtime_checkable

import torch
from lightning.pytorch import LightningModule
from torch import nn
from typing_extensions import override

from lightning_papers.contracts import check_datamodule
from lightning_papers.datamodules.set_simulators import SetSimulator
from lightning_papers.datamodules.simulated_sets import SimulatedSetStream
from lightning_papers.methods.pairs.bank import EmbeddingBank, pre_aggregate
from lightning_papers.methods.pairs.encoder import DeepSetEncoder, embed_sets
from lightning_papers.methods.pairs.evaluation import PosteriorScores, head_log_q_grid
from lightning_papers.methods.pairs.heads import HeadKind, build_head
from lightning_papers.methods.pairs.training import (
    HeadOptimizer,
    head_step,
    init_head_normalization,
    make_head_optimizer,
    prepare_head,
    scheduled_lr,
    stage1_step,
)
from lightning_papers.resume import reopen_epoch_cut_by_max_steps


@runtime_checkable
class SimulatedSetSource(Protocol):
    """What :class:`PairsNPE` needs from its datamodule besides the training batches ``{"theta", "x"}`` and the
    validation batches ``(theta, x)`` (:class:`~lightning_papers.datamodules.simulated_sets.SimulatedSetsDataModule`
    has all of it)."""

    simulator: SetSimulator
    stream: SimulatedSetStream
    val_set_sizes: list[int]

    def stage2_sets(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The raw sets of the stage-2 bank, in chunks."""
        ...


class PairsNPE(LightningModule):
    """Neural posterior estimation for sets with a mean-pool Deep Set, trained on sets of size ≤ 2 (PAIRS).

    Args:
        theta_dim: p, must match the datamodule's simulator.
        x_dim: d, must match the datamodule's simulator.
        head: ``"gaussian"`` (diagonal) or ``"flow"`` (zuko neural spline flow).
        embed_dim: k, pooled-embedding size (default 16).
        encoder_hidden: hidden widths of φ (default 64, 64).
        head_hidden: hidden widths of the head (default 64, 64).
        stage1_epochs: epochs of stage 1; later epochs are stage 2, one head step per training batch. Set it to
            ``trainer.max_epochs`` for stage 1 only (the "PAIRS without stage 2" and end-to-end baselines).
        lr: peak Adam learning rate of stage 1 (cosine decay over the stage).
        stage2_optimizer: ``"lbfgs"``: one full-batch L-BFGS iteration (strong-Wolfe line search) on the whole bank
            per step, as in the benchmark; ``"adam"``: minibatch Adam with cosine decay over the stage.
        stage2_lr: peak Adam learning rate of stage 2 (unused by L-BFGS).
        stage2_batch_size: bank triples per stage-2 Adam step (L-BFGS uses the whole bank).
        stage2_reset_head: re-initialise the head before stage 2 ("retrain"); ``False`` finetunes it.
        seed: seed of the head's re-initialisation and of the stage-2 minibatches.
        grid_points: validation grid points per θ dimension (KL, coverage and plots are computed on it).
        chunk_elements: elements per encoder call when embedding the bank, large validation or prediction sets.
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
        stage2_optimizer: HeadOptimizer = "lbfgs",
        stage2_lr: float = 1e-3,
        stage2_batch_size: int = 1024,
        stage2_reset_head: bool = True,
        seed: int = 0,
        grid_points: int = 2000,
        chunk_elements: int = 2**17,
        predict_samples: int = 1000,
    ) -> None:
        super().__init__()
        if stage1_epochs < 1:
            raise ValueError(f"stage1_epochs must be >= 1, got {stage1_epochs}")
        if lr <= 0 or stage2_lr <= 0:
            raise ValueError(f"learning rates must be > 0, got lr={lr}, stage2_lr={stage2_lr}")
        if stage2_optimizer not in ("adam", "lbfgs"):
            raise ValueError(f"stage2_optimizer must be 'adam' or 'lbfgs', got {stage2_optimizer!r}")
        if stage2_batch_size < 1:
            raise ValueError(f"stage2_batch_size must be >= 1, got {stage2_batch_size}")
        if grid_points < 10:
            raise ValueError(f"grid_points must be >= 10, got {grid_points}")
        self.save_hyperparameters()
        self.automatic_optimization = False
        self.encoder = DeepSetEncoder(x_dim, embed_dim, encoder_hidden)
        self.head = build_head(head, theta_dim, embed_dim, head_hidden)
        self.bank: EmbeddingBank | None = None
        self.val_sizes: list[int] = []
        self.val_scores = nn.ModuleList()
        self.last_val: dict[int, dict[str, float]] = {}
        self.plot_cache: dict[int, tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]] = {}

    # ----------------------------------------------------------------------------------------------- stages
    def stage_at_epoch(self, epoch: int) -> int:
        """1 before epoch ``stage1_epochs``, 2 from then on."""
        return 1 if epoch < self.hparams.stage1_epochs else 2

    def stage_steps(self) -> tuple[int, int]:
        """(optimizer steps of stage 1, of stage 2) in this fit: one step per training batch."""
        per_epoch = int(self.trainer.num_training_batches)
        stage1 = min(self.hparams.stage1_epochs, int(self.trainer.max_epochs)) * per_epoch
        return stage1, max(0, int(self.trainer.max_epochs) * per_epoch - stage1)

    def build_bank(self) -> EmbeddingBank:
        """Stage 2's start: freeze the encoder, embed the datamodule's stage-2 sets once, prepare the head."""
        self.encoder.requires_grad_(False)
        dm = self.trainer.datamodule
        self.bank = pre_aggregate(self.encoder, dm.stage2_sets(), self.hparams.chunk_elements)
        prepare_head(self.head, self.bank, self.hparams.stage2_reset_head, self.hparams.seed)
        return self.bank

    @override
    def setup(self, stage: str) -> None:
        dm = self.trainer.datamodule if self.trainer is not None else None
        check_datamodule(dm, SimulatedSetSource, type(self).__name__)
        sim = dm.simulator
        if (sim.theta_dim, sim.x_dim) != (self.hparams.theta_dim, self.hparams.x_dim):
            raise ValueError(
                f"model.theta_dim/x_dim = {self.hparams.theta_dim}/{self.hparams.x_dim} but the simulator "
                f"{type(sim).__name__} has theta_dim={sim.theta_dim}, x_dim={sim.x_dim}"
            )
        if stage == "fit" and (self.trainer.max_epochs is None or self.trainer.max_epochs < 1):
            raise ValueError(f"PairsNPE counts its stages in epochs: set trainer.max_epochs >= 1, got "
                             f"{self.trainer.max_epochs}")  # fmt: skip
        self.simulator = sim
        self.grid = sim.grid(self.hparams.grid_points if sim.theta_dim == 1 else min(self.hparams.grid_points, 80))
        if not self.val_sizes:
            self.val_sizes = list(dm.val_set_sizes)
            self.val_scores = nn.ModuleList(PosteriorScores(sim.theta_dim) for _ in self.val_sizes)

    @override
    def on_train_start(self) -> None:  # after a checkpoint's loop state is restored (on_fit_start is before)
        if self.global_step == 0:
            init_head_normalization(self.encoder, self.head, self.trainer.datamodule.stream)
        if self.bank is not None:  # resumed inside stage 2: the checkpoint held the bank and the refit head
            self.encoder.requires_grad_(False)

    @override
    def configure_optimizers(self) -> list[torch.optim.Optimizer]:
        stage1 = torch.optim.Adam([*self.encoder.parameters(), *self.head.parameters()], lr=self.hparams.lr)
        return [stage1, make_head_optimizer(self.head, self.hparams.stage2_optimizer, self.hparams.stage2_lr)]

    # --------------------------------------------------------------------------------------------- training
    @override
    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        stage1_total, stage2_total = self.stage_steps()
        step = self.global_step
        if self.stage_at_epoch(self.current_epoch) == 1:
            opt = self.optimizers()[0]
            lr = scheduled_lr(step, stage1_total, self.hparams.lr)
            loss = stage1_step(self.encoder, self.head, opt, batch, lr, backward=self.manual_backward)
            self.log("train/loss_stage1", loss, prog_bar=True)
        else:
            if self.bank is None:
                self.build_bank()
            if self.bank.theta.device != self.device:
                self.bank = self.bank.to(self.device)  # once (the checkpoint holds a CPU copy)
            opt = self.optimizers()[1]
            loss = head_step(self.head, opt, self.bank, step - stage1_total, stage2_total, self.hparams.stage2_lr,
                             self.hparams.stage2_batch_size, self.hparams.seed)  # fmt: skip
            self.log("train/loss_stage2", loss, prog_bar=True)
        self.log("train/stage", float(self.stage_at_epoch(self.current_epoch)))
        return loss

    @override
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["pairs_bank"] = None if self.bank is None else self.bank.state()

    @override
    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        reopen_epoch_cut_by_max_steps(checkpoint)  # a fit cut by max_steps resumes the cut epoch, not the next
        state = checkpoint.get("pairs_bank")
        self.bank = None if state is None else EmbeddingBank(**state)

    # ------------------------------------------------------------------------------------------- validation
    @override
    def validation_step(self, batch: list[torch.Tensor], batch_idx: int, dataloader_idx: int = 0) -> None:
        theta, x = batch
        log_q = head_log_q_grid(self.encoder, self.head, self.grid, x, self.hparams.chunk_elements)
        log_p = self.simulator.log_posterior(self.grid, x.cpu()) if self.simulator.has_posterior else None
        self.val_scores[dataloader_idx].update(log_q, self.grid, theta, log_p)
        if batch_idx == 0:
            self.plot_cache[dataloader_idx] = (log_q[:3], theta[:3].cpu(), None if log_p is None else log_p[:3])

    @override
    def on_validation_epoch_end(self) -> None:
        self.finish_validation()

    def finish_validation(self) -> None:
        """Compute, log and reset the metrics of every validation N that has data (a no-op once done).

        Called by :meth:`on_validation_epoch_end` and by :meth:`make_figures`, because Lightning runs callback
        hooks (the :class:`~lightning_papers.callbacks.figures.FigureLogger`) before the module's own hook.
        """
        for n, scores in zip(self.val_sizes, self.val_scores):
            if not scores.updated:
                continue
            self.last_val[n] = scores.compute()
            for k, v in self.last_val[n].items():
                self.log(f"val/N{n}/{k}", v, add_dataloader_idx=False)
            scores.reset()

    def make_figures(self, stage: str) -> dict:
        """Posterior plots (exact vs learned, 1-D θ) per validation N, and coverage / KL against N."""
        from lightning_papers.methods.pairs.plots import coverage_kl_figure, posterior_figure

        if stage == "validate":
            self.finish_validation()
        figs = {}
        if self.simulator.theta_dim == 1 and self.plot_cache:
            figs["val/posteriors"] = posterior_figure(self.grid, self.val_sizes, self.plot_cache,
                                                      self.simulator.theta_names[0])  # fmt: skip
        if self.last_val:
            figs["val/coverage_kl_vs_N"] = coverage_kl_figure({"PAIRS": self.last_val})
        return figs

    # ------------------------------------------------------------------------------------------- prediction
    @override
    @torch.no_grad()
    def predict_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> dict[str, torch.Tensor]:
        """Posterior mean, sd and ``predict_samples`` samples for one user set ``{"x": [N, d]}``."""
        x = batch["x"][None].to(self.device)
        z = embed_sets(self.encoder, x, self.hparams.chunk_elements)
        samples = self.head.sample(self.hparams.predict_samples, z, math.log(x.shape[1]))[:, 0]
        return {"mean": samples.mean(0), "sd": samples.std(0), "samples": samples, "set_size": x.shape[1]}
