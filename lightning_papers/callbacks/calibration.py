"""``AdaptiveCalibration``: recalibrate a binary classifier's streamed probabilities with adaptive calibrated
forecasters (Liu, Luo, Ratliff 2026), during validation / test, and apply the frozen result in predict.

The paper's forecaster is context-free (it calibrates one coin). To recalibrate a classifier, the raw score range
[0, 1] is cut into ``n_groups`` equal groups and each group gets its own
:class:`~lightning_papers.methods.adaptive_calibration.adaptive.CalibrationEpochsForecaster` (per-bin online
recalibration, as histogram binning does offline; ``docs/adaptive_calibration.md``). Each (probability, label) pair
is processed in stream order: the calibrated probability is the group's forecast *before* it sees the label, then
the group's calibrator is updated.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Literal

import numpy as np
import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torchmetrics.classification import BinaryCalibrationError
from typing_extensions import override

from lightning_papers.methods.adaptive_calibration.adaptive import CalibrationEpochsForecaster
from lightning_papers.methods.adaptive_calibration.config import CalibrationEpochsConfig
from lightning_papers.methods.adaptive_calibration.recalibration import monotone_logit_map
from lightning_papers.metrics.calibration import (
    OnlineCalibrationError,
    as_numpy,
    binned_ece_noise,
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
    (torchmetrics binned ECE), plus a reliability diagram (PNG, and W&B image when a WandbLogger is attached). It
    warns, naming both numbers, when the calibrated ECE of an epoch is worse than the raw ECE by more than its
    sampling noise (:func:`~lightning_papers.metrics.calibration.binned_ece_noise`, the larger of raw and calibrated).
    The calibrators persist across epochs as one long stream, are saved in checkpoints and resume exactly. Under
    DDP every batch is all-gathered (equal batch sizes per rank, as the DistributedSampler gives) so every rank
    plays the identical ordered stream and holds identical calibrators.

    Args:
        n_groups: Number of equal raw-score groups, each with its own calibrator.
        calibrator: Hyper-parameters of every group's calibration-epochs forecaster (``None``: the defaults of
            :class:`~lightning_papers.methods.adaptive_calibration.config.CalibrationEpochsConfig`).
        stages: Which loops stream pairs through the calibrators: ``"validate"`` and/or ``"test"``.
        prob_key: Key of the probabilities in the step outputs.
        target_key: Key of the labels in the step outputs.
        n_bins: Bins of the torchmetrics ECE and of the reliability diagram.
        mapping: How a raw score becomes a calibrated probability: ``"group"`` replaces it by its group's forecast
            (the calibrated forecast stream the paper bounds; only ``n_groups`` distinct values, ranking inside a
            group lost) or ``"interpolate"``, a strictly increasing map through the group forecasts that keeps the
            ranking, and so the AUROC, exactly
            (:mod:`~lightning_papers.methods.adaptive_calibration.recalibration`). With ``"interpolate"`` the map is
            fixed for a whole batch (it uses the labels of earlier batches only).
        min_rounds: A pair whose group has seen fewer pairs than this keeps its raw score (0: never).
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
        calibrator: CalibrationEpochsConfig | None = None,
        stages: Sequence[str] = ("validate", "test"),
        prob_key: str = "probs",
        target_key: str = "target",
        n_bins: int = 15,
        mapping: Literal["group", "interpolate"] = "group",
        min_rounds: int = 0,
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
        if mapping not in ("group", "interpolate"):
            raise ValueError(f"mapping must be 'group' or 'interpolate', got {mapping!r}")
        if min_rounds < 0:
            raise ValueError(f"min_rounds must be >= 0, got {min_rounds}")
        self.mapping, self.min_rounds = mapping, min_rounds
        self.config = CalibrationEpochsConfig() if calibrator is None else calibrator
        self.n_groups, self.stages = n_groups, tuple(stages)
        self.prob_key, self.target_key = prob_key, target_key
        self.n_bins, self.seed = n_bins, seed
        self.log_figures, self.extract_fn = log_figures, extract_fn
        self.calibrators = [CalibrationEpochsForecaster(self.config, seed=seed + g) for g in range(n_groups)]
        self.counts = [0] * n_groups
        self.raw_sums = [0.0] * n_groups  # per group: Σ raw score, for the knots of mapping="interpolate"
        self.passed_through = 0  # pairs of the current epoch that kept their raw score (min_rounds)
        self.rounds = 0
        self.last_results: dict[str, dict[str, float]] = {}
        self._reset_epoch()

    @property
    @override
    def state_key(self) -> str:
        return self._generate_state_key(
            n_groups=self.n_groups, measure=self.config.measure, variant=self.config.variant
        )

    # ---------------------------------------------------------------- core (usable without a Trainer)
    def _groups(self, raw: np.ndarray) -> np.ndarray:
        return np.minimum((raw * self.n_groups).astype(np.int64), self.n_groups - 1)

    def process(self, probs: torch.Tensor | np.ndarray, target: torch.Tensor | np.ndarray) -> np.ndarray:
        """Stream (probability, label) pairs in order; returns each pair's calibrated probability (made before
        its label was seen) and updates the calibrators."""
        raw = as_numpy(probs)
        y = as_numpy(target)
        if raw.shape != y.shape:
            raise ValueError(f"probabilities and labels must have the same size, got {raw.size} and {y.size}")
        check_probabilities(raw, "probabilities")
        check_labels(y, "labels")
        out = np.empty_like(raw)
        mapped = self._interpolated(raw) if self.mapping == "interpolate" else None
        cals, counts, sums, warm = self.calibrators, self.counts, self.raw_sums, self.min_rounds
        for i, (g, yt, r) in enumerate(zip(self._groups(raw).tolist(), y.tolist(), raw.tolist())):
            cal = cals[g]
            forecast = cal.predict()  # the group's forecast stream is played in every mapping
            if counts[g] < warm:
                out[i] = r
                self.passed_through += 1
            else:
                out[i] = forecast if mapped is None else mapped[i]
            cal.observe(yt)  # labels validated above for the whole batch
            counts[g] += 1
            sums[g] += r
        self.rounds += raw.size
        return out

    def _interpolated(self, raw: np.ndarray) -> np.ndarray:
        """``mapping="interpolate"``: the strictly increasing map through the groups that have seen data."""
        ready = [g for g, n in enumerate(self.counts) if n >= max(1, self.min_rounds)]
        return monotone_logit_map(
            raw,
            centers=np.array([self.raw_sums[g] / self.counts[g] for g in ready]),
            targets=np.array([self.calibrators[g].expected_forecast() for g in ready]),
            weights=np.array([float(self.counts[g]) for g in ready]),
        )

    def calibrate(self, probs: torch.Tensor | np.ndarray) -> np.ndarray:
        """Apply the frozen calibrators (``mapping``: each group's mean forecast, or the map through them); a score
        whose group saw fewer than ``max(1, min_rounds)`` pairs keeps its raw value."""
        raw = as_numpy(probs)
        check_probabilities(raw, "probabilities")
        groups = self._groups(raw)
        cold = np.array([n < max(1, self.min_rounds) for n in self.counts])[groups]
        if self.mapping == "interpolate":
            cal = self._interpolated(raw)
        else:
            cal = np.array([c.expected_forecast() for c in self.calibrators])[groups]
        return np.where(cold, raw, cal)

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
        self.passed_through = 0

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
        self._report(stage, results[f"{prefix}/raw_ece"], results[f"{prefix}/ece"])
        if self.log_figures and trainer.is_global_zero:
            from lightning_papers.plotting import log_figure

            raw, cal, y = (np.concatenate(self._epoch[k]) for k in ("raw", "cal", "y"))
            title = f"{stage}: ECE {results[f'{prefix}/raw_ece']:.4f} raw, {results[f'{prefix}/ece']:.4f} calibrated"
            fig = reliability_figure(cal, y, n_bins=self.n_bins, title=title, extra={"raw": raw}, label="calibrated")
            log_figure(trainer, f"{prefix}/reliability", fig)
        self._reset_epoch()

    def _report(self, stage: str, raw_ece: float, ece: float) -> None:
        """The one-line pass-through note, and the warning when recalibration made the binned ECE worse."""
        total = sum(a.size for a in self._epoch["y"])
        if self.passed_through:
            rank_zero_info(
                f"AdaptiveCalibration: {self.passed_through} of {total} {stage} pairs kept their raw score (their group"
                f" had seen fewer than min_rounds={self.min_rounds} pairs)"
            )
        if not total:
            return
        raw, cal = np.concatenate(self._epoch["raw"]), np.concatenate(self._epoch["cal"])
        noise = max(binned_ece_noise(raw, self.n_bins), binned_ece_noise(cal, self.n_bins))
        if ece > raw_ece + noise:
            rank_zero_warn(
                f"AdaptiveCalibration made the {stage} probabilities worse calibrated: ECE {ece:.4f} calibrated vs "
                f"{raw_ece:.4f} raw over {total} pairs (sampling noise about {noise:.4f}). Too few pairs per group "
                "(fewer n_groups, or min_rounds) or mapping='interpolate' may help; the raw scores are better here."
            )

    # ---------------------------------------------------------------- hooks
    @override
    def on_validation_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._reset_epoch()

    @override
    def on_test_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._reset_epoch()

    @override
    def on_validation_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:  # fmt: skip
        self._on_batch(trainer, pl_module, outputs, batch, "validate")

    @override
    def on_test_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:  # fmt: skip
        self._on_batch(trainer, pl_module, outputs, batch, "test")

    @override
    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._on_epoch_end(trainer, pl_module, "validate")

    @override
    def on_test_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._on_epoch_end(trainer, pl_module, "test")

    @override
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
    @override
    def state_dict(self) -> dict[str, Any]:
        return {
            "calibrators": [c.state_dict() for c in self.calibrators],
            "counts": list(self.counts),
            "raw_sums": list(self.raw_sums),
            "rounds": self.rounds,
        }

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if len(state_dict["calibrators"]) != self.n_groups:
            raise ValueError(
                f"checkpoint has {len(state_dict['calibrators'])} calibrator groups, this callback {self.n_groups}"
            )
        for cal, s in zip(self.calibrators, state_dict["calibrators"]):
            cal.load_state_dict(s)
        self.counts = [int(c) for c in state_dict["counts"]]
        self.raw_sums = [float(v) for v in state_dict.get("raw_sums", [0.0] * self.n_groups)]
        self.rounds = int(state_dict["rounds"])
