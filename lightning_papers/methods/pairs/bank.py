"""The PAIRS stage-2 bank of pre-aggregated (θ, z, log N) triples (arXiv 2605.07972 §2), in plain torch.

The sets come from :func:`~lightning_papers.datamodules.set_simulators.simulate_in_chunks` (directly, or through
:meth:`~lightning_papers.datamodules.simulated_sets.SimulatedSetsDataModule.stage2_sets`); the frozen encoder embeds
each chunk once, without gradients. That is the whole of stage 2's encoder cost; the head is then fitted on the bank
alone.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import torch

from lightning_papers.methods.pairs.encoder import DeepSetEncoder, embed_sets


@dataclass
class EmbeddingBank:
    """Stored stage-2 training triples: θ [M, p], pooled embedding z [M, k], log N [M, 1]."""

    theta: torch.Tensor
    z: torch.Tensor
    log_n: torch.Tensor

    def __len__(self) -> int:
        return self.theta.shape[0]

    def to(self, device: torch.device | str) -> EmbeddingBank:
        """The bank on ``device``."""
        return EmbeddingBank(self.theta.to(device), self.z.to(device), self.log_n.to(device))

    def state(self) -> dict[str, torch.Tensor]:
        """The bank as CPU tensors (for a checkpoint)."""
        return {"theta": self.theta.cpu(), "z": self.z.cpu(), "log_n": self.log_n.cpu()}


def pre_aggregate(
    encoder: DeepSetEncoder, chunks: Iterable[tuple[torch.Tensor, torch.Tensor]], chunk_elements: int = 2**17
) -> EmbeddingBank:
    """Embed every chunk ``(theta [s, p], x [s, N, d])`` once with the frozen ``encoder`` -> the bank (on CPU).

    One no-grad forward pass per element, in pieces of at most ``chunk_elements`` elements (PAIRS §2); the encoder's
    train/eval mode is restored afterwards.
    """
    device = next(encoder.parameters()).device
    was_training = encoder.training
    encoder.eval()
    thetas, zs, log_ns = [], [], []
    for theta, x in chunks:
        zs.append(embed_sets(encoder, x.to(device), chunk_elements).cpu())
        thetas.append(theta.float())
        log_ns.append(torch.full((theta.shape[0], 1), math.log(x.shape[1])))
    encoder.train(was_training)
    if not thetas:
        raise ValueError("pre_aggregate got no sets")
    return EmbeddingBank(torch.cat(thetas), torch.cat(zs), torch.cat(log_ns))
