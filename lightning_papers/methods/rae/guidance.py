"""Guidance for stage-2 sampling in one place (RAE v1, arXiv 2510.11690, Sec. 5; RAEv2, arXiv 2605.18324, Sec. 3-4).

Every mode mixes a strong and a weak prediction, ``weak + s (strong - weak)``, only for samples whose current time
lies in the mode's interval ``[t_min, t_max]`` (inclusive); outside it the strong prediction is used alone.
Predictions are mixed as velocities; for x-prediction ``x -> v`` is affine with the same coefficients for both
terms, so mixing in x-space (as RAEv2 writes it) gives the same result.

* ``none``: the conditional prediction.
* ``cfg``: classifier-free guidance, weak = the same model with the null class (``model.null_class``), ``scale``.
* ``autoguidance`` (RAE v1): weak = a separately trained, smaller model ``guide_model`` on the same class, ``scale``.
* ``repa`` (RAEv2 "internal guidance"): weak = the IG/REPA head's prediction from the shallow trunk,
  ``x_g = x_base + repa_scale (x_full - x_base)``, inside ``repa_interval``; one forward pass per step (released
  setting: ``repa_scale = 1.78``, ``t in [0.10, 1.0]``, 100 Euler steps).
* ``repa_cfg``: IG applied to the conditional and to the unconditional branch, then CFG on the two results
  (``forward_with_ig_and_cfg``, as in RAEv2's code).

NFE (network evaluations per sample; one forward of any network on one sample counts 1, the guide model of
autoguidance included): ``none``/``repa``: ``steps``. ``cfg``/``repa_cfg``/``autoguidance``: ``steps`` plus one
per step whose time lies in ``interval`` -- the second pass is skipped outside the interval, so with the default
``interval=(0, 1)`` it is ``2 steps``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from lightning_papers.methods.rae.transport import (
    TransportConfig,
    draw_random,
    euler_sample,
    resolve_alpha,
    shifted_grid,
    to_velocity,
)

GuidanceMode = Literal["none", "cfg", "autoguidance", "repa", "repa_cfg"]
_MODES = ("none", "cfg", "autoguidance", "repa", "repa_cfg")


@dataclass
class GuidanceConfig:
    """Guidance at sampling time.

    Attributes:
        mode: ``none``, ``cfg``, ``autoguidance``, ``repa`` or ``repa_cfg``.
        scale: CFG / AutoGuidance scale (1 = no guidance; RAE v1's AutoGuidance used 1.42).
        repa_scale: REPA-head (IG) scale ``s`` (RAEv2 released: 1.78; 1 = no guidance).
        interval: ``(t_min, t_max)`` where ``scale`` applies (CFG, AutoGuidance).
        repa_interval: ``(t_min, t_max)`` where ``repa_scale`` applies (RAEv2 released: (0.10, 1.0)).
    """

    mode: GuidanceMode = "none"
    scale: float = 1.0
    repa_scale: float = 1.78
    interval: tuple[float, float] = (0.0, 1.0)
    repa_interval: tuple[float, float] = (0.10, 1.0)

    def __post_init__(self) -> None:
        if self.mode not in _MODES:
            raise ValueError(f"guidance mode must be one of {_MODES}, got {self.mode!r}")
        for name in ("scale", "repa_scale"):
            if getattr(self, name) < 0:
                raise ValueError(f"guidance {name} must be >= 0, got {getattr(self, name)}")
        for name in ("interval", "repa_interval"):
            lo, hi = (float(v) for v in getattr(self, name))
            if not 0.0 <= lo < hi <= 1.0:
                raise ValueError(f"guidance {name} must satisfy 0 <= t_min < t_max <= 1, got ({lo}, {hi})")
            setattr(self, name, (lo, hi))


def _in_interval(t: torch.Tensor, interval: tuple[float, float]) -> torch.Tensor:
    return (t >= interval[0]) & (t <= interval[1])


def _mix(weak: torch.Tensor, strong: torch.Tensor, scale: float, mask: torch.Tensor) -> torch.Tensor:
    """``weak + scale (strong - weak)`` where ``mask`` (per sample), ``strong`` elsewhere (exactly when scale = 1)."""
    if scale == 1.0:
        return strong
    mixed = weak + scale * (strong - weak)
    return torch.where(mask.reshape(-1, *([1] * (strong.ndim - 1))), mixed, strong)


def _velocities(
    net: nn.Module, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor, t_clamp: float
) -> tuple[torch.Tensor, torch.Tensor | None]:
    full, base = net(x, t, y)
    v_full = to_velocity(full, x, t, net.prediction, t_clamp)
    v_base = None if base is None else to_velocity(base, x, t, net.prediction, t_clamp)
    return v_full, v_base


def forward_with_ig_and_cfg(
    model: nn.Module,
    x_t: torch.Tensor,
    t: torch.Tensor,
    y: torch.Tensor,
    ig_scale: float,
    cfg_scale: float,
    ig_interval: tuple[float, float],
    cfg_interval: tuple[float, float],
    t_clamp: float = 0.05,
) -> tuple[torch.Tensor, torch.Tensor]:
    """IG on the conditional and unconditional branches, then CFG: the guided velocity and the NFE per sample.

    The unconditional branch is evaluated (batched with the conditional one, one forward call) only for samples
    whose ``t`` lies in ``cfg_interval``. ``ig_scale = 1`` gives plain CFG, ``cfg_scale = 1`` plain IG.
    """
    guided = _in_interval(t, cfg_interval)
    idx = guided.nonzero().squeeze(1)
    null = torch.full_like(y[idx], model.null_class)
    t_all = torch.cat([t, t[idx]])
    v_full, v_base = _velocities(model, torch.cat([x_t, x_t[idx]]), t_all, torch.cat([y, null]), t_clamp)
    b = x_t.shape[0]
    if v_base is not None:
        v_full = _mix(v_base, v_full, ig_scale, _in_interval(t_all, ig_interval))
    elif ig_scale != 1.0:
        raise ValueError(f"IG scale {ig_scale} needs a model with an IG head (DiTConfig.ig_head=True)")
    cond, uncond = v_full[:b], v_full[b:]
    v = cond.clone()
    if idx.numel():
        v[idx] = _mix(uncond, cond[idx], cfg_scale, torch.ones_like(idx, dtype=torch.bool))
    return v, 1 + guided.long()


class GuidedVelocity:
    """``v_hat(x_t, t)`` under a guidance mode, counting network evaluations per sample in ``nfe`` (``[B]``).

    Built by ``build_velocity_fn``; call it with ``x_t [B, C, h, w]`` and ``t [B]``.
    """

    def __init__(
        self,
        model: nn.Module,
        cfg: GuidanceConfig,
        y: torch.Tensor,
        guide_model: nn.Module | None = None,
        t_clamp: float = 0.05,
    ) -> None:
        model.check_labels(y)
        if cfg.mode in ("repa", "repa_cfg") and not model.has_ig_head:
            raise ValueError(f"guidance mode {cfg.mode!r} needs a model with an IG head (DiTConfig.ig_head=True)")
        if cfg.mode == "autoguidance":
            if guide_model is None:
                raise ValueError("guidance mode 'autoguidance' needs guide_model (a separately trained smaller DiT)")
            if tuple(guide_model.latent_shape) != tuple(model.latent_shape):
                raise ValueError(f"guide latent shape {guide_model.latent_shape} != model's {model.latent_shape}")
            if guide_model.num_classes != model.num_classes:
                raise ValueError(f"guide has {guide_model.num_classes} classes, the model {model.num_classes}")
        self.model, self.cfg, self.y, self.guide_model, self.t_clamp = model, cfg, y, guide_model, t_clamp
        self.nfe = torch.zeros(y.shape[0], dtype=torch.long)

    def __call__(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        cfg, y = self.cfg, self.y
        if cfg.mode in ("cfg", "repa_cfg"):
            ig_scale = cfg.repa_scale if cfg.mode == "repa_cfg" else 1.0
            v, nfe = forward_with_ig_and_cfg(
                self.model, x_t, t, y, ig_scale, cfg.scale, cfg.repa_interval, cfg.interval, self.t_clamp
            )
            self.nfe += nfe.cpu()
            return v
        v_full, v_base = _velocities(self.model, x_t, t, y, self.t_clamp)
        self.nfe += 1
        if cfg.mode == "repa":
            assert v_base is not None
            return _mix(v_base, v_full, cfg.repa_scale, _in_interval(t, cfg.repa_interval))
        if cfg.mode == "autoguidance":
            assert self.guide_model is not None
            guided = _in_interval(t, cfg.interval)
            idx = guided.nonzero().squeeze(1)
            v = v_full.clone()
            if idx.numel():
                v_weak, _ = _velocities(self.guide_model, x_t[idx], t[idx], y[idx], self.t_clamp)
                v[idx] = _mix(v_weak, v_full[idx], cfg.scale, torch.ones_like(idx, dtype=torch.bool))
            self.nfe += guided.long().cpu()
            return v
        return v_full


def build_velocity_fn(
    model: nn.Module,
    cfg: GuidanceConfig,
    y: torch.Tensor,
    guide_model: nn.Module | None = None,
    t_clamp: float = 0.05,
) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """The guided velocity ``(x_t, t) -> v_hat`` for labels ``y``; its ``.nfe`` counts evaluations per sample."""
    return GuidedVelocity(model, cfg, y, guide_model=guide_model, t_clamp=t_clamp)


def sample(
    model: nn.Module,
    labels: torch.Tensor,
    latent_shape: tuple[int, int, int],
    transport_cfg: TransportConfig,
    guidance_cfg: GuidanceConfig,
    generator: torch.Generator | None = None,
    guide_model: nn.Module | None = None,
) -> tuple[torch.Tensor, int]:
    """Draw latents for ``labels`` (null id allowed: unconditional) with ``transport_cfg.sample_steps`` Euler steps
    on the shifted grid; returns ``(latents [B, C, h, w], NFE per sample)``. Runs without autograd."""
    if tuple(latent_shape) != tuple(model.latent_shape):
        raise ValueError(f"latent_shape {tuple(latent_shape)} does not match the model's {tuple(model.latent_shape)}")
    if model.prediction != transport_cfg.prediction:
        raise ValueError(
            f"the model predicts {model.prediction!r} but TransportConfig.prediction={transport_cfg.prediction!r}"
        )
    if labels.ndim != 1:
        raise ValueError(f"labels must have shape [B], got {tuple(labels.shape)}")
    device = next(model.parameters()).device
    labels = labels.to(device)
    fn = GuidedVelocity(model, guidance_cfg, labels, guide_model=guide_model, t_clamp=transport_cfg.t_clamp)
    noise = draw_random("normal", (labels.shape[0], *latent_shape), generator, device)
    grid = shifted_grid(transport_cfg.sample_steps, resolve_alpha(transport_cfg, tuple(latent_shape)))
    with torch.no_grad():
        latents = euler_sample(fn, noise, grid)
    return latents, int(fn.nfe.max()) if fn.nfe.numel() else 0
