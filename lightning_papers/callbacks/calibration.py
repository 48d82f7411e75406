"""``AdaptiveCalibration``: recalibrate a binary classifier's streamed probabilities with adaptive calibrated
forecasters (Liu, Luo, Ratliff 2026), during validation / test, and apply the frozen result in predict.

The paper's forecaster is context-free (it calibrates one coin). To recalibrate a classifier, the raw score range
[0, 1] is cut into ``n_groups`` equal groups and each group gets its own
:class:`~lightning_papers.methods.adaptive_calibration.AdaptiveCalibrator` (per-bin online recalibration,
``shared/research/online.md`` §D). Each (probability, label) pair is processed in stream order: the calibrated
probability is the group's forecast *before* it sees the label, then the group's calibrator is updated.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Literal

import numpy as np
import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from torchmetrics.classification import BinaryCalibrationError

from lightning_papers.methods.adaptive_calibration.adaptive import AdaptiveCalibrator
from lightning_papers.metrics.calibration import (
    OnlineCalibrationError,
    check_labels,
    check_probabilities,
    reliability_figure,
)

_STAGES = ("validate", "test")
_PREFIX = {"validate": "val_cal", "test": "test_cal"}


class AdaptiveCalibration(Callback):
    """Online recalibration of a binary classifier with one adaptive calibrated forecaster per raw-score group.

    Contract: ``validation_step`` / ``test_step`` return a dict with the probabilities of the positive class under
    ``prob_key`` and the 0/1 labels under ``target_key`` (or pass ``extract_fn(outputs, batch) -> (probs, target)``).
    ``predict_step`` returns a dict with ``prob_key``; the callback adds ``"calibrated_probs"`` to it.

    Logged at each epoch end (``val_cal/*`` or ``test_cal/*``): ``raw_l1_per_T``, ``l1_per_T``, ``raw_l2_per_T``,
    ``l2_per_T`` (exact online errors / T; raw scores are grouped on a 1/4096 lattice), ``raw_ece`` and ``ece``
    (torchmetrics binned ECE), plus a reliability diagram (PNG, and W&B image when a WandbLogger is attached).
    The calibrators persist across epochs as one long stream, are saved in checkpoints and resume exactly. Under
    DDP every batch is all-gathered (equal batch sizes per rank, as the DistributedSampler gives) so every rank
    plays the identical ordered stream and holds identical calibrators.

    Args:
        n_groups: Number of equal raw-score groups, each with its own calibrator.
        measure: Rate the calibrators' grids are tuned for (``"l1"`` or ``"l2"``).
        variant: ``"refine"`` (practical) or ``"restart"`` (faithful) adaptive calibrator.
        stages: Which loops stream pairs through the calibrators: ``"validate"`` and/or ``"test"``.
        prob_key: Key of the probabilities in the step outputs.
        target_key: Key of the labels in the step outputs.
        n_bins: Bins of the torchmetrics ECE.
        first_epoch: L_0 of each calibrator.
        seed: Seed of the calibrators (group g uses ``seed + g``).
        log_figures: Log a reliability diagram at each epoch end.
        extract_fn: Optional ``(outputs, batch) -> (probs, target)`` for other output formats.

    Example::

        trainer = Trainer(callbacks=[AdaptiveCalibration(n_groups=10)])
        trainer.fit(model, datamodule)          # validation_step returns {"probs": p, "target": y}
        preds = trainer.predict(model, loader)  # each output dict gains "calibrated_probs"
    """

    def __init__(
        self,
        n_groups: int = 10,
        measure: Literal["l1", "l2"] = "l1",
        variant: Literal["refine", "restart"] = "refine",
        stages: Sequence[str] = ("validate", "test"),
        prob_key: str = "probs",
        target_key: str = "target",
        n_bins: int = 15,
        first_epoch: int = 32,
        seed: int = 0,
        log_figures: bool = True,
        extract_fn: Callable[[Any, Any], tuple[torch.Tensor, torch.Tensor]] | None = None,
    ) -> None:
        if n_groups < 1:
            raise ValueError(f"n_groups must be a positive integer, got {n_groups}")
        bad = [s for s in stages if s not in _STAGES]
        if bad or not stages:
            raise ValueError(f"stages must be a non-empty subset of {_STAGES}, got {list(stages)}")
        if n_bins < 1:
            raise ValueError(f"n_bins must be a positive integer, got {n_bins}")
        self.n_groups, self.measure, self.variant = n_groups, measure, variant
        self.stages, self.prob_key, self.target_key = tuple(stages), prob_key, target_key
        self.n_bins, self.first_epoch, self.seed = n_bins, first_epoch, seed
        self.log_figures, self.extract_fn = log_figures, extract_fn
        self.calibrators = [
            AdaptiveCalibrator(variant=variant, measure=measure, first_epoch=first_epoch, seed=seed + g)
            for g in range(n_groups)
        ]
        self.counts = [0] * n_groups
        self.rounds = 0
        self.last_results: dict[str, dict[str, float]] = {}
        self._reset_epoch()

    @property
    def state_key(self) -> str:
        return self._generate_state_key(n_groups=self.n_groups, measure=self.measure, variant=self.variant)

    # ---------------------------------------------------------------- core (usable without a Trainer)
    def _groups(self, raw: np.ndarray) -> np.ndarray:
        return np.minimum((raw * self.n_groups).astype(np.int64), self.n_groups - 1)

    def process(self, probs: torch.Tensor | np.ndarray, target: torch.Tensor | np.ndarray) -> np.ndarray:
        """Stream (probability, label) pairs in order; returns each pair's calibrated probability (made before
        its label was seen) and updates the calibrators."""
        raw = _to_numpy(probs)
        y = _to_numpy(target)
        if raw.shape != y.shape:
            raise ValueError(f"probabilities and labels must have the same size, got {raw.size} and {y.size}")
        check_probabilities(raw, "probabilities")
        check_labels(y, "labels")
        out = np.empty_like(raw)
        cals, counts = self.calibrators, self.counts
        for i, (g, yt) in enumerate(zip(self._groups(raw).tolist(), y.tolist())):
            cal = cals[g]
            out[i] = cal.predict()
            cal._update(yt)
            counts[g] += 1
        self.rounds += raw.size
        return out

    def calibrate(self, probs: torch.Tensor | np.ndarray) -> np.ndarray:
        """Apply the frozen calibrators: each group's mean forecast (raw score where a group saw no data yet)."""
        raw = _to_numpy(probs)
        check_probabilities(raw, "probabilities")
        table = np.array([c.expected_forecast() if n else np.nan for c, n in zip(self.calibrators, self.counts)])
        cal = table[self._groups(raw)]
        return np.where(np.isnan(cal), raw, cal)

    # ---------------------------------------------------------------- per-epoch bookkeeping
    def _reset_epoch(self) -> None:
        kw = {"sync_on_compute": False}  # every rank already holds the full gathered stream
        self._metrics = {
            "raw_l1": OnlineCalibrationError("l1", per_round=True, **kw),
            "l1": OnlineCalibrationError("l1", per_round=True, **kw),
            "raw_l2": OnlineCalibrationError("l2", per_round=True, **kw),
            "l2": OnlineCalibrationError("l2", per_round=True, **kw),
            "raw_ece": BinaryCalibrationError(n_bins=self.n_bins, **kw),
            "ece": BinaryCalibrationError(n_bins=self.n_bins, **kw),
        }
        self._epoch: dict[str, list[np.ndarray]] = {"raw": [], "cal": [], "y": []}

    def _extract(self, outputs: Any, batch: Any) -> tuple[Any, Any]:
        if self.extract_fn is not None:
            return self.extract_fn(outputs, batch)
        if not isinstance(outputs, dict) or self.prob_key not in outputs or self.target_key not in outputs:
            raise ValueError(
                f"AdaptiveCalibration needs the step to return a dict with {self.prob_key!r} and {self.target_key!r}"
                f" (or an extract_fn); got {type(outputs).__name__}"
                + (f" with keys {sorted(outputs)}" if isinstance(outputs, dict) else "")
            )
        return outputs[self.prob_key], outputs[self.target_key]

    def _on_batch(self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, stage: str) -> None:
        if trainer.sanity_checking or stage not in self.stages:
            return
        probs, target = self._extract(outputs, batch)
        probs = torch.as_tensor(probs).detach().reshape(-1).double()
        target = torch.as_tensor(target).detach().reshape(-1).double()
        if trainer.world_size > 1:  # one identical ordered stream on every rank (rank-major order)
            probs = pl_module.all_gather(probs).reshape(-1)
            target = pl_module.all_gather(target).reshape(-1)
        raw, y = probs.cpu(), target.cpu()
        cal = torch.from_numpy(self.process(raw, y))
        for key, p in (("raw_l1", raw), ("l1", cal), ("raw_l2", raw), ("l2", cal)):
            self._metrics[key].update(p, y)
        self._metrics["raw_ece"].update(raw.float(), y.long())
        self._metrics["ece"].update(cal.float(), y.long())
        for key, arr in (("raw", raw.numpy()), ("cal", cal.numpy()), ("y", y.numpy())):
            self._epoch[key].append(arr)

    def _on_epoch_end(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if trainer.sanity_checking or stage not in self.stages or not self._epoch["y"]:
            return
        prefix = _PREFIX[stage]
        results = {f"{prefix}/{k}" + ("_per_T" if "ece" not in k else ""): float(m.compute())
                   for k, m in self._metrics.items()}  # fmt: skip
        self.last_results[stage] = results
        pl_module.log_dict(results, sync_dist=False)
        if self.log_figures and trainer.is_global_zero:
            from lightning_papers.plotting import log_figure

            raw, cal, y = (np.concatenate(self._epoch[k]) for k in ("raw", "cal", "y"))
            fig = reliability_figure(cal, y, n_bins=self.n_bins, title=f"{stage}: adaptive recalibration",
                                     extra={"raw": raw})  # fmt: skip
            log_figure(trainer, f"{prefix}/reliability", fig)
        self._reset_epoch()

    # ---------------------------------------------------------------- hooks
    def on_validation_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._reset_epoch()

    def on_test_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._reset_epoch()

    def on_validation_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:  # fmt: skip
        self._on_batch(trainer, pl_module, outputs, batch, "validate")

    def on_test_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:  # fmt: skip
        self._on_batch(trainer, pl_module, outputs, batch, "test")

    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._on_epoch_end(trainer, pl_module, "validate")

    def on_test_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._on_epoch_end(trainer, pl_module, "test")

    def on_predict_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:  # fmt: skip
        if not isinstance(outputs, dict) or self.prob_key not in outputs:
            raise ValueError(
                f"AdaptiveCalibration in predict needs predict_step to return a dict with {self.prob_key!r}, "
                f"got {type(outputs).__name__}"
            )
        probs = torch.as_tensor(outputs[self.prob_key])
        cal = self.calibrate(probs.detach().reshape(-1))
        outputs["calibrated_probs"] = torch.from_numpy(cal).to(probs.dtype).reshape(probs.shape)

    # ---------------------------------------------------------------- state
    def state_dict(self) -> dict[str, Any]:
        return {
            "calibrators": [c.state_dict() for c in self.calibrators],
            "counts": list(self.counts),
            "rounds": self.rounds,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if len(state_dict["calibrators"]) != self.n_groups:
            raise ValueError(
                f"checkpoint has {len(state_dict['calibrators'])} calibrator groups, this callback {self.n_groups}"
            )
        for cal, s in zip(self.calibrators, state_dict["calibrators"]):
            cal.load_state_dict(s)
        self.counts = [int(c) for c in state_dict["counts"]]
        self.rounds = int(state_dict["rounds"])


def _to_numpy(x: torch.Tensor | np.ndarray) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().double().numpy().reshape(-1)
    return np.asarray(x, dtype=np.float64).reshape(-1)
