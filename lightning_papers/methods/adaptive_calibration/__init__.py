"""Adaptive calibration in non-stationary environments (Liu, Luo, Ratliff 2026): calibrated online forecasters.

Files: ``adaptive.py`` (the adaptive forecaster: calibration epochs, change test, doubling), ``swap_regret.py``
(BM-FTL on a non-uniform grid), ``baselines.py``, ``base.py`` (the forecaster interface), ``module.py`` (the
LightningModule that plays a stream). See ``docs/adaptive_calibration.md``. Import from the sub-modules; this file
imports nothing, so ``from lightning_papers.callbacks import AdaptiveCalibration`` stays light.
"""
