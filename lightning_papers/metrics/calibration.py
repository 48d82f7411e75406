"""Exact online calibration errors of a binary forecaster (ℓ1, ℓ2, KL and pseudo-KL) and their torchmetrics form.

Definitions follow "Adaptive Calibration in Non-Stationary Environments" (Liu, Luo, Ratliff, 2026, arXiv 2605.11490;
written out in ``docs/adaptive_calibration.md``). Over T rounds with forecasts p_t and outcomes y_t ∈ {0, 1}, group
the rounds by the *distinct* predicted value p: n_p = #{t: p_t = p}, S_p = Σ_{t: p_t = p} (y_t − p), ρ_p = p + S_p/n_p.
Then

* ``Cal1 = Σ_p |S_p|``
* ``Cal2 = Σ_p S_p² / n_p = Σ_p n_p (ρ_p − p)²``
* ``KLCal = Σ_p n_p KL(ρ_p ‖ p)``, with the Bernoulli KL divergence
* pseudo-KL: the same with n_p = Σ_t P_t(p) and ρ_p = Σ_t P_t(p) y_t / n_p, where P_t is the forecaster's
  distribution over its grid (Luo, Senapati, Sharan 2025).

These are sums, not averages: divide by T for the per-round numbers the benchmarks and callbacks log. The binned ECE
of torchmetrics merges distinct predictions that share a bin, so ``ECE·T ≤ Cal1`` (a lower bound, never a
substitute).

The :class:`OnlineCalibrationError` metric keeps fixed-size per-cell sums on a lattice of ``resolution + 1`` points
(``dist_reduce_fx="sum"``, so DDP reduction is exact). It equals the functions above whenever the predictions lie on
the lattice ``{k / resolution}``, as the forecasters in ``lightning_papers.methods.adaptive_calibration`` do; other
predictions are grouped with the nearest lattice point (then ``≤`` the exact value, like any binning).
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
from torchmetrics import Metric

ArrayLike = np.ndarray | torch.Tensor | list | tuple

_EPS = 1e-12


def as_numpy(x: ArrayLike) -> np.ndarray:
    """A flat float64 NumPy copy-or-view of a tensor (any device), array, list or tuple."""
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().double().numpy()
    return np.asarray(x, dtype=np.float64).reshape(-1)


def check_probabilities(p: np.ndarray, name: str = "p") -> None:
    """Raise ``ValueError`` unless every entry of ``p`` is a finite number in [0, 1]."""
    if p.size and not np.all(np.isfinite(p)):
        bad = p[~np.isfinite(p)][0]
        raise ValueError(f"{name} must be finite probabilities in [0, 1], got {bad}")
    if p.size and (p.min() < 0.0 or p.max() > 1.0):
        bad = p[(p < 0.0) | (p > 1.0)][0]
        raise ValueError(f"{name} must be probabilities in [0, 1], got {bad}")


def check_labels(y: np.ndarray, name: str = "y") -> None:
    """Raise ``ValueError`` unless every entry of ``y`` is 0 or 1."""
    if y.size and not np.all((y == 0.0) | (y == 1.0)):
        bad = y[~((y == 0.0) | (y == 1.0))][0]
        raise ValueError(f"{name} must be binary labels in {{0, 1}}, got {bad}")


def _checked(p: ArrayLike, y: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    p_arr, y_arr = as_numpy(p), as_numpy(y)
    if p_arr.shape != y_arr.shape:
        raise ValueError(f"p and y must have the same length, got {p_arr.size} and {y_arr.size}")
    check_probabilities(p_arr, "p")
    check_labels(y_arr, "y")
    return p_arr, y_arr


def grouped_sums(p: ArrayLike, y: ArrayLike) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Distinct predicted values with their counts ``n_p`` and label sums ``Σ y`` (validated inputs)."""
    p_arr, y_arr = _checked(p, y)
    values, inverse = np.unique(p_arr, return_inverse=True)
    counts = np.bincount(inverse, minlength=values.size).astype(np.float64)
    label_sums = np.bincount(inverse, weights=y_arr, minlength=values.size)
    return values, counts, label_sums


