"""Flow matching for stage 2 of RAE (RAE v1, arXiv 2510.11690, Sec. 5; RAEv2, arXiv 2605.18324, Sec. 3).

Convention (RAE's, the opposite of SiT's): ``t = 0`` is data and ``t = 1`` is noise,

    x_t = (1 - t) x + t eps,        v = dx_t/dt = eps - x,

and sampling integrates from ``t = 1`` to ``t = 0`` with Euler steps ``x <- x - h v_hat``.

* Training times: ``t = sigmoid(N(mean, std^2))`` (logit-normal), then the dimension-dependent shift
  ``t' = alpha t / (1 + (alpha - 1) t)`` with ``alpha = sqrt(m / 4096)``, ``m = C h w`` (RAE v1, Sec. 4.2). For
  ``alpha > 1`` the shift moves every ``t`` towards noise; the endpoints stay fixed. The same shift is applied to the
  uniform Euler grid. For latents smaller than 4096 numbers the formula gives ``alpha < 1`` (a shift towards data,
  never used in the papers): ``clamp_alpha_at_one=True`` (default; RAE v1's code asserts ``alpha >= 1``) clamps it.
* x-prediction (RAEv2): the network outputs ``x_hat`` and ``v_hat = (x_t - x_hat) / max(t, t_clamp)``. The target is
  ``(x_t - x) / max(t, t_clamp)``, which equals ``eps - x`` for ``t >= t_clamp``; so the loss is
  ``mean ||x_hat - x||^2 / max(t, t_clamp)^2`` (as in RAEv2's code, where the paper's sum is a mean).
* v-prediction (RAE v1): the network outputs ``v_hat`` and the loss is ``mean ||v_hat - (eps - x)||^2``.
* With the IG head the total loss is ``L(full) + ig_weight * L(base)`` (RAEv2: ``ig_weight = 1``).
* Label dropout: with probability ``label_dropout`` a label is replaced by the null class ``model.null_class``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, Protocol

import torch


@dataclass
class TransportConfig:
    """Hyper-parameters of stage-2 training and sampling (defaults: RAEv2's released ImageNet config).

    Attributes:
        prediction: what the network outputs, ``"x"`` (RAEv2) or ``"v"`` (RAE v1); must match ``DiTConfig``.
        shift: ``"dimension"``: alpha = sqrt(C h w / base_dim) (RAE v1 Sec. 4.2); ``"fixed"``: the given ``alpha``;
            ``"none"``: alpha = 1.
        alpha: the shift factor when ``shift="fixed"`` (must be > 0).
        base_dim: the reference dimension of the shift (4096 = 4 x 32 x 32, the SD-VAE latent).
        clamp_alpha_at_one: clamp alpha below 1 up to 1, so the shift never moves t towards data.
        t_clamp: the floor of t in ``v = (x_t - x) / max(t, t_clamp)`` (RAEv2: 0.05).
        t_mean, t_std: logit-normal parameters of the training times (0, 1).
        ig_weight: weight of the IG (base) head's loss (RAEv2: 1.0).
        label_dropout: probability of replacing a label by the null class during training (0.1).
        sample_steps: Euler steps for sampling (RAEv2: 50 during training, 100 in the released sampling config).
    """

    prediction: Literal["x", "v"] = "x"
    shift: Literal["dimension", "fixed", "none"] = "dimension"
    alpha: float = 1.0
    base_dim: int = 4096
    clamp_alpha_at_one: bool = True
    t_clamp: float = 0.05
    t_mean: float = 0.0
    t_std: float = 1.0
    ig_weight: float = 1.0
    label_dropout: float = 0.1
    sample_steps: int = 50

    def __post_init__(self) -> None:
        if self.prediction not in ("x", "v"):
            raise ValueError(f"prediction must be 'x' or 'v', got {self.prediction!r}")
        if self.shift not in ("dimension", "fixed", "none"):
            raise ValueError(f"shift must be 'dimension', 'fixed' or 'none', got {self.shift!r}")
        if not self.alpha > 0:
            raise ValueError(f"alpha must be > 0, got {self.alpha}")
        if self.base_dim < 1:
            raise ValueError(f"base_dim must be >= 1, got {self.base_dim}")
        if not 0 < self.t_clamp < 1:
            raise ValueError(f"t_clamp must lie in (0, 1), got {self.t_clamp}")
        if not self.t_std > 0:
            raise ValueError(f"t_std must be > 0, got {self.t_std}")
        if self.ig_weight < 0:
            raise ValueError(f"ig_weight must be >= 0, got {self.ig_weight}")
        if not 0 <= self.label_dropout < 1:
            raise ValueError(f"label_dropout must lie in [0, 1), got {self.label_dropout}")
        if self.sample_steps < 1:
            raise ValueError(f"sample_steps must be >= 1, got {self.sample_steps}")


class FlowModel(Protocol):
    """What ``training_loss`` needs of a model (``DiTDH`` satisfies it)."""

    latent_shape: tuple[int, int, int]
    null_class: int
    prediction: str

    def check_labels(self, y: torch.Tensor) -> None: ...

    def __call__(
        self, x_t: torch.Tensor, t: torch.Tensor, y: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor | None]: ...


def resolve_alpha(cfg: TransportConfig, latent_shape: tuple[int, ...]) -> float:
    """The shift factor for latents of shape ``(C, h, w)`` under ``cfg`` (e.g. 8.0 for 1024 x 16 x 16)."""
    if cfg.shift == "none":
        return 1.0
    alpha = cfg.alpha if cfg.shift == "fixed" else math.sqrt(math.prod(latent_shape) / cfg.base_dim)
    return max(alpha, 1.0) if cfg.clamp_alpha_at_one else alpha


def shift_time(t: torch.Tensor, alpha: float) -> torch.Tensor:
    """``t' = alpha t / (1 + (alpha - 1) t)``: identity at alpha = 1, towards noise (t' >= t) for alpha > 1."""
    if not alpha > 0:
        raise ValueError(f"the time shift needs alpha > 0, got {alpha}")
    return alpha * t / (1 + (alpha - 1) * t)


def shifted_grid(steps: int, alpha: float) -> torch.Tensor:
    """``steps + 1`` float64 times from 1 (noise) down to 0 (data): the uniform grid under ``shift_time``."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    return shift_time(torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float64), alpha)


