"""PAIRS ("It Just Takes Two", arXiv 2605.07972): a mean-pool Deep Set posterior estimator trained on sets of size
<= 2, then a head refit on pre-aggregated embeddings at the deployment N. See ``docs/pairs.md``.

Files: ``encoder`` (Deep Set), ``heads`` (Gaussian and flow heads), ``bank`` (the stage-2 embedding bank),
``training`` (the step functions and plain-torch loops), ``module`` (``PairsNPE``, the LightningModule),
``evaluation`` and ``plots`` (scores and figures), ``baselines``. The simulators live in
``lightning_papers.datamodules.set_simulators``. This file imports nothing.
"""
