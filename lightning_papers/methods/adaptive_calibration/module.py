"""``CalibrationStreamModule``: the online calibration protocol as a (thin) LightningModule.

There is no gradient training: each training batch is a chunk of the stream, played round by round by a
forecaster (``predict`` then ``update``). A no-op optimizer (learning rate 0, never a gradient) is stepped once per
batch only so that ``global_step`` counts batches: logging steps, checkpoints and resume then behave as usual.
The module logs the running ℓ1/T and ℓ2/T calibration error and torchmetrics' binned ECE of the forecasts (and of
the reference: the true means for generated streams, the user's probabilities for a CSV), and at the end of each
epoch the plots: forecast vs true mean over time, running ℓ1/T, and a reliability diagram with per-bin counts.

Exact resume: the checkpoint holds the forecaster, the metrics, the history the plots and the exact ℓ1 are made
from, and (through :class:`~lightning_papers.datamodules.streams.StreamBatches`) the stream position, so a run
resumed from a checkpoint at any step plays the rest of the stream and ends as an uninterrupted run would.

DDP: the stream is sequential, so every rank plays the same whole stream (the stream loader is not split by a
``DistributedSampler``) and holds the same forecaster; the metrics are not reduced across ranks (each rank already
has all of them) and only rank 0 draws figures. More devices therefore add no speed, only agreement with a
multi-device Trainer; the callback :class:`lightning_papers.callbacks.AdaptiveCalibration` works the same way.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch
from lightning.pytorch import LightningModule
from torchmetrics.classification import BinaryCalibrationError
from typing_extensions import override

from lightning_papers.contracts import check_datamodule
from lightning_papers.methods.adaptive_calibration.config import CalibrationEpochsConfig
from lightning_papers.methods.adaptive_calibration.forecasters import FORECASTERS, ForecasterName, build_forecaster
from lightning_papers.metrics.calibration import OnlineCalibrationError, l1_calibration_error, reliability_figure

_HISTORY = ("p", "y", "ref")


@runtime_checkable
class StreamLength(Protocol):
    """What the module needs from its datamodule, only for ``forecaster="uniform"`` without ``horizon``."""

    length: int | None


class CalibrationStreamModule(LightningModule):
    """Plays a binary stream with one forecaster and logs its calibration (Liu, Luo, Ratliff 2026).

    Args:
        forecaster: ``adaptive`` (the calibration-epochs forecaster with ``calibrator``), ``adaptive_restart``
            (the same, ``variant="restart"``), ``uniform`` (N ≈ T^{1/3} grid), ``running_mean``, ``rounded_mean``
            (0.01 grid) or ``oracle`` (predicts the reference μ_t).
        calibrator: Hyper-parameters of the calibration-epochs forecaster (``uniform`` reads its ``lazy``).
        horizon: T for the uniform grid; ``None`` takes the datamodule's ``length``.
        seed: Seed of the forecaster's sampling.
        n_bins: Bins of the torchmetrics ECE and of the reliability diagram.
    """

    def __init__(
        self,
        forecaster: ForecasterName = "adaptive",
        calibrator: CalibrationEpochsConfig | None = None,
        horizon: int | None = None,
        seed: int = 0,
        n_bins: int = 15,
    ) -> None:
        super().__init__()
        if forecaster not in FORECASTERS:
            raise ValueError(f"unknown forecaster {forecaster!r}; expected one of {FORECASTERS}")
        if isinstance(calibrator, dict):  # a checkpoint's hyper-parameters hold the config as a plain dict
            calibrator = CalibrationEpochsConfig(**calibrator)
        self.config = CalibrationEpochsConfig() if calibrator is None else calibrator
        if horizon is not None and horizon < 1:
            raise ValueError(f"horizon must be a positive integer or None, got {horizon}")
        if n_bins < 1:
            raise ValueError(f"n_bins must be a positive integer, got {n_bins}")
        calibrator = self.config.to_dict()  # saved as plain values: checkpoints load with weights_only=True
        self.save_hyperparameters()
        self.automatic_optimization = False
        self.forecaster_name, self.horizon, self.seed = forecaster, horizon, seed
        self.forecaster = None if forecaster == "uniform" and horizon is None else self._build()
        # every rank plays the whole stream, so the metrics are never reduced across ranks
        kw = {"sync_on_compute": False}
        self.metrics = torch.nn.ModuleDict(
            {
                "l1": OnlineCalibrationError("l1", per_round=True, **kw),
                "l2": OnlineCalibrationError("l2", per_round=True, **kw),
                "ece": BinaryCalibrationError(n_bins=n_bins, **kw),
                "ref_l1": OnlineCalibrationError("l1", per_round=True, **kw),
                "ref_ece": BinaryCalibrationError(n_bins=n_bins, **kw),
            }
        )
        for m in self.metrics.values():
            m.persistent(True)
        # the no-op optimizer's parameter; it "requires" a gradient only so DDP accepts the module (none is made)
        self.step_counter = torch.nn.Parameter(torch.zeros(1))
        self.history: dict[str, list[np.ndarray]] = {k: [] for k in _HISTORY}
        self.curve: list[tuple[int, float]] = []

    def _build(self) -> Any:
        return build_forecaster(self.forecaster_name, self.config, horizon=self.horizon, seed=self.seed)

    @override
    def setup(self, stage: str) -> None:
        if self.forecaster is None:  # uniform grid: T comes from the stream
            dm = self.trainer.datamodule
            check_datamodule(dm, StreamLength, type(self).__name__)
            if dm.length is None:
                raise ValueError("forecaster='uniform' needs horizon=T or a datamodule whose 'length' is set in setup")
            self.horizon = int(dm.length)
            self.forecaster = self._build()

    @override
    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD([self.step_counter], lr=0.0)

    @override
    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        y_t, ref_t = batch
        y = y_t.detach().cpu().double().numpy()
        ref = ref_t.detach().cpu().double().numpy()
        p = self.forecaster.run(y, ref)
        p_t, y_cpu, ref_cpu = torch.from_numpy(p), torch.from_numpy(y), torch.from_numpy(ref)
        for key, preds in (("l1", p_t), ("l2", p_t), ("ref_l1", ref_cpu)):
            self.metrics[key].update(preds, y_cpu)
        self.metrics["ece"].update(p_t.float(), y_cpu.long())
        self.metrics["ref_ece"].update(ref_cpu.float(), y_cpu.long())
        for k, v in zip(_HISTORY, (p, y, ref)):
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

    @override
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
        if self.trainer.is_global_zero and not self.trainer.sanity_checking:
            from lightning_papers.plotting import log_figure

            for key, fig in self.make_figures("train").items():
                log_figure(self.trainer, key, fig)

    def make_figures(self, stage: str) -> dict[str, Any]:
        """Forecast vs reference over time, running ℓ1/T, and a reliability diagram of this run so far."""
        import matplotlib.pyplot as plt

        if not self.history["y"]:
            return {}
        p, y, ref = (np.concatenate(self.history[k]) for k in _HISTORY)
        t = np.arange(1, y.size + 1)
        fig1, ax = plt.subplots(figsize=(7, 3))
        step = max(1, y.size // 4000)
        ax.plot(t[::step], p[::step], ".", ms=1.5, alpha=0.4, label=f"forecast ({self.forecaster_name})")
        ax.plot(t, ref, "k-", lw=1, label="reference μ_t")
        ax.set_xlabel("round t")
        ax.set_ylabel("probability")
        ax.set_title(f"{self.forecaster_name}: exact ℓ1/T = {l1_calibration_error(p, y) / y.size:.4f}")
        ax.legend(fontsize=8, loc="upper right")
        fig2, ax2 = plt.subplots(figsize=(5, 3))
        rounds, l1 = zip(*self.curve)
        ax2.plot(rounds, l1, "-", label=f"forecast ({self.forecaster_name})")
        ax2.set_xlabel("round t")
        ax2.set_ylabel("running ℓ1 calibration / t")
        ax2.legend(fontsize=8)
        title = f"{self.forecaster_name}: ECE {float(self.metrics['ece'].compute()):.4f}"
        fig3 = reliability_figure(p, y, n_bins=self.hparams.n_bins, title=title,
                                  extra={"reference μ_t": ref}, label=f"forecast ({self.forecaster_name})")  # fmt: skip
        return {f"{stage}/forecast_vs_mean": fig1, f"{stage}/l1_curve": fig2, f"{stage}/reliability": fig3}

    # ----------------------------------------------------------------- checkpoints
    @override
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["forecaster"] = self.forecaster.state_dict()
        checkpoint["stream_history"] = {
            **{k: torch.from_numpy(np.concatenate(v)) if v else torch.zeros(0, dtype=torch.float64)
               for k, v in self.history.items()},
            "curve": torch.tensor(self.curve, dtype=torch.float64).reshape(-1, 2),
        }  # fmt: skip
        if "loops" in checkpoint:
            reopen_epoch_cut_short(checkpoint, self.trainer)

    @override
    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if self.forecaster is None:  # uniform grid without horizon: its T is in the saved state
            self.horizon = 1
            self.forecaster = self._build()
        self.forecaster.load_state_dict(checkpoint["forecaster"])
        saved = checkpoint.get("stream_history")
        if saved is not None:
            self.history = {k: [saved[k].numpy()] if saved[k].numel() else [] for k in _HISTORY}
            self.curve = [(int(r), float(v)) for r, v in saved["curve"].tolist()]


def reopen_epoch_cut_short(checkpoint: dict[str, Any], trainer: Any) -> None:
    """Mark an epoch that ``max_steps`` (or ``trainer.should_stop``) cut short as still running, in ``checkpoint``.

    When ``max_steps`` stops training in the middle of the stream, Lightning still ends the epoch (it calls
    ``on_train_epoch_end``, where ``ModelCheckpoint`` saves), so a resume with the same ``max_epochs`` would find the
    epoch done and play nothing. For a stream the epoch is the stream: here the saved fit-loop progress is set back
    to "mid-epoch" whenever fewer batches than the epoch holds were played, so the resumed run plays the rest.
    """
    fit_loop = trainer.fit_loop
    epoch = fit_loop.epoch_progress.current
    batches_done = fit_loop.epoch_loop.batch_progress.current.completed
    cut_short = epoch.processed == epoch.started and epoch.completed < epoch.processed
    if not cut_short or batches_done >= trainer.num_training_batches:
        return
    progress = checkpoint["loops"]["fit_loop"]["epoch_progress"]
    for key in ("current", "total"):
        progress[key]["processed"] -= 1
