"""Loss, smoothed L1/2 penalty, masking, optimizer and a plain-torch fit loop (no Trainer needed).

Loss of step s (phase from :meth:`SymbolicConfig.phase`):

    L = mean_ij ((f(x_i)_j - xdot_ij) / out_scale_j)^2  +  [sparse phase] lambda * sum_w p_a(w)

with p_a(w) = |w|^{1/2} for |w| >= a and (-w^4/(8a^3) + 3w^2/(4a) + 3a/8)^{1/2} below (Wu et al. 2014: smooth,
equal to |w|^{1/2} with matching slope at |w| = a). The ``rk4`` loss replaces the first term by
mean ((RK4_h(f, x_i) - x_{i+k}) / (h out_scale))^2 for pairs k samples apart. ``SymbolicRegressionModule`` calls
:func:`training_loss`, :func:`apply_mask` and :func:`build_optimizer`; :func:`fit` runs the same three in a loop.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch

from lightning_papers.methods.symbolic_regression.config import SymbolicConfig
from lightning_papers.methods.symbolic_regression.network import SymbolicNetwork


def smoothed_l_half(w: torch.Tensor, a: float) -> torch.Tensor:
    """Sum of the smoothed |w|^{1/2} penalty p_a over the entries of ``w``."""
    aw = w.abs()
    inner = -(w**4) / (8 * a**3) + 3 * w**2 / (4 * a) + 3 * a / 8
    return torch.where(aw >= a, aw, inner).sqrt().sum()


def penalty(net: SymbolicNetwork, a: float) -> torch.Tensor:
    """Smoothed L1/2 of every effective (masked) weight and bias, division denominators excepted."""
    total = torch.zeros(())
    for lin in net.linears():
        w, b = lin.effective()
        rows = lin.penalised
        total = total + smoothed_l_half(w[rows], a) + smoothed_l_half(b[rows], a)
    return total


def rk4_step(f: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """One classical Runge-Kutta step of size ``h`` (per row) for the autonomous ODE x' = f(x)."""
    h = h[:, None]
    k1 = f(x)
    k2 = f(x + 0.5 * h * k1)
    k3 = f(x + 0.5 * h * k2)
    k4 = f(x + h * k3)
    return x + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4)


def training_loss(
    net: SymbolicNetwork, data: dict[str, torch.Tensor], cfg: SymbolicConfig, step: int
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The loss of optimizer step ``step`` and its parts (``fit`` and ``penalty``, unweighted)."""
    if cfg.loss == "derivative":
        fit_loss = ((net.forward_scaled(data["x"]) - data["dxdt"] / net.out_scale) ** 2).mean()
    else:
        pred = rk4_step(net, data["x0"], data["h"])
        fit_loss = (((pred - data["x1"]) / (data["h"][:, None] * net.out_scale)) ** 2).mean()
    pen = penalty(net, cfg.l_half_a)
    loss = fit_loss + (cfg.l_half * pen if cfg.phase(step) == "sparse" else 0.0)
    return loss, {"fit": fit_loss.detach(), "penalty": pen.detach()}


@torch.no_grad()
def apply_mask(net: SymbolicNetwork, threshold: float) -> int:
    """Fix every weight and bias with |w| < ``threshold`` at zero (mask buffer), division denominators excepted;
    returns how many stay active."""
    active = 0
    for lin in net.linears():
        for p, m in ((lin.weight, lin.weight_mask), (lin.bias, lin.bias_mask)):
            exempt = ~lin.penalised if p.dim() == 1 else ~lin.penalised[:, None]
            m.mul_(((p.abs() >= threshold) | exempt).to(m))
            p.mul_(m)
            active += int(m.sum())
    return active


@torch.no_grad()
def n_active(net: SymbolicNetwork, threshold: float) -> int:
    """Effective weights and biases with |w| >= ``threshold`` (the network's sparsity)."""
    return sum(int((t.abs() >= threshold).sum()) for lin in net.linears() for t in lin.effective())


def build_optimizer(
    net: SymbolicNetwork, cfg: SymbolicConfig
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    """Adam with a triangular cyclic learning rate in [``lr_min``, ``lr``], stepped every optimizer step."""
    opt = torch.optim.Adam(net.parameters(), lr=cfg.lr)
    sched = torch.optim.lr_scheduler.CyclicLR(
        opt, base_lr=cfg.lr_min, max_lr=cfg.lr, step_size_up=cfg.cycle_steps // 2, cycle_momentum=False
    )
    return opt, sched


def to_tensors(arrays: dict, dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    """The numpy training arrays as tensors."""
    return {k: torch.as_tensor(v, dtype=dtype) for k, v in arrays.items()}


def fit(net: SymbolicNetwork, data: dict[str, torch.Tensor], cfg: SymbolicConfig) -> dict[str, list[float]]:
    """Train ``net`` for ``cfg.steps`` full-batch steps (the module's ``training_step`` without a Trainer).

    Returns the history: ``fit`` loss and active-weight count every 50 steps, and ``seconds``.
    """
    net.set_scales(data["x"], data["dxdt"])
    opt, sched = build_optimizer(net, cfg)
    hist: dict[str, list[float]] = {"step": [], "fit": [], "active": []}
    t0 = time.perf_counter()
    for step in range(cfg.steps):
        if step == cfg.mask_step:
            apply_mask(net, cfg.mask_threshold)
        loss, parts = training_loss(net, data, cfg, step)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if step % 50 == 0 or step == cfg.steps - 1:
            hist["step"].append(step)
            hist["fit"].append(float(parts["fit"]))
            hist["active"].append(n_active(net, cfg.mask_threshold))
    hist["seconds"] = [time.perf_counter() - t0]
    return hist
