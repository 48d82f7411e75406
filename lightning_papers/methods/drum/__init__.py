"""DRUM: distributionally robust transfer with structurally missing covariates (arXiv 2605.24212).

``config.py`` holds the hyper-parameters (``DRUMConfig``); ``nuisances.py`` the cross-fitted outcome model,
conditional model of A | X and covariate density ratio; ``game.py`` the generator adversary, the penalised game,
the dual ascent and the bias correction; ``baselines.py`` ERM, imputation, multiple imputation, CVaR-DRO and the
oracle; ``exact.py`` the exponential-tilt KL dual and the population-level minimax solver; ``module.py`` the
LightningModule ``DRUMModule``; ``plots.py`` its figures. See ``docs/drum.md``. This file imports nothing.
"""
