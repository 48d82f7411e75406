"""The DRUM game: a generator adversary over the target A | X, the predictor f(X), dual ascent and bias correction.

Data: source (X_i, A_i, Y_i), i <= n; target X_j, j <= m (A and Y never observed there). For a predictor f let
m_f(x, a) = E[l(Y, f(x)) | x, a]: (mu - f)^2 + sigma^2 for squared loss, the cross-entropy of the logit f against
the soft label mu for log-loss. The adversary Q_phi(. | x) is the law of G_phi(x, eps), eps ~ N(0, I). DRUM solves

    min_f max_phi  L(f, phi) = (1/m) sum_j (1/K) sum_k m_f(X_j, G_phi(X_j, eps_jk))   s.t.  D(phi) <= rho,

by the penalised game L - lambda D with projected dual ascent lambda <- max(0, lambda + eta (D - rho)) and two
timescales (k_g ascent steps on phi per descent step on f, lr_g > lr_f). D is the average over target x of
KL(Q_phi(.|x) || p_S(.|x)) (closed form for the Gaussian generator against the Gaussian p_S, Monte Carlo against a
flow), or the transport cost E|delta|^2 of A = a0 + delta(x, a0), a0 ~ p_S (Sinha et al. 2017). The game starts
from the source conditional (the generator's last layer is zero) and ``warm_start_steps`` predictor steps at
rho = 0, i.e. multiple imputation f0(x) = E_{p_S}[mu(x, A)].

``constraint='projection'`` instead keeps each x's law inside its own ball (KL(Q_x || p_S(.|x)) <= rho, or
|delta|^2 <= rho per draw) by rescaling the generator's deviation (a bisection on the scale). This is the set of
the population-level check, and the penalised form has no maximiser when m_f grows faster in a than D does (a
quartic loss against a KL that grows like the log of a variance, as with mu = x + a + 0.5 a^2 and squared loss):
there the generator runs away whenever lambda drops below the local curvature.

Bias correction (AIPW type): C(f, phi) = (1/n) sum_i omega(X_i, A_i) [l(Y_i, f(X_i)) - m_f(X_i, A_i)] with
omega = w(x) q_phi(a|x) / p_S(a|x) (or, with ``omega='classifier'``, from a classifier between (X_T, G_phi(X_T))
and (X_S, A_S), ``omega.py``), every nuisance evaluated out of fold. For fixed phi, E[L + C] does not move
to first order when mu is perturbed (the error left is a product |mu_hat - mu| |omega_hat - omega|). The
predictor minimises L + C; the generator ascends L - lambda D (C is a variance-carrying source average that an
adversary could otherwise overfit); the reported worst-case risk is L + C.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from lightning_papers.methods.drum.config import DRUMConfig
from lightning_papers.methods.drum.nuisances import mlp
from lightning_papers.methods.drum.omega import ClassifierOmega


def gaussian_kl(m_q: torch.Tensor, s_q: torch.Tensor, m_p: torch.Tensor, s_p: torch.Tensor) -> torch.Tensor:
    """KL(N(m_q, diag s_q^2) || N(m_p, diag s_p^2)), summed over the last dimension."""
    return (torch.log(s_p / s_q) + (s_q**2 + (m_q - m_p) ** 2) / (2 * s_p**2) - 0.5).sum(-1)


def expected_loss(pred: torch.Tensor, mu: torch.Tensor, sigma2: torch.Tensor | float, loss: str) -> torch.Tensor:
    """m_f = E[l(Y, f) | x, a] given mu = E[Y | x, a]: (mu - f)^2 + sigma^2, or softplus(f) - mu f (log-loss)."""
    if loss == "log":
        return F.softplus(pred) - mu * pred
    return (mu - pred) ** 2 + sigma2


def pointwise_loss(pred: torch.Tensor, y: torch.Tensor, loss: str) -> torch.Tensor:
    """l(y, f): (y - f)^2, or the binary cross-entropy of the logit f."""
    return F.softplus(pred) - y * pred if loss == "log" else (y - pred) ** 2


def project_kl(dm: torch.Tensor, dl: torch.Tensor, radius: float, iters: int = 40) -> torch.Tensor:
    """Per-row scale t in (0, 1] with KL(N(t dm, e^{2 t dl}) || N(0, 1)) <= radius (bisection; KL grows in t).

    The KL of the deviation (dm, dl) in units of the base sd is sum_d dm^2/2 + (e^{2 dl} - 1 - 2 dl)/2.
    """

    def kl(t: torch.Tensor) -> torch.Tensor:
        u, v = t[:, None] * dm, t[:, None] * dl
        return (0.5 * u**2 + 0.5 * (torch.exp(2 * v) - 1 - 2 * v)).sum(-1)

    lo, hi = torch.zeros(len(dm)), torch.ones(len(dm))
    inside = kl(hi) <= radius
    for _ in range(iters):
        mid = (lo + hi) / 2
        ok = kl(mid) <= radius
        lo, hi = torch.where(ok, mid, lo), torch.where(ok, hi, mid)
    return torch.where(inside, torch.ones_like(lo), lo)


class GaussianGenerator(nn.Module):
    """q_phi(a | x) = N(m_S(x) + s_S(x) dm(x), diag (s_S(x) exp(dl(x)))^2); dm = dl = 0 at initialisation."""

    def __init__(self, dim_x: int, dim_a: int, hidden: int, radius: float | None = None) -> None:
        super().__init__()
        self.net = mlp(dim_x, 2 * dim_a, hidden, zero_last=True)
        self.radius = radius

    def params(self, x: torch.Tensor, nu: nn.Module) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        m0, s0 = nu.base(x)
        dm, dl = self.net(x).chunk(2, -1)
        dl = dl.clamp(-5.0, 5.0)
        if self.radius is not None:
            t = project_kl(dm.detach(), dl.detach(), self.radius)[:, None]
            dm, dl = t * dm, t * dl
        return m0 + s0 * dm, s0 * dl.exp(), m0, s0

    def sample(self, x: torch.Tensor, eps: torch.Tensor, nu: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
        """Draws ``(B, K, d_a)`` for ``eps (B, K, d_a)`` and the divergence D of this batch."""
        m, s, m0, s0 = self.params(x, nu)
        a = m[:, None] + s[:, None] * eps
        if nu.flow is None:
            return a, gaussian_kl(m, s, m0, s0).mean()
        xr = x[:, None].expand(-1, eps.shape[1], -1).reshape(-1, x.shape[1])
        log_q = self.log_q(a.reshape(-1, a.shape[-1]), xr, nu)
        return a, (log_q - nu.log_p(a.reshape(-1, a.shape[-1]), xr)).mean()

    def log_q(self, a: torch.Tensor, x: torch.Tensor, nu: nn.Module) -> torch.Tensor:
        m, s, _, _ = self.params(x, nu)
        return (-0.5 * ((a - m) / s) ** 2 - s.log() - 0.9189385332046727).sum(-1)


class TransportGenerator(nn.Module):
    """A = a0 + delta_phi(x, a0) with a0 ~ p_S(. | x); D = E|delta|^2 (delta = 0 at initialisation)."""

    def __init__(self, dim_x: int, dim_a: int, hidden: int, radius: float | None = None) -> None:
        super().__init__()
        self.net = mlp(dim_x + dim_a, dim_a, hidden, zero_last=True)
        self.radius = radius

    def sample(self, x: torch.Tensor, eps: torch.Tensor, nu: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
        b, k, da = eps.shape
        xr = x[:, None].expand(-1, k, -1).reshape(b * k, -1)
        a0 = nu.sample_base(xr, eps.reshape(b * k, da))
        delta = self.net(torch.cat([xr, a0], -1))
        if self.radius is not None:  # per-draw ball |delta|^2 <= radius
            norm = delta.detach().norm(dim=-1, keepdim=True).clamp_min(1e-12)
            delta = delta * (self.radius**0.5 / norm).clamp(max=1.0)
        return (a0 + delta).view(b, k, da), (delta**2).sum(-1).mean()


def build_generator(name: str, dim_x: int, dim_a: int, hidden: int, radius: float | None = None) -> nn.Module:
    """``kl`` -> :class:`GaussianGenerator`; ``transport`` -> :class:`TransportGenerator`.

    ``radius`` keeps every x's law inside its own ball of that radius (``constraint='projection'``).
    """
    if name == "kl":
        return GaussianGenerator(dim_x, dim_a, hidden, radius)
    if name == "transport":
        return TransportGenerator(dim_x, dim_a, hidden, radius)
    raise ValueError(f"unknown divergence {name!r}; expected 'kl' or 'transport'")


@dataclass
class GameData:
    """Standardised source (x_s, a_s, y_s) and target x_t tensors."""

    x_s: torch.Tensor
    a_s: torch.Tensor
    y_s: torch.Tensor
    x_t: torch.Tensor


def draw_batch(data: GameData, cfg: DRUMConfig, g: torch.Generator) -> dict[str, torch.Tensor]:
    """Target rows with their generator noise, and source rows (indices) for the correction."""
    b = min(cfg.batch_size, len(data.x_t))
    jt = torch.randint(len(data.x_t), (b,), generator=g)
    js = torch.randint(len(data.x_s), (min(cfg.batch_size, len(data.x_s)),), generator=g)
    eps = torch.randn(b, cfg.n_draws, data.a_s.shape[1], generator=g)
    return {"x_t": data.x_t[jt], "eps": eps, "idx_s": js}


class DRUMGame(nn.Module):
    """Predictor f, generator G_phi, the (fitted) nuisances, the multiplier lambda and a step counter.

    :meth:`step` is one game step (used as is by ``DRUMModule.training_step``); :meth:`fit` runs it with plain Adam.
    """

    def __init__(self, nu: nn.Module, dim_x: int, dim_a: int, cfg: DRUMConfig) -> None:
        super().__init__()
        torch.manual_seed(cfg.seed)
        self.cfg, self.nu = cfg, nu
        self.f = mlp(dim_x, 1, cfg.hidden)
        radius = cfg.rho if cfg.constraint == "projection" else None
        self.gen = build_generator(cfg.divergence, dim_x, dim_a, cfg.hidden, radius)
        self.register_buffer("lam", torch.tensor(float(cfg.lambda_init)))
        self.register_buffer("steps", torch.tensor(0))
        self.last: dict[str, float] = {}
        self.omega: ClassifierOmega | None = None
        if cfg.bias_correction and cfg.omega == "classifier":
            if not hasattr(nu, "t_folds"):
                raise ValueError("omega='classifier' needs cross-fitted nuisances (fit_nuisances) for its folds")
            self.omega = ClassifierOmega(nu.mu_models.folds, nu.t_folds, dim_x, dim_a, cfg)

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """f(x): the prediction of E[Y | x] (a logit for log-loss)."""
        return self.f(x).squeeze(-1)

    def risk(self, data: GameData, batch: dict[str, torch.Tensor], correct: bool) -> dict[str, torch.Tensor]:
        """L (and C) on a batch, with the batch's divergence D."""
        x, eps, loss = batch["x_t"], batch["eps"], self.cfg.loss
        a, div = self.gen.sample(x, eps, self.nu)
        b, k, da = a.shape
        mu = self.nu.mu(x[:, None].expand(-1, k, -1).reshape(b * k, -1), a.reshape(b * k, da)).view(b, k)
        out = {"risk": expected_loss(self.predict(x)[:, None], mu, self.nu.sigma2, loss).mean(), "div": div}
        if correct:
            out["correction"] = self.correction(data, batch["idx_s"])
        return out

    def correction(self, data: GameData, idx: torch.Tensor) -> torch.Tensor:
        """C(f, phi) on source rows ``idx`` (out-of-fold nuisances, clipped omega)."""
        x, a, y = data.x_s[idx], data.a_s[idx], data.y_s[idx]
        with torch.no_grad():
            if self.omega is not None:
                if int(self.omega.fitted_at) < 0:  # evaluated before any game step
                    self.omega.refit(self.gen, self.nu, data.x_s, data.a_s, data.x_t, int(self.steps))
                log_w = self.omega.log_omega(x, a, idx)
            else:
                log_w = self.nu.ratio(x, idx).log() + self.gen.log_q(a, x, self.nu) - self.nu.log_p(a, x, idx)
            omega = log_w.exp().clamp(max=self.cfg.weight_clip)
            mu = self.nu.mu(x, a, idx)
        pred = self.predict(x)
        resid = pointwise_loss(pred, y, self.cfg.loss) - expected_loss(pred, mu, self.nu.sigma2, self.cfg.loss)
        return (omega * resid).mean()

    def step(self, data: GameData, opt_f: torch.optim.Optimizer, opt_g: torch.optim.Optimizer,
             backward: Callable[[torch.Tensor], None] = torch.Tensor.backward) -> dict[str, float]:
        """One step: k_g generator ascent steps + dual update (after the warm start, if rho > 0), one f step."""
        cfg, t = self.cfg, int(self.steps)
        g = torch.Generator().manual_seed(cfg.seed * 1_000_003 + t)  # the stream is a function of the step
        stats: dict[str, float] = {}
        if t >= cfg.warm_start_steps and cfg.rho > 0:
            self.f.requires_grad_(False)
            for _ in range(cfg.k_g):
                out = self.risk(data, draw_batch(data, cfg, g), correct=False)
                opt_g.zero_grad()
                penalty = self.lam * out["div"] if cfg.constraint == "dual" else 0.0
                backward(-(out["risk"] - penalty))
                opt_g.step()
            self.f.requires_grad_(True)
            div = float(out["div"].detach())
            if cfg.constraint == "dual":
                self.lam.fill_(max(0.0, float(self.lam) + cfg.lr_dual * (div - cfg.rho)))
            stats["div"] = div
        self.gen.requires_grad_(False)
        if self.omega is not None and self.omega.due(t):
            self.omega.refit(self.gen, self.nu, data.x_s, data.a_s, data.x_t, t)
        out = self.risk(data, draw_batch(data, cfg, g), correct=cfg.bias_correction)
        obj = out["risk"] + out.get("correction", 0.0)
        opt_f.zero_grad()
        backward(obj)
        opt_f.step()
        self.gen.requires_grad_(True)
        self.steps += 1
        stats.update(risk=float(out["risk"].detach()), objective=float(obj.detach()), lam=float(self.lam))
        self.last = stats
        return stats

    def optimizers(self) -> tuple[torch.optim.Optimizer, torch.optim.Optimizer]:
        """Adam for f (lr_f) and plain SGD for the generator (lr_g; see ``DRUMConfig.lr_g`` for why not Adam)."""
        return (torch.optim.Adam(self.f.parameters(), lr=self.cfg.lr_f),
                torch.optim.SGD(self.gen.parameters(), lr=self.cfg.lr_g))

    def fit(self, data: GameData, n_steps: int) -> DRUMGame:
        """Run :meth:`step` ``n_steps`` times with the optimisers of :meth:`optimizers` (no Trainer)."""
        opt_f, opt_g = self.optimizers()
        for _ in range(n_steps):
            self.step(data, opt_f, opt_g)
        return self

    @torch.no_grad()
    def evaluate(self, data: GameData, n_draws: int = 16, seed: int = 12345) -> dict[str, float]:
        """Worst-case risk L at the current generator over all target rows, D, and C over all source rows."""
        g = torch.Generator().manual_seed(seed)
        eps = torch.randn(len(data.x_t), n_draws, data.a_s.shape[1], generator=g)
        batch = {"x_t": data.x_t, "eps": eps, "idx_s": torch.arange(len(data.x_s))}
        out = self.risk(data, batch, correct=self.cfg.divergence == "kl" or self.omega is not None)
        res = {"worst_risk": float(out["risk"]), "div": float(out["div"]), "lam": float(self.lam)}
        if "correction" in out:
            res["correction"] = float(out["correction"])
            res["worst_risk_corrected"] = res["worst_risk"] + res["correction"]
        return res
