"""DRUM figures: training curves (worst-case risk, lambda, D vs rho), the generator's A | X against the source's,
the robustness curve over rho, and a calibration plot on a labelled target split."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from matplotlib.figure import Figure


def training_curves(history: Sequence[tuple[int, float, float, float]], rho: float) -> Figure:
    """Rows (step, risk, lambda, D): the game's risk, the multiplier and the divergence against its budget rho."""
    import matplotlib.pyplot as plt

    steps, risk, lam, div = (list(c) for c in zip(*history)) if history else ([], [], [], [])
    fig, axes = plt.subplots(1, 3, figsize=(11, 3))
    axes[0].plot(steps, risk, c="tab:red", label="worst-case risk L (batch)")
    axes[1].plot(steps, lam, c="tab:blue", label="lambda")
    axes[2].plot(steps, div, c="tab:green", label="D (batch)")
    axes[2].axhline(rho, c="k", ls="--", lw=0.8, label=f"rho = {rho:g}")
    for ax, name in zip(axes, ("risk", "lambda", "divergence")):
        ax.set_xlabel("game step")
        ax.set_ylabel(name)
        ax.legend(fontsize=7)
    last = f"L = {risk[-1]:.3g}, D = {div[-1]:.3g}" if steps else "no steps yet"
    fig.suptitle(f"DRUM game, rho = {rho:g}: {last}", fontsize=9)
    fig.tight_layout()
    return fig


def generator_vs_source(x1: torch.Tensor, a_source: torch.Tensor, x1_target: torch.Tensor, a_gen: torch.Tensor,
                        kl: float) -> Figure:
    """Scatter of the first A coordinate against the first X coordinate: source draws vs the generator's."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 4))
    ax.scatter(x1, a_source, s=3, c="0.6", alpha=0.5, label="source (X, A)")
    ax.scatter(x1_target, a_gen, s=3, c="tab:red", alpha=0.5, label="generator G(X_T, eps)")
    ax.set_xlabel("x_1 (standardised)")
    ax.set_ylabel("a_1 (standardised)")
    ax.set_title(f"worst-case A | X vs the source's, mean KL = {kl:.3g}", fontsize=9)
    ax.legend(fontsize=7, markerscale=3)
    return fig


def robustness_curve(rhos: Sequence[float], curves: dict[str, Sequence[float]], rho_fit: float) -> Figure:
    """Worst-case risk over the KL ball of radius rho (exponential-tilt dual) for each predictor."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 4))
    for name, values in curves.items():
        ax.plot(rhos, values, marker="o", ms=3, label=name)
    ax.axvline(rho_fit, c="k", ls="--", lw=0.8, label=f"trained rho = {rho_fit:g}")
    ax.set_xlabel("rho (KL radius, average over target x)")
    ax.set_ylabel("worst-case risk (KL dual)")
    ax.set_title("robustness curve of the fitted predictors", fontsize=9)
    ax.legend(fontsize=7)
    return fig


def calibration(p: torch.Tensor, y: torch.Tensor, brier: float, n_bins: int = 10) -> Figure:
    """Reliability diagram (equal-count bins) of predicted probabilities on a labelled target split."""
    import matplotlib.pyplot as plt

    order = torch.argsort(p)
    bins = torch.tensor_split(order, n_bins)
    px = [float(p[b].mean()) for b in bins if len(b)]
    py = [float(y[b].float().mean()) for b in bins if len(b)]
    fig, ax = plt.subplots(figsize=(4, 4))
    ax.plot([0, 1], [0, 1], c="k", ls="--", lw=0.8, label="perfect calibration")
    ax.plot(px, py, marker="o", c="tab:blue", label="DRUM (equal-count bins)")
    ax.set_xlabel("predicted probability")
    ax.set_ylabel("observed frequency")
    ax.set_title(f"target calibration, Brier = {brier:.3f}", fontsize=9)
    ax.legend(fontsize=7)
    return fig
