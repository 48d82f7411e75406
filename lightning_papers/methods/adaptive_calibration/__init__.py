"""Adaptive calibration in non-stationary environments (Liu, Luo, Ratliff 2026, arXiv 2605.11490).

Files: ``config.py`` (``CalibrationEpochsConfig``, the hyper-parameters), ``adaptive.py``
(``CalibrationEpochsForecaster``: calibration epochs, change tests, doubling for C), ``swap_regret.py`` (BM-FTL on a
non-uniform grid), ``baselines.py``, ``base.py`` (the forecaster interface), ``forecasters.py`` (``build_forecaster``
by name), ``recalibration.py`` (the callback's ranking-preserving map) and ``module.py``
(``CalibrationStreamModule``, the LightningModule that plays a stream). See ``docs/adaptive_calibration.md``.
Import from the sub-modules; this file imports nothing, so ``from lightning_papers.callbacks import
AdaptiveCalibration`` stays light.
"""
