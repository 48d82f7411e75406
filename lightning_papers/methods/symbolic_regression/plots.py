"""Figures: trajectories simulated from the discovered equations against the data (with residuals), and the
training history (fit loss and active weights through the three phases)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from lightning_papers.methods.symbolic_regression.config import SymbolicConfig


def trajectory_figure(sims: Sequence[tuple[Any, np.ndarray | None]], names: Sequence[str], equations: Sequence[str]):  # noqa: ANN201
    """One column per state: data (dots) and the discovered ODE simulated from the first sample (line) for each
    trajectory in ``sims`` (pairs of a ``Trajectory`` and its simulation or None), residuals below."""
    import matplotlib.pyplot as plt

    d = len(names)
    fig, axes = plt.subplots(2, d, figsize=(4.2 * d, 5.2), squeeze=False, height_ratios=[3, 1.3], sharex="col")
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for k, (tr, sim) in enumerate(sims):
        c = colors[k % len(colors)]
        step = max(1, len(tr.t) // 300)
        for j in range(d):
            axes[0, j].plot(
                tr.t[::step], tr.x[::step, j], ".", ms=2.5, c=c, alpha=0.6, label=f"data {k}" if j == 0 else None
            )
            if sim is not None:
                axes[0, j].plot(tr.t, sim[:, j], "-", lw=1.2, c=c, label=f"discovered ODE {k}" if j == 0 else None)
                axes[1, j].plot(tr.t[::step], (tr.x - sim)[::step, j], ".", ms=2, c=c)
    for j, n in enumerate(names):
        axes[0, j].set_ylabel(n)
        axes[1, j].set_ylabel(f"{n}: data - ODE")
        axes[1, j].set_xlabel("t")
        axes[1, j].axhline(0, c="k", lw=0.5)
    if sims:
        axes[0, 0].legend(fontsize=7, loc="best")
    fig.suptitle("\n".join(equations), fontsize=8)
    fig.tight_layout()
    return fig


def history_figure(history: dict[str, list[float]], cfg: SymbolicConfig):  # noqa: ANN201
    """Fit loss (log scale) and active weights against the step, the L1/2 phase shaded and the mask step marked."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.4))
    steps = np.asarray(history["step"])
    ax.semilogy(steps, np.maximum(history["fit"], 1e-16), c="tab:blue", label="fit loss (scaled MSE)")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("fit loss")
    start, stop = round(cfg.warmup_fraction * cfg.steps), cfg.mask_step
    ax.axvspan(start, stop, color="0.9", label="L1/2 phase")
    ax.axvline(stop, c="k", ls=":", lw=1, label="mask")
    ax2 = ax.twinx()
    ax2.plot(steps, history["active"], c="tab:red", label="active weights")
    ax2.set_ylabel("active weights")
    h1, l1 = ax.get_legend_handles_labels()
    h2, l2 = ax2.get_legend_handles_labels()
    ax.legend(h1 + h2, l1 + l2, fontsize=7, loc="upper right")
    last = history["active"][-1] if history["active"] else float("nan")
    ax.set_title(f"training: {last:.0f} active weights at the last record", fontsize=9)
    fig.tight_layout()
    return fig
