"""The [SF]2M objective (simulation-free score and flow matching, arXiv 2307.03672) and its two samplers.

Plain torch, no Lightning. Given coupled pairs (x0, x1), t ~ U(t_min, 1 - t_min) and noise eps ~ N(0, I):

* Brownian-bridge path: mu_t = (1 - t) x0 + t x1, sigma_t = sigma sqrt(t (1 - t)), x_t = mu_t + sigma_t eps.
* Flow target (probability-flow ODE drift): u_t = (1 - 2t) / (2 t (1 - t)) (x_t - mu_t) + (x1 - x0).
* Loss: |v(t, x_t) - u_t|^2 + |lambda_t s(t, x_t) + eps|^2 with lambda_t = 2 sigma_t / sigma^2, so the score
  network learns (sigma^2 / 2) grad log p_t (TorchCFM ``SchrodingerBridgeConditionalFlowMatcher``).
* SDE sampler: Euler-Maruyama of dx = (v + s) dt + sigma dW; ODE sampler: Euler of dx = v dt.
"""

from __future__ import annotations

import torch
from torch import nn


class MLP(nn.Module):
    """TorchCFM's ``MLP``: input (x, t), three SELU hidden layers of width ``width``, output of size ``dim``."""

    def __init__(self, dim: int, width: int = 64) -> None:
        super().__init__()
        if dim < 1 or width < 1:
            raise ValueError(f"dim and width must be >= 1, got dim={dim}, width={width}")
        self.net = nn.Sequential(
            nn.Linear(dim + 1, width),
            nn.SELU(),
            nn.Linear(width, width),
            nn.SELU(),
            nn.Linear(width, width),
            nn.SELU(),
            nn.Linear(width, dim),
        )

    def forward(self, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """``t`` of shape ``(B,)`` or ``(B, 1)``, ``x`` of shape ``(B, dim)``."""
        return self.net(torch.cat([x, t.reshape(-1, 1).to(x.dtype)], dim=1))


def bridge_targets(
    x0: torch.Tensor, x1: torch.Tensor, t: torch.Tensor, noise: torch.Tensor, sigma: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Return ``(x_t, u_t, lambda_t)`` for the Brownian bridge with diffusion ``sigma`` (module doc)."""
    tt = t.reshape(-1, 1)
    mu = (1 - tt) * x0 + tt * x1
    sigma_t = sigma * torch.sqrt(tt * (1 - tt))
    xt = mu + sigma_t * noise
    ut = (1 - 2 * tt) / (2 * tt * (1 - tt)) * (xt - mu) + (x1 - x0)
    lam = 2 * sigma_t / sigma**2
    return xt, ut, lam


def sf2m_loss(
    flow: nn.Module,
    score: nn.Module,
    x0: torch.Tensor,
    x1: torch.Tensor,
    sigma: float,
    t_min: float = 1e-3,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Flow-matching and score-matching losses (each a mean over the batch of a squared norm).

    ``t`` is drawn from U(t_min, 1 - t_min): the flow target's noise term scales like 1 / sqrt(t (1 - t)), so
    clipping the ends avoids rare huge targets (TorchCFM uses t_min = 0; the paper does not say).
    """
    if not sigma > 0:
        raise ValueError(f"sigma must be > 0, got {sigma}")
    if x0.shape != x1.shape:
        raise ValueError(f"x0 and x1 batches must have the same shape, got {tuple(x0.shape)} and {tuple(x1.shape)}")
    b = x0.shape[0]
    t = t_min + (1 - 2 * t_min) * torch.rand(b, device=x0.device, dtype=x0.dtype, generator=generator)
    noise = torch.randn(x0.shape, device=x0.device, dtype=x0.dtype, generator=generator)
    xt, ut, lam = bridge_targets(x0, x1, t, noise, sigma)
    flow_loss = ((flow(t, xt) - ut) ** 2).sum(1).mean()
    score_loss = ((lam * score(t, xt) + noise) ** 2).sum(1).mean()
    return flow_loss, score_loss


@torch.no_grad()
def sample_sde(
    flow: nn.Module,
    score: nn.Module,
    x0: torch.Tensor,
    sigma: float,
    n_steps: int = 100,
    generator: torch.Generator | None = None,
    return_path: bool = False,
) -> torch.Tensor:
    """Euler-Maruyama of dx = (v + s) dt + sigma dW from t=0 to 1 (``n_steps`` steps; TorchCFM's SF2M notebook).

    Returns the end points ``(B, d)``, or the whole path ``(n_steps + 1, B, d)`` with ``return_path``.
    """
    dt = 1.0 / n_steps
    x = x0.clone()
    path = [x]
    for i in range(n_steps):
        t = torch.full((x.shape[0],), i * dt, device=x.device, dtype=x.dtype)
        drift = flow(t, x) + score(t, x)
        dw = torch.randn(x.shape, device=x.device, dtype=x.dtype, generator=generator) * dt**0.5
        x = x + drift * dt + sigma * dw
        path.append(x)
    return torch.stack(path) if return_path else x


@torch.no_grad()
def sample_ode(flow: nn.Module, x0: torch.Tensor, n_steps: int = 100, return_path: bool = False) -> torch.Tensor:
    """Euler steps of the probability-flow ODE dx = v dt from t=0 to 1 (deterministic given ``x0``)."""
    dt = 1.0 / n_steps
    x = x0.clone()
    path = [x]
    for i in range(n_steps):
        t = torch.full((x.shape[0],), i * dt, device=x.device, dtype=x.dtype)
        x = x + flow(t, x) * dt
        path.append(x)
    return torch.stack(path) if return_path else x
