"""Importance weights of the bias correction from a probabilistic classifier (no density of the generator needed).

The correction weights are omega(x, a) = p_T(x) q_phi(a | x) / (p_S(x) p_S(a | x)): the density ratio of the
joint law of (X_T, G_phi(X_T, eps)) to that of the source's (X_S, A_S). A classifier c(z) = P(target | z) on
z = (x, a), trained with the two classes balanced, estimates it as c / (1 - c), i.e. its logit is log omega. This
is the route for a generator without a tractable density (``divergence='transport'``) and an alternative to the
product w(x) q_phi/p_S of three separately estimated densities.

Cross-fitted: classifier k is trained on the source rows outside fold k and on generator draws at the target rows
outside target fold k, and a source row of fold k is only ever evaluated by classifier k (:meth:`CrossFitted.oof`).
Because phi moves during the game, :class:`ClassifierOmega` is refitted every ``omega_every`` game steps on fresh
draws of the current generator (the draws' seed is a function of the step, so a resumed fit refits identically).
"""

from __future__ import annotations

import torch
from torch import nn

from lightning_papers.methods.drum.config import DRUMConfig
from lightning_papers.methods.drum.nuisances import CrossFitted, mlp, train


def fit_ratio_classifier(clf: CrossFitted, z_den: torch.Tensor, z_num: torch.Tensor, num_folds: torch.Tensor,
                         cfg: DRUMConfig, g: torch.Generator) -> CrossFitted:
    """Fit ``clf`` in place so that its logit estimates log p_num(z)/p_den(z), cross-fitted.

    ``clf.folds`` are the folds of the rows of ``z_den`` (the rows later evaluated out of fold), ``num_folds`` those
    of ``z_num``; model k is trained on the rows of both samples outside fold k, the classes weighted to balance.
    """
    if len(clf.folds) != len(z_den) or len(num_folds) != len(z_num):
        raise ValueError(f"fold labels for {len(clf.folds)}/{len(num_folds)} rows, got {len(z_den)}/{len(z_num)}")
    n = len(z_den)
    z_all = torch.cat([z_den, z_num])
    d_all = torch.cat([torch.zeros(n), torch.ones(len(z_num))])
    bce = nn.functional.binary_cross_entropy_with_logits
    for k, model in enumerate(clf.models):
        rows = torch.cat([(clf.folds != k).nonzero().squeeze(1), n + (num_folds != k).nonzero().squeeze(1)])
        bal = (d_all[rows] == 0).sum() / (d_all[rows] == 1).sum()
        model.train().requires_grad_(True)
        train(model, lambda i, c=model, b=bal: bce(c(z_all[i]).squeeze(-1), d_all[i],
                                                   weight=torch.where(d_all[i] == 1, b, 1.0)), rows, cfg, g)
    return clf.requires_grad_(False)


class ClassifierOmega(nn.Module):
    """Cross-fitted classifier estimate of omega for the source rows, refitted as the generator moves.

    Built on the source and target fold labels of the fitted nuisances; ``fitted_at`` (a buffer, so it is in the
    checkpoint) is the game step of the last refit, -1 before the first.
    """

    def __init__(self, folds: torch.Tensor, t_folds: torch.Tensor, dim_x: int, dim_a: int, cfg: DRUMConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.clf = CrossFitted([mlp(dim_x + dim_a, 1, cfg.hidden) for _ in range(cfg.n_folds)], folds.clone())
        self.register_buffer("t_folds", t_folds.clone())
        self.register_buffer("fitted_at", torch.tensor(-1))

    def due(self, step: int) -> bool:
        """Whether the classifier must be (re)fitted before game step ``step``."""
        at = int(self.fitted_at)
        return at < 0 or step - at >= self.cfg.omega_every

    def refit(self, gen: nn.Module, nu: nn.Module, x_s: torch.Tensor, a_s: torch.Tensor, x_t: torch.Tensor,
              step: int) -> None:
        """Refit on (X_S, A_S) against (X_T, G_phi(X_T, eps)), one draw per target row, fresh eps from ``step``."""
        if len(self.clf.folds) != len(x_s) or len(self.t_folds) != len(x_t):
            raise ValueError(f"omega classifier built for {len(self.clf.folds)}/{len(self.t_folds)} rows, "
                             f"got {len(x_s)}/{len(x_t)}")
        g = torch.Generator().manual_seed(self.cfg.seed * 7_919 + 17 + step)
        eps = torch.randn(len(x_t), 1, a_s.shape[1], generator=g)
        with torch.no_grad():
            a_t = gen.sample(x_t, eps, nu)[0][:, 0]
        with torch.enable_grad():
            fit_ratio_classifier(self.clf, torch.cat([x_s, a_s], -1), torch.cat([x_t, a_t], -1), self.t_folds,
                                 self.cfg, g)
        self.fitted_at.fill_(step)

    def log_omega(self, x: torch.Tensor, a: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        """log omega at source rows ``idx`` (each evaluated by the classifier of its own fold)."""
        z = torch.cat([x, a], -1)
        return self.clf.oof(idx, lambda m, rows: m(z[rows]).squeeze(-1))
