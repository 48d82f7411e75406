"""``AdaptiveCalibrationModule``: the online calibration protocol as a (thin) LightningModule.

There is no gradient training: each training batch is a chunk of the stream, played round by round by a
forecaster (``predict`` then ``update``). A no-op optimizer (learning rate 0 on a frozen placeholder) is stepped once
per batch only so that ``global_step`` counts batches: logging steps, checkpoints and resume then behave as usual.
The module logs the running ℓ1/T and ℓ2/T calibration error and
torchmetrics' binned ECE of the forecasts (and of the reference: the true means for generated streams, the user's
probabilities for a CSV), and at the end of each epoch the plots: forecast vs true mean over time, running ℓ1/T,
and a reliability diagram.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import torch
from lightning.pytorch import LightningModule
from torchmetrics.classification import BinaryCalibrationError

from lightning_papers.methods.adaptive_calibration.adaptive import AdaptiveCalibrator
from lightning_papers.methods.adaptive_calibration.base import Forecaster
from lightning_papers.methods.adaptive_calibration.baselines import (
    OracleForecaster,
    RoundedRunningMean,
    RunningMean,
    UniformGridCalibrator,
)
from lightning_papers.metrics.calibration import OnlineCalibrationError, l1_calibration_error, reliability_figure

ForecasterName = Literal["adaptive", "adaptive_restart", "uniform", "running_mean", "rounded_mean", "oracle"]


def make_forecaster(
    name: str,
    horizon: int,
    measure: Literal["l1", "l2"] = "l1",
    seed: int = 0,
    **adaptive_kwargs: Any,
) -> Forecaster:
    """Build a forecaster by name (``adaptive``, ``adaptive_restart``, ``uniform``, ``running_mean``,
    ``rounded_mean``, ``oracle``); ``horizon`` is T (used by the uniform grid)."""
    if name in ("adaptive", "adaptive_restart"):
        variant = "restart" if name == "adaptive_restart" else "refine"
        return AdaptiveCalibrator(variant=variant, measure=measure, seed=seed, **adaptive_kwargs)
    if name == "uniform":
        return UniformGridCalibrator(horizon, seed=seed, lazy=adaptive_kwargs.get("lazy", 0.0625))
    if name == "running_mean":
        return RunningMean()
    if name == "rounded_mean":
        return RoundedRunningMean()
    if name == "oracle":
        return OracleForecaster()
    raise ValueError(f"unknown forecaster {name!r}; expected one of {ForecasterName.__args__}")


class AdaptiveCalibrationModule(LightningModule):
    """Plays a binary stream with one forecaster and logs its calibration (paper: Liu, Luo, Ratliff 2026).

    Args:
        forecaster: ``adaptive`` (refine variant), ``adaptive_restart``, ``uniform`` (N ≈ T^{1/3} grid),
            ``running_mean``, ``rounded_mean`` (0.01 grid) or ``oracle`` (predicts the reference μ_t).
        measure: Rate the adaptive grid is tuned for (``l1`` or ``l2``).
        horizon: T for the uniform grid; ``None`` takes the datamodule's ``length``.
        first_epoch: L_0 of the adaptive forecaster (notes §A4: 16–32).
        radius_scale: Fine-zone radius factor c (notes §A4: 0.5–1).
        detect_scale: Change-detection threshold factor κ (0 = off).
        detect_window: Longest recent window of the windowed change test (0 = epoch-mean test only).
        budget_block: Block length for the doubling guess of C (0 = off).
        lazy: Fraction of rounds between recomputations of the inner distribution (0 = every round).
        seed: Seed of the forecaster's sampling.
        n_bins: Bins of the torchmetrics ECE logged next to the exact errors.
    """

    def __init__(
        self,
        forecaster: ForecasterName = "adaptive",
        measure: Literal["l1", "l2"] = "l1",
        horizon: int | None = None,
        first_epoch: int = 32,
        radius_scale: float = 0.5,
        detect_scale: float = 0.6,
        detect_window: int = 1024,
        budget_block: int = 256,
        lazy: float = 0.0625,
        seed: int = 0,
        n_bins: int = 15,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.automatic_optimization = False
        self.forecaster_name = forecaster
        self.adaptive_kwargs = dict(
            first_epoch=first_epoch, radius_scale=radius_scale, detect_scale=detect_scale,
            detect_window=detect_window, budget_block=budget_block, lazy=lazy,
        )  # fmt: skip
        self.measure, self.horizon, self.seed = measure, horizon, seed
        if forecaster != "uniform" or horizon is not None:
            self.forecaster = make_forecaster(forecaster, horizon or 1, measure, seed, **self.adaptive_kwargs)
        else:
            self.forecaster = None  # built in setup, once the datamodule's length is known
        self.metrics = torch.nn.ModuleDict(
            {
                "l1": OnlineCalibrationError("l1", per_round=True),
                "l2": OnlineCalibrationError("l2", per_round=True),
                "ece": BinaryCalibrationError(n_bins=n_bins),
                "ref_l1": OnlineCalibrationError("l1", per_round=True),
                "ref_ece": BinaryCalibrationError(n_bins=n_bins),
            }
        )
        for m in self.metrics.values():
            m.persistent(True)
        self.step_counter = torch.nn.Parameter(torch.zeros(1), requires_grad=False)
        self.history: dict[str, list[np.ndarray]] = {"p": [], "y": [], "ref": []}
        self.curve: list[tuple[int, float]] = []

    def setup(self, stage: str) -> None:
        if self.trainer is not None and self.trainer.world_size > 1:
            raise ValueError(
                "AdaptiveCalibrationModule plays one sequential stream and runs on a single device; got world_size="
                f"{self.trainer.world_size}. For multi-device calibration of a classifier use the AdaptiveCalibration "
                "callback."
            )
        if self.forecaster is None:
            dm = getattr(self.trainer, "datamodule", None)
            length = getattr(dm, "length", None)
            if length is None:
                raise ValueError("forecaster='uniform' needs horizon=T or a datamodule with a 'length' attribute")
            self.horizon = int(length)
            self.forecaster = make_forecaster("uniform", self.horizon, self.measure, self.seed, **self.adaptive_kwargs)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD([self.step_counter], lr=0.0)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        y_t, ref_t = batch
        y = y_t.detach().cpu().double().numpy()
        ref = ref_t.detach().cpu().double().numpy()
        p = self.forecaster.run(y, ref)
        p_t = torch.from_numpy(p)
        y_cpu = torch.from_numpy(y)
        for key, preds in (("l1", p_t), ("l2", p_t), ("ref_l1", torch.from_numpy(ref))):
            self.metrics[key].update(preds, y_cpu)
        self.metrics["ece"].update(p_t.float(), y_cpu.long())
        self.metrics["ref_ece"].update(torch.from_numpy(ref).float(), y_cpu.long())
        for k, v in (("p", p), ("y", y), ("ref", ref)):
            self.history[k].append(v)
        rounds = int(self.metrics["l1"].count.sum().item())
        l1 = float(self.metrics["l1"].compute())
        self.curve.append((rounds, l1))
        self.log_dict(
            {"train/l1_per_T": l1, "train/l2_per_T": float(self.metrics["l2"].compute()), "train/rounds": rounds},
            on_step=True,
            on_epoch=False,
            batch_size=len(y),
        )
        self.optimizers().step()  # no-op (lr 0, no gradient); advances global_step by one batch
        return None

    def on_train_epoch_end(self) -> None:
        results = {
            "train/ece": float(self.metrics["ece"].compute()),
            "train/reference_l1_per_T": float(self.metrics["ref_l1"].compute()),
            "train/reference_ece": float(self.metrics["ref_ece"].compute()),
        }
        if self.history["y"]:
            p, y = np.concatenate(self.history["p"]), np.concatenate(self.history["y"])
            results["train/l1_exact_per_T"] = l1_calibration_error(p, y) / y.size
        self.log_dict(results)
        if self.trainer is not None and not self.trainer.sanity_checking:
            from lightning_papers.plotting import log_figure

            for key, fig in self.make_figures("train").items():
                log_figure(self.trainer, key, fig)

    def make_figures(self, stage: str) -> dict[str, Any]:
        """Forecast vs reference over time, running ℓ1/T, and a reliability diagram of this run so far."""
        import matplotlib.pyplot as plt

        if not self.history["y"]:
            return {}
        p, y, ref = (np.concatenate(self.history[k]) for k in ("p", "y", "ref"))
        t = np.arange(1, y.size + 1)
        fig1, ax = plt.subplots(figsize=(7, 3))
        step = max(1, y.size // 4000)
        ax.plot(t[::step], p[::step], ".", ms=1.5, alpha=0.4, label=f"forecast ({self.forecaster_name})")
        ax.plot(t, ref, "k-", lw=1, label="reference μ_t")
        ax.set_xlabel("round t")
        ax.set_ylabel("probability")
        ax.legend(fontsize=8, loc="upper right")
        fig2, ax2 = plt.subplots(figsize=(5, 3))
        rounds, l1 = zip(*self.curve)
        ax2.plot(rounds, l1, "-")
        ax2.set_xlabel("round t")
        ax2.set_ylabel("running ℓ1 calibration / t")
        fig3 = reliability_figure(p, y, title=f"{self.forecaster_name}", extra={"reference": ref})
        return {f"{stage}/forecast_vs_mean": fig1, f"{stage}/l1_curve": fig2, f"{stage}/reliability": fig3}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["forecaster"] = self.forecaster.state_dict()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if self.forecaster is None:
            self.forecaster = make_forecaster("uniform", self.horizon or 1, self.measure, self.seed)
        self.forecaster.load_state_dict(checkpoint["forecaster"])
