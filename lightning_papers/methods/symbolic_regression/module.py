"""``SymbolicRegressionModule``: the symbolic-unit network trained on derivative targets, read out as ODEs.

The algorithm lives in the other files of this folder (network, loss and schedule, derivative targets, readout);
this class wires it to Lightning. All training data is used in every step (full batch), so the train loader
of :class:`~lightning_papers.datamodules.trajectories.TrajectoryDataModule` is only a clock; the derivative
targets are computed once in ``setup``. Each validation reads the equations out, logs them (text, LaTeX, JSON
files next to the figures, a W&B table when W&B logs the run) with the number of terms, the active weights, the
held-out trajectory error and, when the datamodule knows the true equations, exact structure and the largest
relative coefficient error.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch
from lightning.pytorch import LightningModule
from lightning.pytorch.utilities import rank_zero_info
from typing_extensions import override

from lightning_papers.contracts import check_datamodule
from lightning_papers.methods.symbolic_regression.config import SymbolicConfig
from lightning_papers.methods.symbolic_regression.derivatives import training_arrays
from lightning_papers.methods.symbolic_regression.evaluation import (
    compare,
    parse_equations,
    simulate_equations,
    simulate_error,
)
from lightning_papers.methods.symbolic_regression.network import SymbolicNetwork
from lightning_papers.methods.symbolic_regression.readout import Equations, read_out
from lightning_papers.methods.symbolic_regression.training import (
    apply_mask,
    build_optimizer,
    n_active,
    to_tensors,
    training_loss,
)
from lightning_papers.plotting import figure_dir, wandb_loggers


@runtime_checkable
class TrajectorySource(Protocol):
    """What the module reads from its datamodule after ``setup`` (``TrajectoryDataModule`` satisfies it)."""

    train_trajectories: list
    val_trajectories: list
    state_names: list
    clean: bool


class SymbolicRegressionModule(LightningModule):
    """Neural symbolic regression of an ODE dx/dt = f(x) from sampled trajectories.

    Args:
        config: Network sizes, schedule, derivative targets and readout (see ``SymbolicConfig``); None uses the
            defaults. ``config.steps`` is the schedule's length: set the trainer's ``max_steps`` to it (a smaller
            ``max_steps`` stops the same schedule early; a larger one is refused).
        history_every: Record the fit loss and the active-weight count every this many steps (for the figure).
        num_threads: If set, ``torch.set_num_threads`` at setup (one thread suits the tiny network on a small CPU).
    """

    def __init__(self, config: SymbolicConfig | None = None, history_every: int = 20, num_threads: int | None = None):
        super().__init__()
        if history_every < 1:
            raise ValueError(f"history_every must be >= 1, got {history_every}")
        if isinstance(config, dict):  # from a checkpoint's hyper-parameters
            config = SymbolicConfig(**config)
        self.cfg = config if config is not None else SymbolicConfig()
        # plain values only, so checkpoints load with torch.load(weights_only=True)
        self.save_hyperparameters(
            {"config": asdict(self.cfg), "history_every": history_every, "num_threads": num_threads}
        )
        self.net: SymbolicNetwork | None = None
        self.data: dict[str, torch.Tensor] = {}
        self.arrays: dict[str, np.ndarray] = {}
        self.history: dict[str, list[float]] = {"step": [], "fit": [], "active": []}
        self.equations: Equations | None = None
        self.truth: Equations | None = None
        self._sims: list[tuple[Any, np.ndarray | None]] = []

    @override
    def setup(self, stage: str) -> None:
        if self.hparams.num_threads is not None:
            torch.set_num_threads(self.hparams.num_threads)
        dm = self.trainer.datamodule
        check_datamodule(dm, TrajectorySource, type(self).__name__)
        dm.setup(stage)
        if self.net is not None:
            return
        cfg = self.cfg
        method = cfg.derivative if cfg.derivative != "auto" else ("central" if dm.clean else "savgol")
        self.names = list(dm.state_names)
        self.arrays = training_arrays(
            dm.train_trajectories, method, cfg.savgol_window, cfg.savgol_order, cfg.max_points, cfg.rk4_window
        )
        self.data = to_tensors(self.arrays)
        self.net = SymbolicNetwork(len(self.names), cfg)
        self.net.set_scales(self.data["x"], self.data["dxdt"])
        truth = getattr(dm, "true_equations", None)
        self.truth = parse_equations(self.names, truth) if truth else None
        self.horizon = getattr(dm, "eval_horizon", None)
        self.val_trajectories = list(dm.val_trajectories)
        max_steps = self.trainer.max_steps
        if max_steps not in (-1, None) and max_steps > cfg.steps:
            raise ValueError(
                f"trainer.max_steps ({max_steps}) is beyond the schedule's end, config.steps ({cfg.steps}); set them "
                "equal (a smaller max_steps stops the same schedule early, e.g. to resume later)"
            )

    @override
    def on_fit_start(self) -> None:
        self.data = {k: v.to(self.device) for k, v in self.data.items()}

    @override
    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        step = self.global_step
        if step == self.cfg.mask_step:
            rank_zero_info(f"[symbolic] step {step}: {apply_mask(self.net, self.cfg.mask_threshold)} weights kept")
        loss, parts = training_loss(self.net, self.data, self.cfg, step)
        self.log_dict({"train/fit": parts["fit"], "train/penalty": parts["penalty"]})
        self.log("train/loss", loss, prog_bar=True)
        if step % self.hparams.history_every == 0:
            active = n_active(self.net, self.cfg.mask_threshold)
            self.log("train/active_weights", float(active))
            for key, val in (("step", step), ("fit", float(parts["fit"])), ("active", active)):
                self.history[key].append(float(val))
        return loss

    def read_equations(self) -> Equations:
        """Read the current network out as equations (one sympy pass + threshold sweep on the training data)."""
        self.net.cpu()
        cfg = self.cfg
        prune = cfg.prune_tol if self.global_step >= cfg.mask_step else max(cfg.prune_tol, cfg.mask_threshold)
        eq = read_out(self.net, self.names, self.arrays["x"], self.arrays["dxdt"], cfg, prune)
        self.net.to(self.device)
        return eq

    def evaluate(self) -> dict[str, float]:
        """Read out, simulate the equations from each held-out initial condition, compare with the truth."""
        eq = self.equations = self.read_equations()
        out: dict[str, float] = {
            "n_terms": float(sum(len(t) for t in eq.terms())),
            "active_weights": float(n_active(self.net, self.cfg.mask_threshold)),
        }
        errs, self._sims = [], []
        for tr in self.val_trajectories:
            n = len(tr.t) if self.horizon is None else min(len(tr.t), int(round(self.horizon / tr.dt)) + 1)
            errs.append(simulate_error(eq, tr.t[:n], tr.x[:n]))
            self._sims.append((tr, simulate_equations(eq, tr.t, tr.x[0])))
        out["heldout_error"] = float(np.mean(errs)) if errs else math.nan
        if self.truth is not None:
            exact, err = compare(eq, self.truth)
            out.update(exact=float(exact), max_coef_error=err)
        return out

    def _log_equations(self) -> None:
        eq = self.equations
        rank_zero_info("[symbolic] step {}:\n  {}".format(self.global_step, "\n  ".join(eq.text())))
        if self._trainer is None or not self.trainer.is_global_zero:
            return
        out = figure_dir(self.trainer)
        out.mkdir(parents=True, exist_ok=True)
        stem = out / f"equations_step{self.global_step:06d}"
        stem.with_suffix(".json").write_text(eq.to_json())
        stem.with_suffix(".txt").write_text("\n".join(eq.text() + eq.latex()) + "\n")
        rows = [[n, t, l] for n, t, l in zip(eq.names, eq.text(), eq.latex())]
        for logger in wandb_loggers(self.trainer.loggers):
            logger.log_text(key="equations", columns=["state", "equation", "latex"], data=rows, step=self.global_step)

    @override
    def validation_step(self, batch: Any, batch_idx: int) -> None:
        metrics = self.evaluate()
        self.log("val/heldout_error", metrics.pop("heldout_error"), prog_bar=True, sync_dist=True)
        self.log_dict({f"val/{k}": v for k, v in metrics.items()}, sync_dist=True)
        self._log_equations()

    @override
    def test_step(self, batch: Any, batch_idx: int) -> None:
        self.log_dict({f"test/{k}": v for k, v in self.evaluate().items()}, sync_dist=True)
        self._log_equations()

    def make_figures(self, stage: str) -> dict[str, Any]:
        """Held-out trajectories simulated from the discovered equations vs data, and loss/sparsity history."""
        from lightning_papers.methods.symbolic_regression.plots import history_figure, trajectory_figure

        if self.equations is None:
            return {}
        key = "val" if stage == "validate" else stage
        return {
            f"{key}/trajectories": trajectory_figure(self._sims, self.names, self.equations.text(3)),
            f"{key}/loss_sparsity": history_figure(self.history, self.cfg),
        }

    @override
    def configure_optimizers(self) -> dict[str, Any]:
        opt, sched = build_optimizer(self.net, self.cfg)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    @override
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["symbolic_history"] = json.loads(json.dumps(self.history))

    @override
    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.history = checkpoint.get("symbolic_history", self.history)
