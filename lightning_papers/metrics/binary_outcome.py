"""Functional metrics of predicted probabilities for a binary outcome, with optional row weights (e.g. IPCW).

Brier score, log-loss, AUROC (the weighted Mann-Whitney statistic, ties counted 1/2) and the calibration slope and
intercept (the logistic recalibration logit P(Y=1) = b0 + b1 logit(p), fitted by Newton's method; a perfectly
calibrated model has b0 = 0, b1 = 1). With unit weights they equal the unweighted textbook definitions.
"""

from __future__ import annotations

import torch


def _w(p: torch.Tensor, w: torch.Tensor | None) -> torch.Tensor:
    return torch.ones_like(p, dtype=torch.float64) if w is None else w.double()


def brier(p: torch.Tensor, y: torch.Tensor, w: torch.Tensor | None = None) -> float:
    """Weighted mean of (p - y)^2."""
    w = _w(p, w)
    return float((w * (p.double() - y.double()) ** 2).sum() / w.sum())


def log_loss(p: torch.Tensor, y: torch.Tensor, w: torch.Tensor | None = None, eps: float = 1e-7) -> float:
    """Weighted mean of -y log p - (1 - y) log(1 - p)."""
    w, p, y = _w(p, w), p.double().clamp(eps, 1 - eps), y.double()
    return float((w * -(y * p.log() + (1 - y) * (1 - p).log())).sum() / w.sum())


def auroc(p: torch.Tensor, y: torch.Tensor, w: torch.Tensor | None = None) -> float:
    """Weighted probability that a positive ranks above a negative (ties 1/2)."""
    w, p, y = _w(p, w), p.double(), y.double()
    pos, neg = y == 1, y == 0
    if not pos.any() or not neg.any():
        raise ValueError("auroc needs both classes among the labels")
    order = torch.argsort(p)
    p, y, w = p[order], y[order], w[order]
    uniq, inv = torch.unique(p, return_inverse=True)
    wn = torch.zeros(len(uniq), dtype=torch.float64).index_add_(0, inv, w * (y == 0))
    wp = torch.zeros(len(uniq), dtype=torch.float64).index_add_(0, inv, w * (y == 1))
    below = torch.cumsum(wn, 0) - wn  # negative weight strictly below each distinct score
    return float((wp * (below + 0.5 * wn)).sum() / (wp.sum() * wn.sum()))


def calibration_slope_intercept(p: torch.Tensor, y: torch.Tensor, w: torch.Tensor | None = None,
                                iters: int = 50) -> tuple[float, float]:
    """(slope b1, intercept b0) of the weighted logistic recalibration of y on logit(p)."""
    w, y = _w(p, w), y.double()
    z = torch.logit(p.double().clamp(1e-7, 1 - 1e-7))
    design = torch.stack([torch.ones_like(z), z], 1)
    beta = torch.tensor([0.0, 1.0], dtype=torch.float64)

    def loglik(b: torch.Tensor) -> float:
        eta = design @ b
        return float((w * (y * eta - torch.nn.functional.softplus(eta))).sum())

    for _ in range(iters):
        q = torch.sigmoid(design @ beta)
        grad = design.T @ (w * (y - q))
        hess = (design * (w * q * (1 - q))[:, None]).T @ design + 1e-10 * torch.eye(2, dtype=torch.float64)
        step = torch.linalg.solve(hess, grad)
        base = loglik(beta)
        for _ in range(30):  # damped Newton: halve the step until the likelihood does not fall
            if loglik(beta + step) >= base:
                break
            step = step / 2
        beta = beta + step
        if step.abs().max() < 1e-10:
            break
    return float(beta[1]), float(beta[0])


def binary_report(p: torch.Tensor, y: torch.Tensor, w: torch.Tensor | None = None) -> dict[str, float]:
    """Brier, log-loss, AUROC, calibration slope and intercept in one dict."""
    slope, intercept = calibration_slope_intercept(p, y, w)
    return {"brier": brier(p, y, w), "log_loss": log_loss(p, y, w), "auroc": auroc(p, y, w),
            "cal_slope": slope, "cal_intercept": intercept}
