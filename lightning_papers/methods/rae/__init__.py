"""Representation autoencoders (RAE v1, arXiv 2510.11690; RAEv2, arXiv 2605.18324).

Stage 1 (``encoder.py``, ``normalizer.py``, ``decoder.py``, ``losses.py``, ``module.py``): a frozen representation
encoder gives a multi-layer latent; a ViT decoder trained with noise augmentation maps it back to pixels; exact
per-element statistics normalise the latent for stage 2, and ``cache.py`` encodes a dataset once into a
memory-mapped latent cache. Stage 2 (``dit.py``, ``transport.py``, ``guidance.py``) trains a diffusion transformer
in that latent space.
"""
