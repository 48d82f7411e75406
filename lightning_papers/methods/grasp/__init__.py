"""GRASP: unsupervised identification and removal of spurious factors in LoRA fine-tuning (arXiv 2605.27676).

Files: ``subspace.py`` (the identified subspace, its file format and ``orthonormalize``), ``identify.py``
(identification from LoRA updates), ``steering.py`` and ``controls.py`` (baselines and controls), ``module.py``
(the LoRA causal-LM LightningModule). The planted-persona benchmark world is the sub-package ``planted/``. The
drop-in callback is :class:`lightning_papers.callbacks.GradientProjection`. See ``docs/grasp.md``. This file
imports nothing, so importing the callback loads no LightningModule.
"""
