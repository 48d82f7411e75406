"""QDSB: quantized diffusion Schrödinger bridges (arXiv 2605.11983) on top of [SF]2M training.

``coupling.py`` holds the framework-free couplings (QDSB, minibatch OT, independent, full exact OT);
``bridge.py`` the [SF]2M loss and samplers; ``module.py`` the LightningModule ``SF2MModule``.
"""

from lightning_papers.datamodules.point_clouds import GaussianPairDataModule, PointCloudPairDataModule
from lightning_papers.methods.qdsb.coupling import (
    ExactOTCoupling,
    IndependentCoupling,
    MinibatchOTCoupling,
    QuantizedCoupling,
)
from lightning_papers.methods.qdsb.module import SF2MModule

__all__ = [
    "ExactOTCoupling",
    "GaussianPairDataModule",
    "IndependentCoupling",
    "MinibatchOTCoupling",
    "PointCloudPairDataModule",
    "QuantizedCoupling",
    "SF2MModule",
]
