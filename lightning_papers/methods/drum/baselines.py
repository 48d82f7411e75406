"""Baselines on the same data and nuisances as DRUM; each returns a module x -> prediction (a logit for log-loss).

* ``erm``: f fitted on the source (X, Y), ignoring A.
* ``impute``: plug the source's conditional mean E[A | x] into the outcome model, mu_hat(x, E_hat[A | x]).
* ``mi``: multiple imputation, E_{p_S}[mu_hat(x, A)] (DRUM at rho = 0, without training a predictor).
* ``cvar``: DRO on X only, CVaR_alpha of the source loss (Rockafellar-Uryasev: min_{f, eta} eta +
  E[(l - eta)_+] / alpha), what a user without A-aware tools would pick.
* ``chi2``: DRO on X only over a chi^2 ball around the source, sup_{Q: chi2(Q||P_S) <= rho} E_Q l with
  chi2(Q||P) = (1/2) E_P (dQ/dP - 1)^2, through its dual (Duchi & Namkoong 2021, Cressie-Read k = 2):
  min_{f, eta} sqrt(1 + 2 rho) sqrt(E[(l - eta)_+^2]) + eta (:func:`chi2_dual`), f and eta minimised jointly.
* ``oracle``: f fitted on labelled target rows (not available in practice; a floor).

DRUM without the bias correction is ``DRUMConfig(bias_correction=False)`` in ``game.py``.
"""

from __future__ import annotations

import torch
from torch import nn

from lightning_papers.methods.drum.config import DRUMConfig
from lightning_papers.methods.drum.game import pointwise_loss
from lightning_papers.methods.drum.nuisances import mlp


class Fitted(nn.Module):
    """An MLP predictor ``x -> f(x)``."""

    def __init__(self, dim_x: int, hidden: int) -> None:
        super().__init__()
        self.net = mlp(dim_x, 1, hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).squeeze(-1)


def chi2_dual(ell: torch.Tensor, eta: torch.Tensor, rho: float) -> torch.Tensor:
    """sqrt(1 + 2 rho) sqrt(mean (ell - eta)_+^2) + eta; its infimum over eta is sup_{chi2(Q||P) <= rho} E_Q ell.

    P is the empirical law of ``ell`` and chi2(Q||P) = (1/2) E_P (dQ/dP - 1)^2 (Duchi & Namkoong 2021, Prop. 1).
    """
    if not rho >= 0:
        raise ValueError(f"chi2 radius rho must be >= 0, got {rho}")
    return (1 + 2 * rho) ** 0.5 * (torch.relu(ell - eta) ** 2).mean().clamp_min(1e-12).sqrt() + eta


def fit_predictor(x: torch.Tensor, y: torch.Tensor, cfg: DRUMConfig, steps: int, cvar_alpha: float | None = None,
                  weight: torch.Tensor | None = None, chi2_rho: float | None = None) -> Fitted:
    """Adam on minibatches of (x, y) with the config's loss; CVaR_alpha of the loss when ``cvar_alpha`` is set,
    the chi^2-DRO dual (:func:`chi2_dual`, f and eta jointly) when ``chi2_rho`` is set."""
    if cvar_alpha is not None and not 0 < cvar_alpha <= 1:
        raise ValueError(f"cvar_alpha must be in (0, 1], got {cvar_alpha}")
    if cvar_alpha is not None and chi2_rho is not None:
        raise ValueError("set at most one of cvar_alpha and chi2_rho")
    if chi2_rho is not None and not chi2_rho >= 0:
        raise ValueError(f"chi2_rho must be >= 0, got {chi2_rho}")
    torch.manual_seed(cfg.seed)
    g = torch.Generator().manual_seed(cfg.seed + 7)
    f = Fitted(x.shape[1], cfg.hidden)
    eta = nn.Parameter(torch.tensor(float(y.var() if cfg.loss == "squared" else 0.7)))
    opt = torch.optim.Adam([*f.parameters(), eta], lr=cfg.lr_f * 3)
    for _ in range(steps):
        i = torch.randint(len(x), (min(cfg.batch_size, len(x)),), generator=g)
        ell = pointwise_loss(f(x[i]), y[i], cfg.loss)
        if weight is not None:
            ell = ell * weight[i]
        if cvar_alpha is not None:
            loss = eta + torch.relu(ell - eta).mean() / cvar_alpha
        elif chi2_rho is not None:
            loss = chi2_dual(ell, eta, chi2_rho)
        else:
            loss = ell.mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return f.eval().requires_grad_(False)


def _logit(p: torch.Tensor) -> torch.Tensor:
    p = p.clamp(1e-6, 1 - 1e-6)
    return torch.log(p) - torch.log1p(-p)


class Impute(nn.Module):
    """mu_hat(x, E_hat[A | x])."""

    def __init__(self, nu: nn.Module) -> None:
        super().__init__()
        self.nu = nu

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mu = self.nu.mu(x, self.nu.base(x)[0])
        return _logit(mu) if self.nu.loss == "log" else mu


class MultipleImputation(nn.Module):
    """E_{A ~ p_S(. | x)} mu_hat(x, A) by ``n_draws`` fixed Gaussian draws (a logit of the mean for log-loss)."""

    def __init__(self, nu: nn.Module, n_draws: int = 64, seed: int = 0) -> None:
        super().__init__()
        self.nu, self.n_draws, self.seed = nu, n_draws, seed

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        g = torch.Generator().manual_seed(self.seed)
        m, s = self.nu.base(x)
        eps = torch.randn(self.n_draws, *m.shape, generator=g)
        a = (m + s * eps).reshape(-1, m.shape[-1])
        mu = self.nu.mu(x.repeat(self.n_draws, 1), a).view(self.n_draws, -1).mean(0)
        return _logit(mu) if self.nu.loss == "log" else mu


def build_baseline(name: str, nu: nn.Module, x_s: torch.Tensor, y_s: torch.Tensor, cfg: DRUMConfig,
                   steps: int = 1000, x_oracle: torch.Tensor | None = None, y_oracle: torch.Tensor | None = None,
                   cvar_alpha: float = 0.2, chi2_rho: float = 1.0) -> nn.Module:
    """``erm``, ``impute``, ``mi``, ``cvar``, ``chi2`` or ``oracle`` (needs ``x_oracle``/``y_oracle``), see the
    module doc."""
    if name == "erm":
        return fit_predictor(x_s, y_s, cfg, steps)
    if name == "cvar":
        return fit_predictor(x_s, y_s, cfg, steps, cvar_alpha=cvar_alpha)
    if name == "chi2":
        return fit_predictor(x_s, y_s, cfg, steps, chi2_rho=chi2_rho)
    if name == "impute":
        return Impute(nu)
    if name == "mi":
        return MultipleImputation(nu, seed=cfg.seed)
    if name == "oracle":
        if x_oracle is None or y_oracle is None:
            raise ValueError("the oracle baseline needs labelled target rows (x_oracle, y_oracle)")
        return fit_predictor(x_oracle, y_oracle, cfg, steps)
    raise ValueError(f"unknown baseline {name!r}; expected erm, impute, mi, cvar, chi2 or oracle")
