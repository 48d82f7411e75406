"""The baselines of the PAIRS benchmark, in the same code as PAIRS.

* The naive factorised posterior (:func:`naive_factorized_log_posterior`), which needs no training.
* The others are training schedules of the same parts (:mod:`~lightning_papers.methods.pairs.training`):

  - PAIRS: :func:`~lightning_papers.methods.pairs.training.fit_joint` on N ∈ {1, 2}, then
    :func:`~lightning_papers.methods.pairs.training.refit_head` on a bank at the deployment N;
  - encoder trained on N = 1 only + head refit: ``fit_joint`` with set sizes [1], then ``refit_head``;
  - PAIRS without stage 2: the stage-1 head evaluated at N (it only saw log N ∈ {0, log 2});
  - Deep Set trained end to end at the deployment N: ``fit_joint`` with set sizes [N] and no refit.

  In Lightning, the same schedules are configurations of
  :class:`~lightning_papers.methods.pairs.module.PairsNPE` (see ``docs/pairs.md``).
"""

from __future__ import annotations

import torch

from lightning_papers.datamodules.set_simulators import SetSimulator


@torch.no_grad()
def naive_factorized_log_posterior(
    simulator: SetSimulator, grid: torch.Tensor, x: torch.Tensor, chunk_rows: int = 2**14
) -> torch.Tensor:
    """log of p(θ)^{1−N} Π_i p(θ | x_i) on ``grid`` [G, p] for sets ``x`` [S, N, d] -> [S, G] (up to constants).

    This multiplies the exact single-observation posteriors, i.e. it treats every observation as having its
    own nuisance, as composing per-observation estimators does (in the Gaussian model its 90% coverage falls to
    0.08 at N = 1000; ``docs/pairs.md``). It uses ``simulator.naive_log_posterior`` when that has a closed
    form, and otherwise sums ``simulator.log_posterior`` of every single element (``chunk_rows`` at a time),
    which needs ``log_posterior`` and ``log_prior``.
    """
    fast = simulator.naive_log_posterior(grid, x)
    if fast is not None:
        return fast
    if not simulator.has_posterior:
        raise ValueError(f"{type(simulator).__name__} has no analytic posterior, so no naive factorised posterior")
    s, n, d = x.shape
    step = max(1, chunk_rows // s)
    per_set = torch.zeros(s, grid.shape[0], dtype=torch.float64)
    for e in range(0, n, step):
        part = x[:, e : e + step]
        per_set += simulator.log_posterior(grid, part.reshape(-1, 1, d)).reshape(s, part.shape[1], -1).sum(1)
    return per_set - (n - 1) * simulator.log_prior(grid)[None, :]