def _expand(t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return t.reshape(-1, *([1] * (x.ndim - 1))).to(x.dtype)


def x_to_velocity(x_hat: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor, t_clamp: float) -> torch.Tensor:
    """``v_hat = (x_t - x_hat) / max(t, t_clamp)``."""
    return (x_t - x_hat) / _expand(t.clamp_min(t_clamp), x_t)


def velocity_to_x(v_hat: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor, t_clamp: float) -> torch.Tensor:
    """Inverse of ``x_to_velocity``: ``x_hat = x_t - max(t, t_clamp) v_hat``."""
    return x_t - _expand(t.clamp_min(t_clamp), x_t) * v_hat


def to_velocity(
    output: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor, prediction: str, t_clamp: float
) -> torch.Tensor:
    """A network output of kind ``prediction`` ("x" or "v") as a velocity."""
    if prediction == "v":
        return output
    if prediction == "x":
        return x_to_velocity(output, x_t, t, t_clamp)
    raise ValueError(f"prediction must be 'x' or 'v', got {prediction!r}")


def draw_random(
    kind: Literal["normal", "uniform"], shape: tuple[int, ...], generator: torch.Generator | None, device: torch.device
) -> torch.Tensor:
    """N(0, 1) or U(0, 1) numbers drawn on ``generator``'s device (default RNG when None), moved to ``device``."""
    gen_device = generator.device if generator is not None else device
    fn = torch.randn if kind == "normal" else torch.rand
    return fn(shape, generator=generator, device=gen_device).to(device)


def training_loss(
    model: FlowModel,
    x: torch.Tensor,
    y: torch.Tensor,
    cfg: TransportConfig,
    generator: torch.Generator | None = None,
) -> dict[str, torch.Tensor]:
    """One flow-matching loss on clean latents ``x [B, C, h, w]`` with labels ``y [B]``.

    Returns ``loss`` (to minimise), ``loss_full``, ``loss_base`` (only with an IG head) and the drawn ``t``
    (detached). Noise, times and label dropout come from ``generator`` (the default RNG when None).
    """
    if model.prediction != cfg.prediction:
        raise ValueError(f"the model predicts {model.prediction!r} but TransportConfig.prediction={cfg.prediction!r}")
    if x.ndim != 4 or tuple(x.shape[1:]) != tuple(model.latent_shape):
        raise ValueError(f"latents must have shape [B, *{tuple(model.latent_shape)}], got {tuple(x.shape)}")
    if y.shape != (x.shape[0],):
        raise ValueError(f"labels must have shape [{x.shape[0]}], got {tuple(y.shape)}")
    model.check_labels(y)
    b, device = x.shape[0], x.device
    drop = draw_random("uniform", (b,), generator, device) < cfg.label_dropout
    y = torch.where(drop, torch.full_like(y, model.null_class), y)
    t = torch.sigmoid(cfg.t_mean + cfg.t_std * draw_random("normal", (b,), generator, device))
    t = shift_time(t, resolve_alpha(cfg, tuple(model.latent_shape))).to(x.dtype)
    eps = draw_random("normal", tuple(x.shape), generator, device).to(x.dtype)
    x_t = (1 - _expand(t, x)) * x + _expand(t, x) * eps
    if cfg.prediction == "x":
        target = x_to_velocity(x, x_t, t, cfg.t_clamp)  # = eps - x for t >= t_clamp
    else:
        target = eps - x
    full, base = model(x_t, t, y)
    loss_full = (to_velocity(full, x_t, t, cfg.prediction, cfg.t_clamp) - target).pow(2).mean()
    out = {"loss": loss_full, "loss_full": loss_full.detach(), "t": t.detach()}
    if base is not None:
        loss_base = (to_velocity(base, x_t, t, cfg.prediction, cfg.t_clamp) - target).pow(2).mean()
        out["loss"] = loss_full + cfg.ig_weight * loss_base
        out["loss_base"] = loss_base.detach()
    return out


def euler_sample(
    velocity_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    noise: torch.Tensor,
    grid: torch.Tensor,
) -> torch.Tensor:
    """Integrate ``dx/dt = v(x, t)`` from ``grid[0]`` (noise, t = 1) to ``grid[-1]`` (data) with Euler steps.

    ``velocity_fn(x, t)`` gets ``t`` of shape ``[B]`` (the grid value, equal across the batch).
    """
    if grid.ndim != 1 or grid.numel() < 2:
        raise ValueError(f"grid must be a 1-D tensor of >= 2 times, got shape {tuple(grid.shape)}")
    x = noise
    times = grid.tolist()
    for t_cur, t_next in zip(times[:-1], times[1:]):
        t_batch = torch.full((x.shape[0],), t_cur, device=x.device, dtype=x.dtype)
        x = x - (t_cur - t_next) * velocity_fn(x, t_batch)
    return x
