"""QDSB figures: generated samples over the target, with source points and a few bridge trajectories."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def samples_figure(
    source: torch.Tensor,
    target: torch.Tensor,
    generated: torch.Tensor,
    path: torch.Tensor,
    title: str,
    dims: tuple[int, int] = (0, 1),
) -> Figure:
    """Scatter of two coordinates: the target as large light markers underneath, source and generated points on top.

    Args:
        source: ``(n, d)`` held-out source points.
        target: ``(m, d)`` held-out target points (large light markers under everything, so they stay visible).
        generated: ``(n, d)`` end points of the sampler.
        path: ``(steps + 1, p, d)`` trajectories of ``p`` of the source points (drawn as thin lines).
        title: First title line (e.g. the coupling, the epoch and the metric values).
        dims: The two coordinates shown (0-based); the axis labels and the title say which of the d they are.
    """
    import matplotlib.pyplot as plt

    d = target.shape[1]
    i, j = dims
    if not (0 <= i < d and 0 <= j < d and i != j):
        raise ValueError(f"dims must be two different coordinates in [0, {d}), got {dims}")
    pts = torch.cat([source, target, generated])[:, [i, j]].float()
    lo, hi = torch.quantile(pts, 0.002, dim=0), torch.quantile(pts, 0.998, dim=0)
    pad = 0.05 * (hi - lo)
    lo, hi = (lo - pad).tolist(), (hi + pad).tolist()
    fig, ax = plt.subplots(figsize=(5.2, 5))
    ax.scatter(target[:, i], target[:, j], s=30, c="tab:blue", alpha=0.18, lw=0, label="target (held out)", zorder=0)
    ax.scatter(source[:, i], source[:, j], s=2, c="0.55", alpha=0.5, label="source", zorder=1)
    for k in range(path.shape[1]):
        label = "trajectories" if k == 0 else None
        ax.plot(path[:, k, i], path[:, k, j], lw=0.4, c="k", alpha=0.3, zorder=2, label=label)
    ax.scatter(generated[:, i], generated[:, j], s=2, c="tab:red", alpha=0.6, label="generated", zorder=3)
    ax.set_xlim(lo[0], hi[0])
    ax.set_ylim(lo[1], hi[1])
    ax.set_xlabel(f"coordinate {i + 1} of {d}")
    ax.set_ylabel(f"coordinate {j + 1} of {d}")
    shown = "both coordinates" if d == 2 else f"coordinates {i + 1} and {j + 1} of d = {d}"
    ax.set_title(f"{title}\n{shown}", fontsize=8)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.11), ncol=4, markerscale=2, fontsize=7, frameon=False)
    if d == 2:
        ax.set_aspect("equal")
    return fig
