"""The symbolic-unit network (EQL, Martius & Lampert 2016; Sahoo et al. 2018; the Chaos paper's architecture).

Each symbolic layer maps its input u linearly, z = W u + b, and applies a bank of units to slices of z:
identity z_i, sin z_i, cos z_i, products z_a z_b, optional safe divisions z_a / z_b (last layer only) and exp z_i.
A linear output layer gives one right-hand side per state. Inputs are divided by a fixed per-state scale and
outputs multiplied by one (buffers set from the data), so the same weights work for states of any size; the
readout pushes sympy symbols through exactly this computation.

Every weight and bias has a 0/1 mask buffer; the forward pass uses ``weight * mask``, so a masked weight is zero
and gets no gradient.
"""

from __future__ import annotations

import torch
from torch import nn

from lightning_papers.methods.symbolic_regression.config import SymbolicConfig

UNIT_KINDS = ("identity", "sin", "cos", "product", "div", "exp")


def unit_counts(cfg: SymbolicConfig, last: bool) -> dict[str, int]:
    """Units of each kind in one symbolic layer (division only in the last one)."""
    return {
        "identity": cfg.n_identity,
        "sin": cfg.n_sin,
        "cos": cfg.n_cos,
        "product": cfg.n_products,
        "div": cfg.n_div if last else 0,
        "exp": cfg.n_exp,
    }


class MaskedLinear(nn.Module):
    """``y = (W * mask_W) x + b * mask_b`` with normal(0, std) initialisation."""

    def __init__(self, n_in: int, n_out: int, std: float, generator: torch.Generator) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(n_out, n_in, generator=generator) * std)
        self.bias = nn.Parameter(torch.randn(n_out, generator=generator) * std)
        self.register_buffer("weight_mask", torch.ones(n_out, n_in))
        self.register_buffer("bias_mask", torch.ones(n_out))
        # rows exempt from the sparsity penalty and the mask (division denominators: num/den is invariant to a
        # common factor, so a penalty on both would shrink them together until the mask removes the unit)
        self.register_buffer("penalised", torch.ones(n_out, dtype=torch.bool))

    def effective(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.weight * self.weight_mask, self.bias * self.bias_mask

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w, b = self.effective()
        return x @ w.T + b


class SymbolicLayer(nn.Module):
    """A linear map into a bank of units; ``counts`` maps unit kind -> number of units."""

    def __init__(
        self, n_in: int, counts: dict[str, int], std: float, div_eps: float, generator: torch.Generator
    ) -> None:
        super().__init__()
        self.counts = {k: int(counts.get(k, 0)) for k in UNIT_KINDS}
        arity = {"product": 2, "div": 2}
        self.n_linear = sum(arity.get(k, 1) * n for k, n in self.counts.items())
        self.n_out = sum(self.counts.values())
        self.div_eps = div_eps
        self.linear = MaskedLinear(n_in, self.n_linear, std, generator)
        if self.counts["div"]:
            start = sum((2 if k == "product" else 1) * self.counts[k] for k in UNIT_KINDS[: UNIT_KINDS.index("div")])
            self.linear.penalised[start + self.counts["div"] : start + 2 * self.counts["div"]] = False

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        z = self.linear(u)
        out, i = [], 0
        for kind in UNIT_KINDS:
            n = self.counts[kind]
            if n == 0:
                continue
            if kind in ("product", "div"):
                a, b = z[:, i : i + n], z[:, i + n : i + 2 * n]
                i += 2 * n
                if kind == "product":
                    out.append(a * b)
                else:
                    out.append(a / safe_denominator(b, self.div_eps))
                continue
            zi = z[:, i : i + n]
            i += n
            out.append({"identity": lambda v: v, "sin": torch.sin, "cos": torch.cos}.get(kind, _exp)(zi))
        return torch.cat(out, 1)


def _exp(z: torch.Tensor) -> torch.Tensor:
    return torch.exp(z.clamp(max=10.0))


def safe_denominator(b: torch.Tensor, eps: float) -> torch.Tensor:
    """``b`` with magnitudes below ``eps`` replaced by ``eps`` (sign kept; 0 counts as positive)."""
    sign = torch.where(b < 0, -1.0, 1.0).to(b)
    return torch.where(b.abs() < eps, sign * eps, b)


class SymbolicNetwork(nn.Module):
    """``f(x) = out_scale * (W_out h_L(...h_1(x / in_scale)) + b_out)``: one right-hand side per state.

    Args:
        n_states: Number of states d (inputs and outputs).
        cfg: Sizes (``n_layers`` and the unit counts) and ``init_std``, ``div_eps``, ``seed``.
    """

    def __init__(self, n_states: int, cfg: SymbolicConfig) -> None:
        super().__init__()
        if n_states < 1:
            raise ValueError(f"n_states must be >= 1, got {n_states}")
        g = torch.Generator().manual_seed(cfg.seed)
        layers, n_in = [], n_states
        for i in range(cfg.n_layers):
            layer = SymbolicLayer(n_in, unit_counts(cfg, i == cfg.n_layers - 1), cfg.init_std, cfg.div_eps, g)
            layers.append(layer)
            n_in = layer.n_out
        self.layers = nn.ModuleList(layers)
        self.output = MaskedLinear(n_in, n_states, cfg.init_std, g)
        self.register_buffer("in_scale", torch.ones(n_states))
        self.register_buffer("out_scale", torch.ones(n_states))
        self.n_states = n_states

    def set_scales(self, x: torch.Tensor, dxdt: torch.Tensor) -> None:
        """Scale inputs and outputs by the root mean square of the states and of their derivatives."""
        self.in_scale.copy_(x.pow(2).mean(0).sqrt().clamp_min(1e-8))
        self.out_scale.copy_(dxdt.pow(2).mean(0).sqrt().clamp_min(1e-8))

    def linears(self) -> list[MaskedLinear]:
        return [layer.linear for layer in self.layers] + [self.output]

    def forward_scaled(self, x: torch.Tensor) -> torch.Tensor:
        """The right-hand side divided by ``out_scale`` (what the derivative loss compares)."""
        h = x / self.in_scale
        for layer in self.layers:
            h = layer(h)
        return self.output(h)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_scaled(x) * self.out_scale
