"""``CalibrationEpochsConfig``: the hyper-parameters of the calibration-epochs forecaster, in one place.

The forecaster (:class:`~lightning_papers.methods.adaptive_calibration.adaptive.CalibrationEpochsForecaster`), the
stream method's LightningModule (``module.py``) and the drop-in callback
(:class:`lightning_papers.callbacks.AdaptiveCalibration`) all take this one dataclass, in the way peft's
``LoraConfig`` is shared by its tuner layers. In a LightningCLI config it is a nested group::

    model:
      init_args:
        calibrator: {measure: l2, first_epoch: 16}

The paper (Liu, Luo, Ratliff 2026, arXiv 2605.11490) names the ingredients (epoch-based scheduling, a
non-uniform partition fine near the estimated mean, a doubling scheme for the unknown non-stationarity C) but its
constants are not public; the defaults below were chosen on the benchmark's streams (``docs/adaptive_calibration.md``,
"What is implemented and where").
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

#: The windowed change test's smallest window (the epoch test also waits for this many rounds).
WINDOW_BLOCK = 16


@dataclass(frozen=True)
class CalibrationEpochsConfig:
    """Hyper-parameters of the calibration-epochs forecaster.

    Args:
        variant: ``"refine"`` (keep and refine the grid across epochs; better constants) or ``"restart"`` (a fresh
            inner forecaster each epoch, as in the analysis).
        measure: Which rate the grid is tuned for: ``"l1"`` (γ = min{1, (L/Ĉ²)^{1/3}}) or ``"l2"``
            (γ = min{1, Ĉ^{-1/3}}).
        first_epoch: L_0, the length of the first epoch (epoch m has L_0·2^m rounds); 16–32 work well.
        radius_scale: c in the fine-zone radius c·√(log T / L_{m−1}); smaller means fewer bins (0.5–1 work well).
        detect_scale: κ of the epoch-mean change test; ``0`` switches change detection off.
        detect_window: Longest recent window of the windowed change test (rounded down to 16·2^j); ``0`` keeps
            only the epoch-mean test.
        budget_block: B, block length of the deviation estimate behind the doubling guess of C; ``0`` switches the
            doubling off.
        lazy: Recompute the inner forecaster's distribution after ``max(1, ⌊lazy·n⌋)`` rounds (0: every round).
        horizon: T for the log T factors if known; ``None`` uses the anytime value log(max(16, t + L_m)).
    """

    variant: Literal["refine", "restart"] = "refine"
    measure: Literal["l1", "l2"] = "l1"
    first_epoch: int = 32
    radius_scale: float = 0.5
    detect_scale: float = 0.6
    detect_window: int = 1024
    budget_block: int = 256
    lazy: float = 0.0625
    horizon: int | None = None

    def __post_init__(self) -> None:
        if self.variant not in ("refine", "restart"):
            raise ValueError(f"variant must be 'refine' or 'restart', got {self.variant!r}")
        if self.measure not in ("l1", "l2"):
            raise ValueError(f"measure must be 'l1' or 'l2', got {self.measure!r}")
        if self.first_epoch < 2:
            raise ValueError(f"first_epoch must be an integer >= 2, got {self.first_epoch}")
        if self.radius_scale <= 0:
            raise ValueError(f"radius_scale must be > 0, got {self.radius_scale}")
        if self.detect_scale < 0:
            raise ValueError(f"detect_scale must be >= 0, got {self.detect_scale}")
        if self.budget_block < 0:
            raise ValueError(f"budget_block must be >= 0, got {self.budget_block}")
        if not 0 <= self.lazy < 1:
            raise ValueError(f"lazy must be in [0, 1), got {self.lazy}")
        if self.detect_window != 0 and self.detect_window < WINDOW_BLOCK:
            raise ValueError(f"detect_window must be 0 or >= {WINDOW_BLOCK}, got {self.detect_window}")
        if self.horizon is not None and self.horizon < 1:
            raise ValueError(f"horizon must be a positive integer or None, got {self.horizon}")

    def to_dict(self) -> dict[str, Any]:
        """Plain Python values (saved in a forecaster's ``state_dict`` and compared on load)."""
        return asdict(self)
