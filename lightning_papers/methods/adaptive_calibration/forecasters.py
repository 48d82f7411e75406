"""``build_forecaster(name, ...)``: every forecaster of this method by name, for the module, the benchmark and tests.

| name | class | what it is |
|---|---|---|
| ``adaptive`` | :class:`.adaptive.CalibrationEpochsForecaster` | the paper's method, with the given config |
| ``adaptive_restart`` | the same, ``variant="restart"`` | a fresh inner forecaster every epoch (as analysed) |
| ``uniform`` | :class:`.baselines.UniformGridCalibrator` | BM-FTL on N = ⌈T^{1/3}⌉ uniform intervals |
| ``running_mean`` | :class:`.baselines.RunningMean` | the mean of the outcomes so far |
| ``rounded_mean`` | :class:`.baselines.RoundedRunningMean` | the running mean rounded to 0.01 |
| ``oracle`` | :class:`.baselines.OracleForecaster` | the true mean μ_t of each round |
"""

from __future__ import annotations

from dataclasses import replace
from typing import Literal, get_args

from lightning_papers.methods.adaptive_calibration.adaptive import CalibrationEpochsForecaster
from lightning_papers.methods.adaptive_calibration.base import Forecaster
from lightning_papers.methods.adaptive_calibration.baselines import (
    OracleForecaster,
    RoundedRunningMean,
    RunningMean,
    UniformGridCalibrator,
)
from lightning_papers.methods.adaptive_calibration.config import CalibrationEpochsConfig

ForecasterName = Literal["adaptive", "adaptive_restart", "uniform", "running_mean", "rounded_mean", "oracle"]
FORECASTERS: tuple[str, ...] = get_args(ForecasterName)


def build_forecaster(
    name: str, config: CalibrationEpochsConfig | None = None, horizon: int | None = None, seed: int = 0
) -> Forecaster:
    """Build a forecaster by name (one of :data:`FORECASTERS`).

    Args:
        name: ``adaptive`` plays ``config`` as given; ``adaptive_restart`` is the same with ``variant="restart"``;
            ``uniform``, ``running_mean``, ``rounded_mean``, ``oracle`` are the baselines.
        config: Hyper-parameters of the calibration-epochs forecaster (``None``: defaults). ``uniform`` reads
            its ``lazy``; the other baselines have none.
        horizon: T, the stream length; required by ``uniform`` (its grid has ⌈T^{1/3}⌉ intervals).
        seed: Seed of the forecaster's sampling (``adaptive*`` and ``uniform``).
    """
    config = CalibrationEpochsConfig() if config is None else config
    if name == "adaptive":
        return CalibrationEpochsForecaster(config, seed=seed)
    if name == "adaptive_restart":
        return CalibrationEpochsForecaster(replace(config, variant="restart"), seed=seed)
    if name == "uniform":
        if horizon is None:
            raise ValueError("forecaster 'uniform' needs horizon=T, the stream length its grid is tuned for")
        return UniformGridCalibrator(horizon, seed=seed, lazy=config.lazy)
    if name == "running_mean":
        return RunningMean()
    if name == "rounded_mean":
        return RoundedRunningMean()
    if name == "oracle":
        return OracleForecaster()
    raise ValueError(f"unknown forecaster {name!r}; expected one of {FORECASTERS}")
