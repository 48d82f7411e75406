"""lightning-papers: 2026 ML papers as PyTorch Lightning methods and drop-in callbacks.

Nothing heavy is imported here (no timm, peft, transformers, wandb or POT): import the subpackage you need,
for example ``from lightning_papers.callbacks import GradientProjection``.
"""

__version__ = "0.1.0"
