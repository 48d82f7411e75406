"""QDSB: quantized diffusion Schrödinger bridges (arXiv 2605.11983) on top of [SF]2M training.

``coupling.py`` holds the framework-free couplings (QDSB, minibatch OT, independent, full exact OT);
``bridge.py`` the [SF]2M loss and samplers; ``module.py`` the LightningModule ``SF2MModule``. See ``docs/qdsb.md``.
This file imports nothing.
"""
