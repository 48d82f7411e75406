"""PAIRS ("It Just Takes Two", arXiv 2605.07972): a mean-pool Deep Set posterior estimator trained on sets of size
<= 2, then a head refit on pre-aggregated embeddings at the deployment N. See ``docs/pairs.md``.

Import from the sub-modules (``module.PairsNPE``, ``encoder``, ``heads``, ``training``); this file imports nothing.
"""
