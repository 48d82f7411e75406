"""PAIRS ("It Just Takes Two", arXiv 2605.07972): a mean-pool Deep Set posterior estimator trained on sets of size
≤ 2, then a head refit on pre-aggregated embeddings at the deployment N. See ``docs/pairs.md``.

The datamodule is :class:`lightning_papers.datamodules.simulated_sets.SimulatedSetsDataModule`."""

from lightning_papers.methods.pairs.module import PairsNPE
from lightning_papers.methods.pairs.simulators import (
    BumpOnBackground,
    GaussianSharedLocation,
    MultivariateGaussianSharedLocation,
    SetSimulator,
)

__all__ = [
    "BumpOnBackground",
    "GaussianSharedLocation",
    "MultivariateGaussianSharedLocation",
    "PairsNPE",
    "SetSimulator",
]
