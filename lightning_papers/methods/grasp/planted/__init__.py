"""The planted-persona benchmark world for GRASP: a ground truth to measure identification and drift against.

Not part of the method: the library's GRASP parts (``subspace``, ``identify``, ``steering``, ``controls``,
``module`` and the ``GradientProjection`` callback) never import it. Files: ``world.py`` (the world's rules, the
in-process pretrained tiny Llama and the fine-tune JSONL; ``python -m lightning_papers.methods.grasp.planted.world
--out <dir>``), ``evaluation.py`` (teacher-forced ground-truth metrics and the true persona direction),
``plots.py`` (figures) and ``callback.py`` (``PlantedEvaluation``: the metrics and figures in every validation of a
``lightning-papers fit`` run). See ``docs/grasp.md``.
"""
