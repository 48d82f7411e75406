"""Mean-pool Deep Set encoder z = (1/N) Σ φ(x_i) (Zaheer et al. 2017), for sets of any size N.

Mean pooling (not sum) is what makes an encoder trained on N ≤ 2 usable at N in the thousands (PAIRS §2): z
is a sample mean of φ, so it converges as N grows, and the head is told N separately through log N.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


def mlp(sizes: Sequence[int], activation: type[nn.Module] = nn.SiLU) -> nn.Sequential:
    """Linear layers of the given widths with ``activation`` between them (none after the last)."""
    if len(sizes) < 2:
        raise ValueError(f"an MLP needs at least input and output sizes, got {list(sizes)}")
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(activation())
    return nn.Sequential(*layers)


class DeepSetEncoder(nn.Module):
    """φ: R^d → R^k applied to every element, then averaged over the set.

    Args:
        x_dim: d, dimension of one observation.
        embed_dim: k, dimension of the pooled embedding (default 16).
        hidden: widths of φ's hidden layers (default 64, 64).
    """

    def __init__(self, x_dim: int, embed_dim: int = 16, hidden: Sequence[int] = (64, 64)) -> None:
        super().__init__()
        if x_dim < 1 or embed_dim < 1:
            raise ValueError(f"x_dim and embed_dim must be >= 1, got {x_dim} and {embed_dim}")
        self.x_dim = x_dim
        self.embed_dim = embed_dim
        self.phi = mlp([x_dim, *hidden, embed_dim])

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Pool a batch of sets: ``x`` [S, N, d] (and optional boolean ``mask`` [S, N] of real elements) -> [S, k]."""
        if x.ndim != 3 or x.shape[-1] != self.x_dim:
            raise ValueError(f"expected sets of shape [S, N, {self.x_dim}], got {tuple(x.shape)}")
        h = self.phi(x)
        if mask is None:
            return h.mean(1)
        m = mask.to(h.dtype)[..., None]
        return (h * m).sum(1) / m.sum(1).clamp_min(1.0)


@torch.no_grad()
def embed_sets(encoder: DeepSetEncoder, x: torch.Tensor, chunk_elements: int = 2**17) -> torch.Tensor:
    """Pooled embeddings of ``x`` [S, N, d] without gradients, in chunks of about ``chunk_elements`` elements.

    Large N is split along the set dimension, and sums of φ are accumulated, so memory stays at one chunk
    whatever N is. Returns [S, k] on ``x``'s device.
    """
    if chunk_elements < 1:
        raise ValueError(f"chunk_elements must be >= 1, got {chunk_elements}")
    num_sets, n, _ = x.shape
    sets_per_chunk = max(1, chunk_elements // n)
    elems_per_chunk = min(n, chunk_elements)
    out = []
    for s in range(0, num_sets, sets_per_chunk):
        xs = x[s : s + sets_per_chunk]
        total = 0.0
        for e in range(0, n, elems_per_chunk):
            total = total + encoder.phi(xs[:, e : e + elems_per_chunk]).sum(1)
        out.append(total / n)
    return torch.cat(out)
