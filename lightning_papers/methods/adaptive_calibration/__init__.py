"""Adaptive calibration (Liu, Luo, Ratliff 2026): calibrated online forecasters for non-stationary binary streams."""

from lightning_papers.methods.adaptive_calibration.adaptive import AdaptiveCalibrator
from lightning_papers.methods.adaptive_calibration.base import Forecaster
from lightning_papers.methods.adaptive_calibration.baselines import (
    OracleForecaster,
    RoundedRunningMean,
    RunningMean,
    UniformGridCalibrator,
)

__all__ = [
    "AdaptiveCalibrator",
    "Forecaster",
    "OracleForecaster",
    "RoundedRunningMean",
    "RunningMean",
    "UniformGridCalibrator",
]

from lightning_papers.datamodules.streams import (  # noqa: E402  (register the stream datamodules with the CLI)
    CSVStreamDataModule,
    DeviationBudgetStreamDataModule,
    IIDStreamDataModule,
    PiecewiseStreamDataModule,
)
from lightning_papers.methods.adaptive_calibration.module import AdaptiveCalibrationModule  # noqa: E402

__all__ += [
    "AdaptiveCalibrationModule",
    "CSVStreamDataModule",
    "DeviationBudgetStreamDataModule",
    "IIDStreamDataModule",
    "PiecewiseStreamDataModule",
]