def bernoulli_kl(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """KL(Bern(a) ‖ Bern(b)) elementwise, with 0·log 0 = 0 (infinite where a > 0 = b or a < 1 = b)."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        t1 = np.where(a > 0, a * (np.log(np.maximum(a, _EPS)) - np.log(b)), 0.0)
        t0 = np.where(a < 1, (1 - a) * (np.log(np.maximum(1 - a, _EPS)) - np.log1p(-b)), 0.0)
    return t1 + t0


def l1_from_sums(values: np.ndarray, counts: np.ndarray, label_sums: np.ndarray) -> float:
    """Cal1 = Σ_p |Σy − n_p p| from per-value sums."""
    return float(np.abs(label_sums - counts * values).sum())


def l2_from_sums(values: np.ndarray, counts: np.ndarray, label_sums: np.ndarray) -> float:
    """Cal2 = Σ_p (Σy − n_p p)² / n_p from per-value sums (values never predicted contribute 0)."""
    m = counts > 0
    dev = label_sums[m] - counts[m] * values[m]
    return float((dev**2 / counts[m]).sum())


def kl_from_sums(values: np.ndarray, counts: np.ndarray, label_sums: np.ndarray) -> float:
    """KLCal = Σ_p n_p KL(ρ_p ‖ p) from per-value sums (also the pseudo version when counts are Σ_t P_t(p))."""
    m = counts > 0
    rho = np.clip(label_sums[m] / counts[m], 0.0, 1.0)
    return float((counts[m] * bernoulli_kl(rho, values[m])).sum())


def l1_calibration_error(p: ArrayLike, y: ArrayLike) -> float:
    """Exact online ℓ1 calibration error Σ_p |S_p| of forecasts ``p`` against binary outcomes ``y`` (a sum)."""
    return l1_from_sums(*grouped_sums(p, y))


def l2_calibration_error(p: ArrayLike, y: ArrayLike) -> float:
    """Exact online ℓ2 calibration error Σ_p S_p² / n_p (a sum over distinct predicted values)."""
    return l2_from_sums(*grouped_sums(p, y))


def kl_calibration_error(p: ArrayLike, y: ArrayLike) -> float:
    """Exact online KL calibration error Σ_p n_p KL(ρ_p ‖ p); infinite if p ∈ {0, 1} is contradicted."""
    return kl_from_sums(*grouped_sums(p, y))


def pseudo_kl_calibration_error(dists: ArrayLike, grid: ArrayLike, y: ArrayLike) -> float:
    """Pseudo-KL calibration error from the forecaster's distributions.

    Args:
        dists: ``(T, N)`` matrix, row t is the forecaster's distribution P_t over the ``N`` grid values.
        grid: ``(N,)`` grid values in [0, 1].
        y: ``(T,)`` binary outcomes.
    """
    d = dists.detach().cpu().double().numpy() if isinstance(dists, torch.Tensor) else np.asarray(dists, np.float64)
    g = as_numpy(grid)
    y_arr = as_numpy(y)
    if d.ndim != 2 or d.shape != (y_arr.size, g.size):
        raise ValueError(f"dists must have shape (len(y), len(grid)) = ({y_arr.size}, {g.size}), got {d.shape}")
    check_probabilities(g, "grid")
    check_labels(y_arr, "y")
    if d.size and (not np.all(np.isfinite(d)) or d.min() < 0 or not np.allclose(d.sum(1), 1.0, atol=1e-6)):
        raise ValueError("each row of dists must be a probability distribution (non-negative, summing to 1)")
    return kl_from_sums(g, d.sum(0), d.T @ y_arr)


class OnlineCalibrationError(Metric):
    """Exact online ℓ1 / ℓ2 / KL calibration error with fixed-size state (sum-reduced, so exact under DDP).

    State: per lattice cell k (prediction ``k / resolution``), the count, the label sum and the prediction sum.
    ``compute()`` returns the *sum* over rounds (Cal1, Cal2 or KLCal) or, with ``per_round=True``, that sum / T.

    Args:
        norm: ``"l1"``, ``"l2"`` or ``"kl"`` (definitions in the module docstring).
        resolution: Number of lattice intervals; predictions ``k / resolution`` are treated exactly.
        per_round: Divide by the number of rounds T.
    """

    is_differentiable = False
    higher_is_better = False
    full_state_update = False

    def __init__(
        self,
        norm: Literal["l1", "l2", "kl"] = "l1",
        resolution: int = 4096,
        per_round: bool = False,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        if norm not in ("l1", "l2", "kl"):
            raise ValueError(f"norm must be 'l1', 'l2' or 'kl', got {norm!r}")
        if resolution < 1:
            raise ValueError(f"resolution must be a positive integer, got {resolution}")
        self.norm = norm
        self.resolution = resolution
        self.per_round = per_round
        size = resolution + 1
        self.add_state("count", torch.zeros(size, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("label_sum", torch.zeros(size, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("pred_sum", torch.zeros(size, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, preds: torch.Tensor, target: torch.Tensor) -> None:
        """Add rounds: ``preds`` are probabilities in [0, 1], ``target`` binary labels (same number of entries)."""
        p = torch.as_tensor(preds).detach().reshape(-1).to(torch.float64)
        y = torch.as_tensor(target).detach().reshape(-1).to(torch.float64)
        if p.numel() != y.numel():
            raise ValueError(f"preds and target must have the same number of entries, got {p.numel()}, {y.numel()}")
        check_probabilities(p.cpu().numpy(), "preds")
        check_labels(y.cpu().numpy(), "target")
        idx = torch.round(p * self.resolution).long().to(self.count.device)
        self.count.index_add_(0, idx, torch.ones_like(p, device=self.count.device))
        self.label_sum.index_add_(0, idx, y.to(self.count.device))
        self.pred_sum.index_add_(0, idx, p.to(self.count.device))

    def compute(self) -> torch.Tensor:
        counts = self.count.cpu().numpy()
        m = counts > 0
        values = np.zeros_like(counts)
        values[m] = self.pred_sum.cpu().numpy()[m] / counts[m]
        labels = self.label_sum.cpu().numpy()
        fn = {"l1": l1_from_sums, "l2": l2_from_sums, "kl": kl_from_sums}[self.norm]
        total = fn(values[m], counts[m], labels[m])
        if self.per_round:
            total /= max(float(counts.sum()), 1.0)
        return torch.tensor(total, dtype=torch.float64)


def binned_ece_noise(p: ArrayLike, n_bins: int = 15) -> float:
    """Typical binned ECE of a *perfectly calibrated* forecast with these values: Σ_b √(n_b·p̄_b(1 − p̄_b)) / T.

    In bin b (equal width, as torchmetrics' ECE), n_b forecasts with mean p̄_b have an observed frequency whose
    standard deviation is √(p̄_b(1 − p̄_b) / n_b) even when calibrated; weighted by n_b / T this is the ECE's
    sampling noise. Used to tell "recalibration made it worse" from noise.
    """
    q = as_numpy(p)
    if q.size == 0:
        return 0.0
    b = np.clip((q * n_bins).astype(np.int64), 0, n_bins - 1)
    cnt = np.bincount(b, minlength=n_bins).astype(np.float64)
    m = cnt > 0
    mean = np.bincount(b, weights=q, minlength=n_bins)[m] / cnt[m]
    return float(np.sqrt(cnt[m] * mean * (1.0 - mean)).sum() / q.size)


def reliability_figure(
    p: ArrayLike,
    y: ArrayLike,
    n_bins: int = 15,
    title: str = "",
    extra: dict[str, ArrayLike] | None = None,
    label: str = "forecast",
):
    """Reliability diagram with the per-bin counts underneath; returns a matplotlib Figure.

    Top: observed frequency of ``y = 1`` against the mean forecast in each of ``n_bins`` uniform bins, one line per
    forecast, and the diagonal of perfect calibration. Bottom: how many rounds fell in each bin (a histogram per
    forecast, same colours), so a point resting on a handful of rounds is visible as such. Every line is labelled.

    Args:
        p: Forecasts, drawn under ``label``.
        y: Binary outcomes.
        n_bins: Uniform bins on [0, 1].
        title: Figure title.
        extra: ``{label: forecasts}`` drawn on the same axes (for example the raw scores next to calibrated ones).
        label: Legend label of ``p``.
    """
    import matplotlib.pyplot as plt

    series = {label: p, **(extra or {})}
    y_arr = as_numpy(y)
    fig, (ax, axh) = plt.subplots(
        2, 1, figsize=(4.8, 6.0), sharex=True, gridspec_kw={"height_ratios": [3, 1.2], "hspace": 0.08}
    )
    ax.plot([0, 1], [0, 1], "k:", lw=1, label="perfectly calibrated")
    edges = np.linspace(0, 1, n_bins + 1)
    most = 1
    for name, q in series.items():
        q_arr = as_numpy(q)
        if q_arr.shape != y_arr.shape:
            raise ValueError(f"forecasts {name!r} must have one value per outcome, got {q_arr.size} for {y_arr.size}")
        b = np.clip(np.digitize(q_arr, edges) - 1, 0, n_bins - 1)
        cnt = np.bincount(b, minlength=n_bins)
        m = cnt > 0
        conf = np.bincount(b, weights=q_arr, minlength=n_bins)[m] / cnt[m]
        freq = np.bincount(b, weights=y_arr, minlength=n_bins)[m] / cnt[m]
        (line,) = ax.plot(conf, freq, "o-", ms=3, label=name)
        axh.stairs(cnt, edges, color=line.get_color(), lw=1.2, label=name)
        most = max(most, int(cnt.max()))
    ax.set_ylabel("observed frequency of y = 1")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_title(title)
    ax.legend(fontsize=8, loc="upper left")
    axh.set_xlabel(f"forecast (bins of width 1/{n_bins})")
    axh.set_ylabel("rounds per bin")
    axh.set_yscale("symlog", linthresh=1)
    axh.set_ylim(0, most * 40)  # head room for the legend on the log scale
    axh.legend(fontsize=7, loc="upper center", ncol=len(series))
    return fig
