"""Cross-fitted nuisances of DRUM: outcome model mu(x, a), source conditional p_S(a | x), density ratio w(x).

Cross-fitting (as in double/debiased ML): the source rows are split into K folds; model k is trained on every
fold but k, and a source row of fold k is only ever evaluated by model k (:meth:`CrossFitted.oof`). Target rows
belong to no training fold and are evaluated by the average of the K models. The covariate density ratio
w(x) = p_T(x)/p_S(x) comes from a domain classifier c(x) = P(target | x): w = (n_S/n_T) c/(1 - c).

:class:`ExactNuisances` exposes the simulator's ground truth through the same interface (tests, population
checks); :func:`fit_nuisances` estimates them.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

from lightning_papers.methods.drum.config import DRUMConfig


def mlp(d_in: int, d_out: int, hidden: int, zero_last: bool = False) -> nn.Sequential:
    """Two hidden SiLU layers; ``zero_last`` starts the output at exactly 0."""
    net = nn.Sequential(
        nn.Linear(d_in, hidden), nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU(), nn.Linear(hidden, d_out)
    )
    if zero_last:
        nn.init.zeros_(net[-1].weight)
        nn.init.zeros_(net[-1].bias)
    return net


class GaussianConditional(nn.Module):
    """p(a | x) = N(m(x), diag s(x)^2), both from one MLP."""

    def __init__(self, dim_x: int, dim_a: int, hidden: int) -> None:
        super().__init__()
        self.net = mlp(dim_x, 2 * dim_a, hidden)

    def mean_std(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        m, log_s = self.net(x).chunk(2, -1)
        return m, log_s.clamp(-5.0, 3.0).exp()

    def log_prob(self, a: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        m, s = self.mean_std(x)
        return (-0.5 * ((a - m) / s) ** 2 - s.log() - 0.5 * math.log(2 * math.pi)).sum(-1)

    def sample(self, x: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        m, s = self.mean_std(x)
        return m + s * eps


class FlowConditional(nn.Module):
    """p(a | x) as a zuko neural spline flow conditioned on x (non-Gaussian A)."""

    def __init__(self, dim_x: int, dim_a: int, hidden: int) -> None:
        super().__init__()
        import zuko

        self.flow = zuko.flows.NSF(features=dim_a, context=dim_x, transforms=2, hidden_features=(hidden, hidden))

    def log_prob(self, a: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return self.flow(x).log_prob(a)

    def sample(self, x: torch.Tensor, eps: torch.Tensor | None = None) -> torch.Tensor:
        return self.flow(x).rsample()


def build_conditional(name: str, dim_x: int, dim_a: int, hidden: int) -> nn.Module:
    """``gaussian`` -> :class:`GaussianConditional`, ``flow`` -> :class:`FlowConditional`."""
    if name == "gaussian":
        return GaussianConditional(dim_x, dim_a, hidden)
    if name == "flow":
        return FlowConditional(dim_x, dim_a, hidden)
    raise ValueError(f"unknown conditional {name!r}; expected 'gaussian' or 'flow'")


def fold_ids(n: int, k: int, g: torch.Generator) -> torch.Tensor:
    """Balanced random fold labels 0..k-1 for ``n`` rows."""
    if n < k:
        raise ValueError(f"cannot cross-fit {n} rows into {k} folds")
    return (torch.randperm(n, generator=g) % k).long()


def train(model: nn.Module, loss_fn: Callable[[torch.Tensor], torch.Tensor], rows: torch.Tensor, cfg: DRUMConfig,
          g: torch.Generator) -> nn.Module:
    """Adam on minibatches of ``rows`` (indices): ``loss_fn(batch_indices)`` returns the loss."""
    opt = torch.optim.Adam(model.parameters(), lr=cfg.nuisance_lr)
    for _ in range(cfg.nuisance_steps):
        idx = rows[torch.randint(len(rows), (min(cfg.batch_size, len(rows)),), generator=g)]
        opt.zero_grad()
        loss_fn(idx).backward()
        opt.step()
    return model.eval().requires_grad_(False)


class CrossFitted(nn.Module):
    """K models and the fold label of every source row; model k was trained on the rows whose fold is not k."""

    def __init__(self, models: list[nn.Module], folds: torch.Tensor) -> None:
        super().__init__()
        self.models = nn.ModuleList(models)
        self.register_buffer("folds", folds)

    def oof(self, idx: torch.Tensor, fn: Callable[[nn.Module, torch.Tensor], torch.Tensor]) -> torch.Tensor:
        """``fn(model_k, rows)`` for source rows ``idx``, each row evaluated only by the model of its own fold."""
        fold = self.folds[idx]
        out: torch.Tensor | None = None
        for k, model in enumerate(self.models):
            rows = (fold == k).nonzero().squeeze(1)
            if len(rows) == 0:
                continue
            val = fn(model, rows)
            if out is None:
                out = val.new_zeros((len(idx), *val.shape[1:]))
            out[rows] = val
        assert out is not None
        return out

    def average(self, fn: Callable[[nn.Module], torch.Tensor]) -> torch.Tensor:
        """Mean of ``fn(model_k)`` over the K models (for rows outside the source)."""
        return torch.stack([fn(m) for m in self.models]).mean(0)


class Nuisances(nn.Module):
    """Estimated nuisances. ``idx`` (source row indices) selects out-of-fold evaluation; ``None`` means target rows.

    ``mu`` returns E[Y | x, a] (a probability for ``loss='log'``); ``base`` the Gaussian (mean, sd) of p_S(a|x);
    ``log_p`` log p_S(a | x) (the flow's when ``conditional='flow'``); ``ratio`` w(x) = p_T(x)/p_S(x).
    """

    def __init__(self, mu: CrossFitted, gauss: CrossFitted, flow: CrossFitted | None, clf: CrossFitted,
                 sigma2: float, loss: str) -> None:
        super().__init__()
        self.mu_models, self.gauss, self.flow, self.clf = mu, gauss, flow, clf
        self.loss = loss
        self.register_buffer("sigma2", torch.tensor(float(sigma2)))  # Var(Y | x, a), homoscedastic estimate
        self.register_buffer("t_folds", torch.zeros(0, dtype=torch.long))  # target rows' folds (classifier)

    def _eval(self, cf: CrossFitted, idx: torch.Tensor | None, fn: Callable[..., torch.Tensor],
              *args: torch.Tensor) -> torch.Tensor:
        if idx is None:
            return cf.average(lambda m: fn(m, *args))
        return cf.oof(idx, lambda m, rows: fn(m, *(t[rows] for t in args)))

    def mu(self, x: torch.Tensor, a: torch.Tensor, idx: torch.Tensor | None = None) -> torch.Tensor:
        out = self._eval(self.mu_models, idx, lambda m, x, a: m(torch.cat([x, a], -1)).squeeze(-1), x, a)
        return torch.sigmoid(out) if self.loss == "log" else out

    def base(self, x: torch.Tensor, idx: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        ms = self._eval(self.gauss, idx, lambda m, x: torch.stack(m.mean_std(x)), x)
        return ms[0], ms[1]

    def log_p(self, a: torch.Tensor, x: torch.Tensor, idx: torch.Tensor | None = None) -> torch.Tensor:
        cf = self.flow if self.flow is not None else self.gauss
        return self._eval(cf, idx, lambda m, a, x: m.log_prob(a, x), a, x)

    def ratio(self, x: torch.Tensor, idx: torch.Tensor | None = None) -> torch.Tensor:
        logit = self._eval(self.clf, idx, lambda m, x: m(x).squeeze(-1), x)
        return torch.exp(logit)  # the classifier is class-balanced, so its logit estimates log p_T/p_S

    def sample_base(self, x: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """A draw a0 ~ p_S(. | x) for target rows (flow draws use torch's global RNG)."""
        if self.flow is not None:
            return self.flow.models[0].sample(x)
        m, s = self.base(x)
        return m + s * eps


class ExactNuisances(nn.Module):
    """Ground-truth nuisances (same interface as :class:`Nuisances`) from the simulator's closed forms."""

    def __init__(self, mu: Callable, base: Callable, ratio: Callable, sigma2: float, loss: str = "squared") -> None:
        super().__init__()
        self._mu, self._base, self._ratio, self.sigma2, self.loss = mu, base, ratio, sigma2, loss
        self.flow = None

    def mu(self, x: torch.Tensor, a: torch.Tensor, idx: torch.Tensor | None = None) -> torch.Tensor:
        return self._mu(x, a)

    def base(self, x: torch.Tensor, idx: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        return self._base(x)

    def log_p(self, a: torch.Tensor, x: torch.Tensor, idx: torch.Tensor | None = None) -> torch.Tensor:
        m, s = self._base(x)
        return (-0.5 * ((a - m) / s) ** 2 - s.log() - 0.5 * math.log(2 * math.pi)).sum(-1)

    def ratio(self, x: torch.Tensor, idx: torch.Tensor | None = None) -> torch.Tensor:
        return self._ratio(x)

    def sample_base(self, x: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        m, s = self._base(x)
        return m + s * eps


def init_nuisances(dim_x: int, dim_a: int, n_source: int, n_target: int, cfg: DRUMConfig) -> Nuisances:
    """Untrained K-fold nuisances with their fold labels drawn from ``cfg.seed`` (fit with :func:`fit_nuisances`)."""
    g = torch.Generator().manual_seed(cfg.seed)
    torch.manual_seed(cfg.seed)  # initialisations
    folds, t_folds = fold_ids(n_source, cfg.n_folds, g), fold_ids(n_target, cfg.n_folds, g)
    h, k = cfg.hidden, cfg.n_folds
    mu = CrossFitted([mlp(dim_x + dim_a, 1, h) for _ in range(k)], folds)
    gauss = CrossFitted([GaussianConditional(dim_x, dim_a, h) for _ in range(k)], folds)
    flow = None
    if cfg.conditional == "flow":
        flow = CrossFitted([FlowConditional(dim_x, dim_a, h) for _ in range(k)], folds)
    clf = CrossFitted([mlp(dim_x, 1, h) for _ in range(k)], folds)
    nu = Nuisances(mu, gauss, flow, clf, 0.0, cfg.loss)
    nu.t_folds = t_folds
    return nu


def fit_nuisances(nu: Nuisances, x_s: torch.Tensor, a_s: torch.Tensor, y_s: torch.Tensor, x_t: torch.Tensor,
                  cfg: DRUMConfig) -> Nuisances:
    """Fit ``nu`` (from :func:`init_nuisances`) in place: model k of each nuisance on the rows outside fold k."""
    g = torch.Generator().manual_seed(cfg.seed + 1)
    n, m = len(x_s), len(x_t)
    if len(nu.mu_models.folds) != n or len(nu.t_folds) != m:
        raise ValueError(f"nuisances were built for {len(nu.mu_models.folds)}/{len(nu.t_folds)} rows, got {n}/{m}")
    xa = torch.cat([x_s, a_s], -1)
    x_all, d_all = torch.cat([x_s, x_t]), torch.cat([torch.zeros(n), torch.ones(m)])
    bce = nn.functional.binary_cross_entropy_with_logits
    for k in range(cfg.n_folds):
        rows = (nu.mu_models.folds != k).nonzero().squeeze(1)
        mu_k = nu.mu_models.models[k].train().requires_grad_(True)
        if cfg.loss == "log":
            train(mu_k, lambda i, f=mu_k: bce(f(xa[i]).squeeze(-1), y_s[i]), rows, cfg, g)
        else:
            train(mu_k, lambda i, f=mu_k: ((f(xa[i]).squeeze(-1) - y_s[i]) ** 2).mean(), rows, cfg, g)
        conds = [nu.gauss.models[k]] + ([nu.flow.models[k]] if nu.flow is not None else [])
        for c in conds:
            c.train().requires_grad_(True)
            train(c, lambda i, c=c: -c.log_prob(a_s[i], x_s[i]).mean(), rows, cfg, g)
        clf_rows = torch.cat([rows, n + (nu.t_folds != k).nonzero().squeeze(1)])
        clf = nu.clf.models[k].train().requires_grad_(True)
        bal = (d_all[clf_rows] == 0).sum() / (d_all[clf_rows] == 1).sum()  # balance the two classes
        train(clf, lambda i, c=clf, b=bal: bce(c(x_all[i]).squeeze(-1), d_all[i],
                                               weight=torch.where(d_all[i] == 1, b, 1.0)), clf_rows, cfg, g)
    if cfg.loss == "squared":
        with torch.no_grad():
            nu.sigma2.fill_(float(((y_s - nu.mu(x_s, a_s, torch.arange(n))) ** 2).mean()))
    return nu.requires_grad_(False)
