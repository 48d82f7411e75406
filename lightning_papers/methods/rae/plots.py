"""Figures of the RAE method: reconstruction grids (stage 1) and per-class sample grids (stage 2)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def _show(ax, image: torch.Tensor) -> None:
    ax.imshow(image.detach().float().clamp(0, 1).permute(1, 2, 0).cpu().numpy(), interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])


def reconstruction_figure(images: torch.Tensor, recons: torch.Tensor, title: str = "") -> Figure:
    """Inputs (top row) over their reconstructions (bottom row), each pair with its PSNR in dB."""
    import matplotlib.pyplot as plt

    if images.shape != recons.shape or images.ndim != 4:
        raise ValueError(f"need two [n, 3, H, W] batches of one shape, got {tuple(images.shape)} and "
                         f"{tuple(recons.shape)}")  # fmt: skip
    n = images.shape[0]
    fig, axes = plt.subplots(2, n, figsize=(1.3 * n, 3.0), squeeze=False)
    for i in range(n):
        mse = (images[i].float() - recons[i].float().clamp(0, 1)).pow(2).mean().clamp_min(1e-10)
        _show(axes[0, i], images[i])
        _show(axes[1, i], recons[i])
        axes[1, i].set_xlabel(f"{-10 * torch.log10(mse).item():.1f} dB", fontsize=8)
    axes[0, 0].set_ylabel("input")
    axes[1, 0].set_ylabel("reconstruction")
    fig.suptitle(title or "reconstructions")
    fig.tight_layout()
    return fig


def class_grid_figure(images: torch.Tensor, labels: torch.Tensor, class_names: Sequence[str] | None = None,
                      per_class: int = 8, title: str = "") -> Figure:  # fmt: skip
    """One row per class of generated images (the first ``per_class`` of each label)."""
    import matplotlib.pyplot as plt

    classes = sorted(int(c) for c in labels.unique())
    fig, axes = plt.subplots(len(classes), per_class, figsize=(1.1 * per_class, 1.1 * len(classes) + 0.6),
                             squeeze=False)  # fmt: skip
    for row, c in enumerate(classes):
        picks = images[labels == c][:per_class]
        for col in range(per_class):
            ax = axes[row, col]
            if col < len(picks):
                _show(ax, picks[col])
            else:
                ax.axis("off")
        name = class_names[c] if class_names is not None and c < len(class_names) else str(c)
        axes[row, 0].set_ylabel(name, rotation=0, ha="right", va="center", fontsize=8)
    fig.suptitle(title or "samples per class")
    fig.tight_layout()
    return fig
