"""Exact per-element latent statistics (mean, population variance) for RAE's latent normalisation.

RAE standardises every element of the ``[C, h, w]`` latent with dataset statistics before the diffusion model
sees it (arXiv 2510.11690, Sec. 4; RAEv2, arXiv 2605.18324, computes them exactly over the training set). Here
they are accumulated batch by batch in float64 with Chan et al.'s parallel update of Welford's algorithm: a batch
of ``n_b`` items with mean ``m_b`` and sum of squared deviations ``M2_b`` merges into ``(n_a, m_a, M2_a)`` as

    n = n_a + n_b,   d = m_b - m_a,   m = m_a + d * n_b / n,   M2 = M2_a + M2_b + d^2 * n_a * n_b / n,

and ``var = M2 / n``. The same merge combines shards: ``merge`` (another object) and ``merge_across_ranks``
(every rank's ``(n, m, M2)`` via ``all_gather``, merged in rank order, so all ranks end with identical, exact
statistics of the union). Normalisation is ``(z - mean) / sqrt(var + eps)`` in float32
(``lightning_papers.datamodules.latents.standardize``, the arithmetic the latent cache uses).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor


def chan_merge(
    a: tuple[int, Tensor, Tensor], b: tuple[int, Tensor, Tensor]
) -> tuple[int, Tensor, Tensor]:  # fmt: skip
    """Merge two ``(count, mean, M2)`` summaries (float64) into the summary of their union."""
    (na, ma, m2a), (nb, mb, m2b) = a, b
    if nb == 0:
        return na, ma, m2a
    if na == 0:
        return nb, mb.clone(), m2b.clone()
    n = na + nb
    d = mb - ma
    return n, ma + d * (nb / n), m2a + m2b + d * d * (na * nb / n)


class LatentStatistics:
    """Exact per-element mean and population variance of latents of shape ``shape``, in float64 on the CPU.

    Args:
        shape: The shape of one latent, e.g. ``(C, h, w)``.
    """

    def __init__(self, shape: tuple[int, ...]) -> None:
        self.shape = tuple(int(s) for s in shape)
        if not self.shape or min(self.shape) < 1:
            raise ValueError(f"shape must be a non-empty tuple of positive sizes, got {shape}")
        self.count = 0
        self.mean = torch.zeros(self.shape, dtype=torch.float64)
        self.m2 = torch.zeros(self.shape, dtype=torch.float64)

    @property
    def var(self) -> Tensor:
        """Per-element population variance ``M2 / count`` (float64)."""
        if self.count == 0:
            raise ValueError("LatentStatistics has seen no data (count = 0): call update() first")
        return self.m2 / self.count

    def _merge(self, other: tuple[int, Tensor, Tensor]) -> None:
        self.count, self.mean, self.m2 = chan_merge((self.count, self.mean, self.m2), other)

    def update(self, x: Tensor) -> None:
        """Add a batch ``x`` of shape ``[B, *shape]``."""
        if tuple(x.shape[1:]) != self.shape:
            raise ValueError(f"batch of shape {tuple(x.shape)} does not match [B, *{self.shape}]")
        if x.shape[0] == 0:
            return
        x = x.detach().to("cpu", torch.float64)
        mb = x.mean(0)
        self._merge((x.shape[0], mb, ((x - mb) ** 2).sum(0)))

    def merge(self, other: LatentStatistics) -> None:
        """Fold in the statistics of another shard (same shape)."""
        if other.shape != self.shape:
            raise ValueError(f"cannot merge statistics of shape {other.shape} into {self.shape}")
        self._merge((other.count, other.mean, other.m2))

    def merge_across_ranks(self) -> None:
        """Replace the local statistics by those of all ranks together (a collective: call it on every rank).

        A no-op without an initialised process group. Gathers ``(count, mean, M2)`` with ``all_gather`` (on the
        current CUDA device under NCCL, on the CPU otherwise) and merges them in rank order.
        """
        if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
            return
        device = torch.device("cpu")
        if dist.get_backend() == "nccl":
            device = torch.device("cuda", torch.cuda.current_device())
        world = dist.get_world_size()
        parts = []
        for t in (torch.tensor([float(self.count)], dtype=torch.float64), self.mean, self.m2):
            t = t.to(device).contiguous()
            out = [torch.empty_like(t) for _ in range(world)]
            dist.all_gather(out, t)
            parts.append([o.cpu() for o in out])
        self.count, self.mean, self.m2 = 0, torch.zeros_like(self.mean), torch.zeros_like(self.m2)
        for n, m, m2 in zip(*parts):
            self._merge((int(n.item()), m, m2))

    def normalize(self, z: Tensor, eps: float = 1e-6) -> Tensor:
        """``(z - mean) / sqrt(var + eps)`` per element, float32, on ``z``'s device."""
        from lightning_papers.datamodules.latents import standardize  # here: spawned DDP workers skip Lightning

        return standardize(z, self.mean, self.var, eps)

    def denormalize(self, z: Tensor, eps: float = 1e-6) -> Tensor:
        """The inverse of :meth:`normalize`, float32."""
        from lightning_papers.datamodules.latents import destandardize

        return destandardize(z, self.mean, self.var, eps)

    def state_dict(self) -> dict[str, Any]:
        """Plain values: ``shape``, ``count``, ``mean``, ``m2`` and ``var`` (float64 tensors; ``var`` for readers
        that only standardise, like the latent cache's datamodule)."""
        var = self.var if self.count else torch.zeros_like(self.m2)
        return {"shape": list(self.shape), "count": self.count, "mean": self.mean.clone(), "m2": self.m2.clone(),
                "var": var}  # fmt: skip

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if tuple(state["shape"]) != self.shape:
            raise ValueError(f"state of shape {tuple(state['shape'])} does not fit statistics of shape {self.shape}")
        self.count = int(state["count"])
        self.mean = state["mean"].to(torch.float64).clone()
        self.m2 = state["m2"].to(torch.float64).clone()

    def save(self, path: str | Path) -> None:
        torch.save(self.state_dict(), path)

    @classmethod
    def load(cls, path: str | Path) -> LatentStatistics:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"latent statistics file {str(path)!r} does not exist")
        state = torch.load(path, map_location="cpu", weights_only=True)
        stats = cls(tuple(state["shape"]))
        stats.load_state_dict(state)
        return stats
