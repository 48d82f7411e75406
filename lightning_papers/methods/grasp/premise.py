"""What the naive adapter's writer spectrum says to expect from GRASP (docs/grasp.md, "Premise study").

GRASP (arXiv 2605.27676) assumes the spurious factor is the dominant, separated direction of the naive LoRA update.
Our premise study measured how much drift a fixed identified subspace removes against the statistics ``identify``
reports. The spectral gap σ1/σ2 of the stacked writer updates separated the outcomes; the causal identification
scores did not (on SmolLM2-135M the identified subspace holds ~90 % of the naive-minus-control update's top
direction and steering along it produces the persona, yet projecting it out removes almost nothing: the fine-tune
re-routes the factor through other directions, and so does it for the supervised naive-minus-control subspace).

The two thresholds below are the edges of what was measured, not a fitted model:

* ``CLEAR_GAP``: the planted LM's ``premise`` design (``benchmarks/grasp.py``, 8 seeds) had σ1/σ2 2.39-3.29, and a
  fixed rank-1 subspace removed 55-75 % of the drift in every seed;
* ``WEAK_GAP``: SmolLM2-135M-Instruct (``benchmarks/grasp_real_lm.py``: pirate and rude personas, two LoRA bands
  and ranks, with and without the readers adapted) had σ1/σ2 1.43-1.74, the planted ``task`` design 1.07-1.45
  (8 seeds); there fixed subspaces of rank 1-32 removed -13 to 16 % of the drift on SmolLM2 and -35 to 38 % (mean
  2 %) in the planted design, and iterative GRASP (``IterativeGradientProjection``) 24-37 % on SmolLM2.
"""

from __future__ import annotations

import math

CLEAR_GAP = 2.3
WEAK_GAP = 1.8


def expectation(gap: float) -> str:
    """One paragraph for ``identify``'s report: what removing the identified subspace should do at this σ1/σ2."""
    if isinstance(gap, bool) or not isinstance(gap, (int, float)) or math.isnan(gap) or gap < 1:
        raise ValueError(f"gap must be sigma1/sigma2 >= 1 (or inf), got {gap!r}")
    head = f"what to expect at sigma1/sigma2 = {gap:.3g} (docs/grasp.md, 'Premise study'): "
    if gap >= CLEAR_GAP:
        return head + (
            f"a clear gap (>= {CLEAR_GAP}): in the planted LM, gaps of 2.39-3.29 let a fixed rank-1 subspace remove "
            "55-75 % of the drift; project this subspace (GradientProjection)."
        )
    if gap <= WEAK_GAP:
        return head + (
            f"a weak gap (<= {WEAK_GAP}): at gaps of 1.07-1.74 (planted `task` design, SmolLM2-135M) fixed subspaces "
            "removed at most 38 % of the drift (2 % on average in the planted design, -13 to 16 % on SmolLM2), "
            "whatever their causal scores: the fine-tune re-routes the factor. Expect little from a fixed subspace; "
            "IterativeGradientProjection removed 24-37 % on SmolLM2-135M. Measure held-out drift before relying on "
            "either."
        )
    return head + (
        f"between the measured regimes ({WEAK_GAP}-{CLEAR_GAP}): no prediction; compare the held-out drift of "
        "GradientProjection and IterativeGradientProjection runs (benchmarks/grasp_real_lm.py)."
    )
