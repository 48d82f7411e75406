"""QDSB: quantized diffusion Schrödinger bridges (arXiv 2605.11983) on top of [SF]2M training (arXiv 2307.03672).

``anchors.py`` quantises a point cloud (farthest-first, k-means); ``transport.py`` solves the anchor plan (exact
or log-domain Sinkhorn); ``coupling.py`` holds the framework-free couplings (QDSB, minibatch OT, independent,
full exact OT); ``bridge.py`` the [SF]2M loss and samplers; ``module.py`` the LightningModule ``SF2MModule`` and
its data contract; ``plots.py`` its figures; ``resume.py`` a checkpoint helper. See ``docs/qdsb.md``.
This file imports nothing.
"""
