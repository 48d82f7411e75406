"""Figures of a fine-tune in the planted-persona world: the four metrics over steps, and persona share per group.

Both take plain Python values (the history :class:`~lightning_papers.methods.grasp.planted.callback.PlantedEvaluation`
keeps), so they can be redrawn from a checkpoint's callback state without a model.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from matplotlib.figure import Figure

# metric key (of `evaluation.evaluate`) -> its label in the legend
METRICS = {
    "task": "task accuracy (topic 0, new rule)",
    "drift": "off-task drift (persona-B share, topics 1+)",
    "marker": "preservation (persona-B share with the marker)",
    "offtask_answer": "off-task answer accuracy",
}


def metrics_over_steps_figure(history: list[dict[str, float]], title: str = "") -> Figure:
    """Task accuracy, off-task drift, preservation and off-task answers against the optimizer step.

    ``history``: one dict per evaluation with ``"step"`` and the keys of
    :func:`~lightning_papers.methods.grasp.planted.evaluation.evaluate`; the first entry (step 0) is the base model.
    """
    import matplotlib.pyplot as plt

    if not history:
        raise ValueError("metrics_over_steps_figure needs at least one evaluation in `history`")
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    steps = [h["step"] for h in history]
    for i, (key, label) in enumerate(METRICS.items()):
        ax.plot(steps, [h[key] for h in history], marker="o", ms=3, color=f"C{i}", label=label)
    last = history[-1]
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("share / accuracy")
    ax.set_ylim(-0.03, 1.03)
    ax.legend(fontsize=7, loc="best")
    ax.set_title(f"{title + ': ' if title else ''}step {last['step']}: drift {last['drift']:.3f}, "
                 f"task {last['task']:.3f}, preservation {last['marker']:.3f}", fontsize=9)
    fig.tight_layout()
    return fig


def persona_share_figure(base: dict[str, float], now: dict[str, float], step: int, title: str = "") -> Figure:
    """Persona-B share per prompt group: the base model next to the fine-tuned one (grouped bars).

    ``base`` / ``now``: :func:`~lightning_papers.methods.grasp.planted.evaluation.persona_shares` of the base model
    and of the model at ``step`` (same keys).
    """
    import matplotlib.pyplot as plt

    if set(base) != set(now):
        raise ValueError(f"base and now must have the same prompt groups, got {sorted(base)} and {sorted(now)}")
    groups = list(now)
    x = range(len(groups))
    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    ax.bar([i - 0.2 for i in x], [base[g] for g in groups], width=0.4, color="C7", label="base model (step 0)")
    ax.bar([i + 0.2 for i in x], [now[g] for g in groups], width=0.4, color="C3", label=f"fine-tuned (step {step})")
    ax.set_xticks(list(x), groups, fontsize=8)
    ax.set_xlabel("prompt group (topic; 'marker' = off-task topics with the role-play marker)")
    ax.set_ylabel("persona-B share at the first style slot")
    ax.set_ylim(0, 1.05)
    ax.legend(fontsize=7, loc="upper left")
    off = [g for g in groups if g.startswith("t") and not g.startswith("t0")]
    drift = sum(now[g] for g in off) / max(len(off), 1)
    marker = now.get("marker", float("nan"))
    ax.set_title(f"{title + ': ' if title else ''}off-task drift {drift:.3f}, marker {marker:.3f}", fontsize=9)
    fig.tight_layout()
    return fig
