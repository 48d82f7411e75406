"""Figures for PAIRS: learned vs exact posteriors per N, and coverage / KL against N for several methods."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import torch

from lightning_papers.metrics.posterior import normalize_on_grid

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def posterior_figure(
    grid: torch.Tensor,
    set_sizes: Sequence[int],
    cache: Mapping[int, tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]],
    theta_name: str = "θ",
) -> Figure:
    """One panel per N: for up to 3 evaluation sets (one colour each), the learned density (solid), the exact one
    (dashed, when known) and the true θ (dotted vertical line); a legend names every colour and line style.

    ``cache[i] = (log_q [s, G], theta [s, 1], log_p [s, G] or None)`` for the i-th entry of ``set_sizes``.
    """
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    g = grid[:, 0].double()
    h = float(g[1] - g[0])
    idx = sorted(cache)
    fig, axes = plt.subplots(1, len(idx), figsize=(3.2 * len(idx), 3.0), squeeze=False)
    any_exact = False
    for ax, i in zip(axes[0], idx):
        log_q, theta, log_p = cache[i]
        lo, hi = float("inf"), -float("inf")
        for s in range(log_q.shape[0]):
            color = f"C{s}"
            w = normalize_on_grid(log_q[s : s + 1])[0].exp()
            ax.plot(g, w / h, lw=1.2, color=color)
            if log_p is not None:
                any_exact = True
                ax.plot(g, normalize_on_grid(log_p[s : s + 1])[0].exp() / h, "--", color=color, lw=1)
            ax.axvline(float(theta[s, 0]), color=color, lw=0.8, ls=":")
            mean = float((g * w).sum())
            sd = float(((g - mean) ** 2 * w).sum().sqrt())
            lo, hi = min(lo, mean - 5 * sd, float(theta[s, 0])), max(hi, mean + 5 * sd, float(theta[s, 0]))
        ax.set_xlim(max(lo, float(g[0])), min(hi, float(g[-1])))
        ax.set_title(f"N = {set_sizes[i]}")
        ax.set_xlabel(theta_name)
    axes[0][0].set_ylabel("posterior density")
    num_sets = max(cache[i][0].shape[0] for i in idx)
    handles = [Line2D([], [], color=f"C{s}", lw=2, label=f"set {s + 1}") for s in range(num_sets)]
    handles.append(Line2D([], [], color="k", lw=1.2, label="learned q (PAIRS)"))
    if any_exact:
        handles.append(Line2D([], [], color="k", lw=1, ls="--", label="exact posterior"))
    handles.append(Line2D([], [], color="k", lw=0.8, ls=":", label="true θ"))
    fig.legend(handles=handles, loc="upper center", ncol=len(handles), fontsize=8, bbox_to_anchor=(0.5, 1.0))
    fig.tight_layout(rect=(0, 0, 1, 0.9))
    return fig


def coverage_kl_figure(results: Mapping[str, Mapping[int, Mapping[str, float]]]) -> Figure:
    """90% coverage and KL(exact ‖ q) against N (log axes), one line per method: ``results[method][N][metric]``.

    KL values are floored at 1e-4 for the log axis; a method whose KL is zero everywhere (the exact posterior
    itself) gets no KL line. Both panels have a legend; a method keeps its colour in both.
    """
    import matplotlib.pyplot as plt

    has_kl = any("kl" in r for res in results.values() for r in res.values())
    fig, axes = plt.subplots(1, 2 if has_kl else 1, figsize=(10 if has_kl else 5, 3.6), squeeze=False)
    kl_lines = 0
    for i, (name, res) in enumerate(results.items()):
        ns = sorted(res)
        color = f"C{i % 10}"
        axes[0][0].plot(ns, [res[n]["coverage90"] for n in ns], "o-", label=name, color=color)
        if has_kl and all("kl" in res[n] for n in ns) and max(res[n]["kl"] for n in ns) > 1e-12:  # not the exact one
            axes[0][1].plot(ns, [max(res[n]["kl"], 1e-4) for n in ns], "o-", label=name, color=color)
            kl_lines += 1
    ax = axes[0][0]
    ax.axhspan(0.85, 0.95, color="green", alpha=0.1, label="target band [0.85, 0.95]")
    ax.axhline(0.9, color="k", lw=0.6, ls=":", label="nominal 0.9")
    ax.set(xscale="log", xlabel="set size N", ylabel="90% interval coverage", ylim=(0, 1.02),
           title="90% coverage vs N")  # fmt: skip
    ax.legend(fontsize=7)
    if has_kl:
        ax = axes[0][1]
        ax.set(xscale="log", yscale="log", xlabel="set size N", ylabel="KL(exact ‖ q) on grid", title="KL vs N")
        if kl_lines:
            ax.legend(fontsize=7)
    fig.tight_layout()
    return fig
