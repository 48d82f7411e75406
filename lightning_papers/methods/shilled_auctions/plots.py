"""Figures of a bidding run: regret vs t (log-log, band over replicas, fitted slope), bids against b*, and which
branch the race trusts over time."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def loglog_slope(t: Sequence[float], regret: Sequence[float], start_fraction: float = 0.125) -> float:
    """Least-squares slope of log(regret) against log(t) over the points with t >= start_fraction·max(t)."""
    t, r = np.asarray(t, dtype=float), np.asarray(regret, dtype=float)
    keep = (t >= start_fraction * t.max()) & (r > 0) & (t > 0) if t.size else np.zeros(0, bool)
    if keep.sum() < 2:
        return float("nan")
    return float(np.polyfit(np.log(t[keep]), np.log(r[keep]), 1)[0])


def regret_figure(
    t: Sequence[float], mean: Sequence[float], low: Sequence[float], high: Sequence[float], label: str, band: str
) -> Figure:
    """Mean cumulative pseudo-regret with a band over replicas, on log-log axes, with the fitted slope."""
    import matplotlib.pyplot as plt

    t, mean = np.asarray(t, float), np.asarray(mean, float)
    slope = loglog_slope(t, mean)
    fig, ax = plt.subplots(figsize=(5.5, 4))
    ax.plot(t, mean, "-", color="C0", label=f"{label}: mean regret")
    ax.fill_between(t, np.maximum(low, 1e-9), np.maximum(high, 1e-9), color="C0", alpha=0.25, label=band)
    if math.isfinite(slope):
        keep = t >= t.max() / 8
        anchor_t, anchor_r = t[keep][0], mean[keep][0]
        ax.plot(t[keep], anchor_r * (t[keep] / anchor_t) ** slope, "k--", lw=1, label=f"fit: slope {slope:.2f}")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("round t")
    ax.set_ylabel("cumulative pseudo-regret")
    ax.set_title(f"regret at t={int(t[-1]) if t.size else 0}: {mean[-1] if mean.size else float('nan'):.1f}")
    ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    return fig


def bid_figure(edges: np.ndarray, final: np.ndarray, overall: np.ndarray, best_bid: float, label: str) -> Figure:
    """Histograms of the bids of the last block and of all rounds, against the best bid b*."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 4))
    width = np.diff(edges)
    for counts, name, color in ((overall, "all rounds", "C1"), (final, "last block", "C0")):
        total = counts.sum()
        if total > 0:
            ax.bar(edges[:-1], counts / total / width, width=width, align="edge", alpha=0.5, color=color, label=name)
    ax.axvline(best_bid, color="k", ls="--", label=f"b* = {best_bid:.3f}")
    ax.set_xlabel("bid")
    ax.set_ylabel("density of bids (all replicas)")
    mean_last = float((final * (edges[:-1] + width / 2)).sum() / max(final.sum(), 1))
    ax.set_title(f"{label}: mean bid in last block {mean_last:.3f}")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def trust_figure(t: Sequence[float], series: dict[str, Sequence[float]], label: str) -> Figure:
    """Fractions of replicas over time: which branch is still alive, whether the debiased statistics are trusted."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 4))
    styles = ["-", "--", ":", "-."]
    for i, (name, values) in enumerate(series.items()):  # distinct line styles: curves at 1.0 often overlap
        ax.plot(t, values, styles[i % 4], lw=3 - 0.6 * (i % 4), color=f"C{i}", label=name.replace("_", " "))
    ax.set_xscale("log")
    ax.set_ylim(-0.03, 1.03)
    ax.set_xlabel("round t")
    ax.set_ylabel("fraction of replicas")
    last = ", ".join(f"{k.replace('_', ' ')} {v[-1]:.2f}" for k, v in series.items() if len(v))
    ax.set_title(f"{label}: {last}" if last else f"{label}: no branch statistics", fontsize=9)
    if series:
        ax.legend(fontsize=8, loc="lower left")
    fig.tight_layout()
    return fig
