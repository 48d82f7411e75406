"""Posterior heads q(θ | z, log N): a diagonal Gaussian and a neural spline flow (zuko), on a shared interface.

Both condition on the context c = [z, log N] (PAIRS §2: the map from the pooled embedding to the posterior
changes with N, so the head must see N). The context is standardised with buffers set from data
(:meth:`PosteriorHead.set_normalization`), which keeps the head well conditioned whatever φ's scale is.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import torch
from torch import nn

from lightning_papers.methods.pairs.encoder import mlp

HeadKind = Literal["gaussian", "flow"]


def as_log_n(log_n: torch.Tensor | float, num_sets: int, like: torch.Tensor) -> torch.Tensor:
    """log N as a [S, 1] tensor on ``like``'s device and dtype (a scalar is broadcast to every set)."""
    t = torch.as_tensor(log_n, dtype=like.dtype, device=like.device)
    return t.reshape(-1, 1).expand(num_sets, 1) if t.numel() == 1 else t.reshape(num_sets, 1)


class PosteriorHead(nn.Module):
    """Base class: a conditional density over θ ∈ R^p given a pooled embedding z ∈ R^k and log N."""

    def __init__(self, theta_dim: int, embed_dim: int) -> None:
        super().__init__()
        if theta_dim < 1 or embed_dim < 1:
            raise ValueError(f"theta_dim and embed_dim must be >= 1, got {theta_dim} and {embed_dim}")
        self.theta_dim = theta_dim
        self.context_dim = embed_dim + 1
        self.register_buffer("ctx_loc", torch.zeros(self.context_dim))
        self.register_buffer("ctx_scale", torch.ones(self.context_dim))

    @torch.no_grad()
    def set_normalization(self, z: torch.Tensor, log_n: torch.Tensor | float) -> None:
        """Standardise future contexts by these ones' mean and sd (sd floored at 1e-3; a constant log N is kept)."""
        c = torch.cat([z, as_log_n(log_n, z.shape[0], z)], dim=-1)
        self.ctx_loc.copy_(c.mean(0))
        self.ctx_scale.copy_(c.std(0).nan_to_num(1.0).clamp_min(1e-3))
        if c.shape[0] < 2 or c[:, -1].std() < 1e-6:
            self.ctx_loc[-1], self.ctx_scale[-1] = 0.0, 1.0

    def context(self, z: torch.Tensor, log_n: torch.Tensor | float) -> torch.Tensor:
        """The standardised context [S, k + 1]."""
        c = torch.cat([z, as_log_n(log_n, z.shape[0], z)], dim=-1)
        return (c - self.ctx_loc) / self.ctx_scale

    def log_prob(self, theta: torch.Tensor, z: torch.Tensor, log_n: torch.Tensor | float) -> torch.Tensor:
        """log q(θ_s | z_s, log N_s) for ``theta`` [S, p] -> [S]."""
        raise NotImplementedError

    def sample(self, num_samples: int, z: torch.Tensor, log_n: torch.Tensor | float) -> torch.Tensor:
        """Posterior samples [num_samples, S, p]."""
        raise NotImplementedError

    def log_prob_grid(self, grid: torch.Tensor, z: torch.Tensor, log_n: torch.Tensor | float) -> torch.Tensor:
        """log q at every point of ``grid`` [G, p] for every set -> [S, G]."""
        s, g = z.shape[0], grid.shape[0]
        grid = grid.to(z)
        theta = grid[None].expand(s, g, self.theta_dim).reshape(s * g, self.theta_dim)
        zz = z[:, None].expand(s, g, z.shape[-1]).reshape(s * g, -1)
        ln = as_log_n(log_n, s, z)[:, None].expand(s, g, 1).reshape(s * g, 1)
        return self.log_prob(theta, zz, ln).reshape(s, g)

    def marginal_cdf(
        self, theta: torch.Tensor, z: torch.Tensor, log_n: torch.Tensor | float, num_samples: int = 500
    ) -> torch.Tensor:
        """Marginal posterior CDF of each coordinate at ``theta`` [S, p] -> [S, p] (Monte Carlo by default)."""
        samples = self.sample(num_samples, z, log_n)
        return (samples < theta[None]).to(theta.dtype).mean(0)


