"""``AdaptiveCalibration``: recalibrate a binary or multiclass classifier's streamed probabilities with adaptive
calibrated forecasters (Liu, Luo, Ratliff 2026), during validation / test, and apply the frozen result in predict.

The paper's forecaster is context-free (it calibrates one coin). To recalibrate a classifier, the raw score range
[0, 1] is cut into ``n_groups`` equal groups and each group gets its own
:class:`~lightning_papers.methods.adaptive_calibration.adaptive.CalibrationEpochsForecaster` (per-bin online
recalibration, as histogram binning does offline; ``docs/adaptive_calibration.md``). Each (probability, label) pair
is processed in stream order: the calibrated probability is the group's forecast *before* it sees the label, then
the group's calibrator is updated. A multiclass classifier is reduced to binary pairs first: the top-label
confidence and whether the prediction was right, or one-vs-rest pairs with one set of groups per class
(:mod:`lightning_papers.methods.adaptive_calibration.multiclass`).
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
from lightning_papers.methods.adaptive_calibration.multiclass import (
    as_matrix,
    class_labels,
    class_probabilities,
    one_vs_rest,
    top_label,
)
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
    """Online recalibration of a classifier with one adaptive calibrated forecaster per raw-score group.

    Contract: ``validation_step`` / ``test_step`` return a dict with the probabilities of the positive class under
    ``prob_key`` and the 0/1 labels under ``target_key`` (or pass ``extract_fn(outputs, batch) -> (probs, target)``).
    ``predict_step`` returns a dict with ``prob_key``; the callback adds ``"calibrated_probs"`` to it.
    With ``task="multiclass"`` the scores are ``[B, C]`` logits or probabilities (``scores``) and the labels class
    indices in [0, C); top-label recalibration adds ``"calibrated_confidence"`` (of the argmax class) and
    ``"predicted_class"`` in predict, class-wise (``classwise=True``, one-vs-rest) adds ``"calibrated_probs"``
    ``[B, C]`` (each column calibrated on its own, so rows need not sum to 1).

    ``last_results[stage]`` holds the last epoch's logged numbers and ``last_stream[stage]`` its ``raw``, ``cal``
    (calibrated) and ``y`` pairs in stream order.

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
        task: ``"binary"`` (one probability of the positive class per example) or ``"multiclass"`` (``[B, C]``).
        scores: Whether the step returns ``"probs"`` (probabilities; multiclass rows must sum to 1) or ``"logits"``
            (sigmoid for binary, softmax for multiclass).
        classwise: Multiclass only: recalibrate every class one-vs-rest (``num_classes`` sets of ``n_groups``
            calibrators) instead of the top-label confidence.
        num_classes: C; required with ``classwise``, otherwise (if given) checked against the scores' shape.

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
        task: Literal["binary", "multiclass"] = "binary",
        scores: Literal["probs", "logits"] = "probs",
        classwise: bool = False,
        num_classes: int | None = None,
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
        if task not in ("binary", "multiclass"):
            raise ValueError(f"task must be 'binary' or 'multiclass', got {task!r}")
        if scores not in ("probs", "logits"):
            raise ValueError(f"scores must be 'probs' or 'logits', got {scores!r}")
        if num_classes is not None and num_classes < 2:
            raise ValueError(f"num_classes must be >= 2, got {num_classes}")
        if classwise and (task != "multiclass" or num_classes is None):
            raise ValueError(f"classwise=True needs task='multiclass' and num_classes, got {task!r}, {num_classes}")
        self.task, self.scores, self.classwise, self.num_classes = task, scores, classwise, num_classes
        self.mapping, self.min_rounds = mapping, min_rounds
        self.config = CalibrationEpochsConfig() if calibrator is None else calibrator
        self.n_groups, self.stages = n_groups, tuple(stages)
        self.prob_key, self.target_key = prob_key, target_key
        self.n_bins, self.seed = n_bins, seed
        self.log_figures, self.extract_fn = log_figures, extract_fn
        cells = n_groups * (num_classes if classwise and num_classes else 1)  # one set of groups per head
        self.calibrators = [CalibrationEpochsForecaster(self.config, seed=seed + g) for g in range(cells)]
        self.counts = [0] * cells
        self.raw_sums = [0.0] * cells  # per group: Σ raw score, for the knots of mapping="interpolate"
        self.passed_through = 0  # pairs of the current epoch that kept their raw score (min_rounds)
        self.rounds = 0
        self.last_results: dict[str, dict[str, float]] = {}
        self.last_stream: dict[str, dict[str, np.ndarray]] = {}  # per stage: the last epoch's raw / cal / y pairs
        self._reset_epoch()

    @property
    @override
    def state_key(self) -> str:
        extra = {"task": self.task, "classwise": self.classwise} if self.task == "multiclass" else {}
        return self._generate_state_key(
            n_groups=self.n_groups, measure=self.config.measure, variant=self.config.variant, **extra
        )

    # ---------------------------------------------------------------- core (usable without a Trainer)
    def _cells(self, raw: np.ndarray, head: np.ndarray) -> np.ndarray:
        """Index of each pair's calibrator: its head (class, or 0) times ``n_groups`` plus its raw-score group."""
        return head * self.n_groups + np.minimum((raw * self.n_groups).astype(np.int64), self.n_groups - 1)

    def reduce(
        self, scores: torch.Tensor | np.ndarray, target: torch.Tensor | np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Validated binary pairs ``(raw, y, head)`` of a batch: the binary probabilities themselves, or for
        ``task="multiclass"`` the top-label (confidence, correct) pairs or the one-vs-rest pairs
        (:mod:`~lightning_papers.methods.adaptive_calibration.multiclass`)."""
        if self.task == "binary":
            raw = as_numpy(scores)
            if self.scores == "logits":
                if raw.size and not np.all(np.isfinite(raw)):
                    raise ValueError(f"logits must be finite, got {raw[~np.isfinite(raw)][0]}")
                raw = 1.0 / (1.0 + np.exp(-raw))
            y = as_numpy(target)
            if raw.shape != y.shape:
                raise ValueError(f"probabilities and labels must have the same size, got {raw.size} and {y.size}")
            check_probabilities(raw, "probabilities")
            check_labels(y, "labels")
            return raw, y, np.zeros(raw.size, dtype=np.int64)
        probs = class_probabilities(scores, self.scores)
        if self.num_classes is not None and probs.shape[1] != self.num_classes:
            raise ValueError(f"expected scores of {self.num_classes} classes, got shape {tuple(probs.shape)}")
        labels = class_labels(target, probs.shape[1], probs.shape[0])
        if self.classwise:
            return one_vs_rest(probs, labels)
        conf, correct, _ = top_label(probs, labels)
        return conf, correct, np.zeros(conf.size, dtype=np.int64)

    def process(self, scores: torch.Tensor | np.ndarray, target: torch.Tensor | np.ndarray) -> np.ndarray:
        """Stream a batch in order; returns each pair's calibrated probability (made before its label was seen)
        and updates the calibrators. Binary: one value per score; multiclass top-label: the calibrated confidence
        of the predicted class, ``[B]``; class-wise: ``[B, C]`` calibrated one-vs-rest probabilities."""
        raw, y, head = self.reduce(scores, target)
        out = self._stream(raw, y, head)
        return out.reshape(-1, self.num_classes) if self.task == "multiclass" and self.classwise else out

    def _stream(self, raw: np.ndarray, y: np.ndarray, head: np.ndarray) -> np.ndarray:
        out = np.empty_like(raw)
        mapped = self._interpolated(raw, head) if self.mapping == "interpolate" else None
        cals, counts, sums, warm = self.calibrators, self.counts, self.raw_sums, self.min_rounds
        for i, (g, yt, r) in enumerate(zip(self._cells(raw, head).tolist(), y.tolist(), raw.tolist())):
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

    def _interpolated(self, raw: np.ndarray, head: np.ndarray) -> np.ndarray:
        """``mapping="interpolate"``: per head, the strictly increasing map through the groups that have seen data."""
        out = np.empty_like(raw)
        for h in np.unique(head).tolist():
            at = head == h
            cells = range(h * self.n_groups, (h + 1) * self.n_groups)
            ready = [g for g in cells if self.counts[g] >= max(1, self.min_rounds)]
            out[at] = monotone_logit_map(
                raw[at],
                centers=np.array([self.raw_sums[g] / self.counts[g] for g in ready]),
                targets=np.array([self.calibrators[g].expected_forecast() for g in ready]),
                weights=np.array([float(self.counts[g]) for g in ready]),
            )
        return out

    def calibrate(self, scores: torch.Tensor | np.ndarray) -> np.ndarray:
        """Apply the frozen calibrators (``mapping``: each group's mean forecast, or the map through them); a score
        whose group saw fewer than ``max(1, min_rounds)`` pairs keeps its raw value. Multiclass top-label returns
        the calibrated confidence of each row's argmax class ``[B]``, class-wise ``[B, C]``."""
        rows = as_numpy(scores).size if self.task == "binary" else np.shape(scores)[0]
        raw, _, head = self.reduce(scores, np.zeros(rows))  # labels are not used
        cells = self._cells(raw, head)
        cold = np.array([n < max(1, self.min_rounds) for n in self.counts])[cells]
        if self.mapping == "interpolate":
            cal = self._interpolated(raw, head)
        else:
            cal = np.array([c.expected_forecast() for c in self.calibrators])[cells]
        out = np.where(cold, raw, cal)
        return out.reshape(-1, self.num_classes) if self.task == "multiclass" and self.classwise else out

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
        probs, target = torch.as_tensor(probs).detach().double(), torch.as_tensor(target).detach().double()
        if self.task == "multiclass":
            as_matrix(probs, self.scores)  # [B, C] before any reshape: a wrong rank fails here, naming the shape
        shape = (-1,) if self.task == "binary" else (-1, probs.shape[-1])
        probs, target = probs.reshape(shape), target.reshape(-1)
        if trainer.world_size > 1:  # one identical ordered stream on every rank (rank-major order)
            probs = pl_module.all_gather(probs).reshape(shape)
            target = pl_module.all_gather(target).reshape(-1)
        raw_np, y_np, head = self.reduce(probs.cpu(), target.cpu())
        cal = torch.from_numpy(self._stream(raw_np, y_np, head))
        raw, y = torch.from_numpy(raw_np), torch.from_numpy(y_np)
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
        self.last_stream[stage] = {k: np.concatenate(v) for k, v in self._epoch.items()}
        pl_module.log_dict(results, sync_dist=False)
        self._report(stage, results[f"{prefix}/raw_ece"], results[f"{prefix}/ece"])
        if self.log_figures and trainer.is_global_zero:
            from lightning_papers.plotting import log_figure

            raw, cal, y = (self.last_stream[stage][k] for k in ("raw", "cal", "y"))
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
        dtype = probs.dtype if probs.is_floating_point() else torch.float32
        if self.task == "binary":
            cal = self.calibrate(probs.detach().reshape(-1))
            outputs["calibrated_probs"] = torch.from_numpy(cal).to(dtype).reshape(probs.shape)
            return
        cal = torch.from_numpy(self.calibrate(probs.detach())).to(dtype)
        if self.classwise:
            outputs["calibrated_probs"] = cal
        else:
            outputs["calibrated_confidence"] = cal
            outputs["predicted_class"] = probs.detach().argmax(dim=-1)

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
        if len(state_dict["calibrators"]) != len(self.calibrators):
            raise ValueError(
                f"checkpoint has {len(state_dict['calibrators'])} calibrator groups, this callback "
                f"{len(self.calibrators)}"
            )
        for cal, s in zip(self.calibrators, state_dict["calibrators"]):
            cal.load_state_dict(s)
        self.counts = [int(c) for c in state_dict["counts"]]
        self.raw_sums = [float(v) for v in state_dict.get("raw_sums", [0.0] * len(self.calibrators))]
        self.rounds = int(state_dict["rounds"])