class GaussianHead(PosteriorHead):
    """q(θ | c) = N(μ(c), diag σ(c)²), with an MLP c → (μ, log σ) (default hidden widths 64, 64).

    Args:
        theta_dim: p.
        embed_dim: k, the encoder's output size.
        hidden: hidden widths of the MLP.
    """

    def __init__(self, theta_dim: int, embed_dim: int, hidden: Sequence[int] = (64, 64)) -> None:
        super().__init__(theta_dim, embed_dim)
        self.net = mlp([self.context_dim, *hidden, 2 * theta_dim])

    def mean_sd(self, z: torch.Tensor, log_n: torch.Tensor | float) -> tuple[torch.Tensor, torch.Tensor]:
        """Posterior mean and sd, each [S, p]."""
        mu, log_sd = self.net(self.context(z, log_n)).chunk(2, dim=-1)
        return mu, log_sd.clamp(-9.0, 5.0).exp()

    def log_prob(self, theta: torch.Tensor, z: torch.Tensor, log_n: torch.Tensor | float) -> torch.Tensor:
        mu, sd = self.mean_sd(z, log_n)
        return (-0.5 * ((theta - mu) / sd) ** 2 - sd.log() - 0.5 * math.log(2 * math.pi)).sum(-1)

    def log_prob_grid(self, grid: torch.Tensor, z: torch.Tensor, log_n: torch.Tensor | float) -> torch.Tensor:
        mu, sd = self.mean_sd(z, log_n)  # one network call per set, then the closed form at every grid point
        g = grid.to(z)[None]  # [1, G, p]
        return (-0.5 * ((g - mu[:, None]) / sd[:, None]) ** 2 - sd[:, None].log() - 0.5 * math.log(2 * math.pi)).sum(-1)

    def sample(self, num_samples: int, z: torch.Tensor, log_n: torch.Tensor | float) -> torch.Tensor:
        mu, sd = self.mean_sd(z, log_n)
        return mu + sd * torch.randn(num_samples, *mu.shape, device=mu.device, dtype=mu.dtype)

    def marginal_cdf(
        self, theta: torch.Tensor, z: torch.Tensor, log_n: torch.Tensor | float, num_samples: int = 500
    ) -> torch.Tensor:
        mu, sd = self.mean_sd(z, log_n)
        return torch.special.ndtr((theta - mu) / sd)


class FlowHead(PosteriorHead):
    """q(θ | c) as a conditional neural spline flow from ``zuko`` (``zuko.flows.NSF``).

    Args:
        theta_dim: p.
        embed_dim: k, the encoder's output size.
        transforms: number of autoregressive spline transforms.
        hidden: hidden widths of each transform's conditioner.
        bins: spline bins.
    """

    def __init__(
        self, theta_dim: int, embed_dim: int, transforms: int = 3, hidden: Sequence[int] = (64, 64), bins: int = 8
    ) -> None:
        super().__init__(theta_dim, embed_dim)
        import zuko

        self.flow = zuko.flows.NSF(
            features=theta_dim,
            context=self.context_dim,
            transforms=transforms,
            hidden_features=tuple(hidden),
            bins=bins,
        )

    def log_prob(self, theta: torch.Tensor, z: torch.Tensor, log_n: torch.Tensor | float) -> torch.Tensor:
        return self.flow(self.context(z, log_n)).log_prob(theta)

    def sample(self, num_samples: int, z: torch.Tensor, log_n: torch.Tensor | float) -> torch.Tensor:
        return self.flow(self.context(z, log_n)).sample((num_samples,))


def build_head(kind: HeadKind, theta_dim: int, embed_dim: int, hidden: Sequence[int] = (64, 64)) -> PosteriorHead:
    """A :class:`GaussianHead` (``"gaussian"``) or :class:`FlowHead` (``"flow"``)."""
    if kind == "gaussian":
        return GaussianHead(theta_dim, embed_dim, hidden)
    if kind == "flow":
        return FlowHead(theta_dim, embed_dim, hidden=hidden)
    raise ValueError(f"head must be 'gaussian' or 'flow', got {kind!r}")
