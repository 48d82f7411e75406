"""The one dataclass of the method's hyper-parameters, and the three-phase training schedule.

Schedule (EQL, Sahoo et al. 2018, Sec. 3; SymANNTEx, arXiv 2406.06585): the first ``warmup_fraction`` of the
steps fit without a penalty; the next ``sparse_fraction`` add lambda * sum smoothed |w|^{1/2}; at the step that
ends that phase every weight with |w| < ``mask_threshold`` is fixed at zero and the remaining steps fine-tune the
survivors without a penalty. Adam runs with a triangular cyclic learning rate between ``lr_min`` and ``lr``
(``cycle_steps`` per cycle), as in SymANNTEx.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Phase = Literal["warmup", "sparse", "finetune"]


@dataclass
class SymbolicConfig:
    """Network sizes, training schedule, derivative targets and readout of neural symbolic regression.

    Network (two symbolic layers with identity x4, sin x2, cos x2, product x4, as reconstructed from the Chaos
    paper and EQL):

    Args:
        n_layers: Symbolic layers (each a linear map into a bank of units). Two layers of products reach degree 4.
        n_identity: Identity units per layer.
        n_sin: sin units per layer.
        n_cos: cos units per layer.
        n_products: Pairwise product units per layer (each takes two linear outputs).
        n_div: Safe-division units (num / den, |den| >= ``div_eps``) in the last symbolic layer only, as EQL-div
            places division at the output; 0 turns division off.
        n_exp: exp units per layer (argument clipped at 10); 0 turns exp off.
        div_eps: Smallest |denominator| a division unit uses.
        init_std: Standard deviation of the normal weight initialisation (SymANNTEx: normal init).
        steps: Total optimizer steps (the trainer's ``max_steps`` must match).
        warmup_fraction: Share of steps without a penalty (reconstruction: 20 %).
        sparse_fraction: Share of steps with the L1/2 penalty (reconstruction: 60 %); masking happens after it.
        l_half: Weight lambda of the smoothed L1/2 penalty (reconstruction: 1e-3 to 1e-2).
        l_half_a: Smoothing radius a of the penalty: |w|^{1/2} for |w| >= a, a quartic below (Wu et al. 2014).
        mask_threshold: Weights with |w| below this are fixed at zero after the sparse phase.
        lr: Peak Adam learning rate of the cyclic schedule.
        lr_min: Lowest learning rate of the cyclic schedule.
        cycle_steps: Steps of one triangular learning-rate cycle (up and down).
        loss: ``derivative`` (MSE to derivative estimates) or ``rk4`` (one RK4 step over ``rk4_window`` samples,
            no derivative targets in the loss).
        rk4_window: Samples spanned by one RK4 step of the integral loss.
        derivative: ``central`` (4th-order central differences, clean data), ``savgol`` (Savitzky-Golay, noisy
            data) or ``auto`` (``savgol`` when the datamodule's noise is > 0 or unknown, else ``central``).
        savgol_window: Savitzky-Golay window in samples (odd).
        savgol_order: Savitzky-Golay polynomial order.
        max_points: Training points used (an evenly spaced subset of all trajectories' samples).
        prune_tol: Readout ignores effective weights with |w| below this.
        snap_tol: Readout rounds a number inside sin/cos/exp or a denominator to a nearby simple fraction (p/q,
            q <= 4) when within this relative distance, and to 0 when its magnitude is below it.
        n_thresholds: Thresholds of the readout sweep, log-spaced in [``threshold_min``, ``threshold_max``].
        threshold_min: Smallest threshold on a term's normalised size |c| rms(term) / rms(target).
        threshold_max: Largest threshold.
        seed: Seed of the weight initialisation.
    """

    n_layers: int = 2
    n_identity: int = 4
    n_sin: int = 2
    n_cos: int = 2
    n_products: int = 4
    n_div: int = 0
    n_exp: int = 0
    div_eps: float = 1e-2
    init_std: float = 0.5
    steps: int = 2000
    warmup_fraction: float = 0.2
    sparse_fraction: float = 0.6
    l_half: float = 1e-2
    l_half_a: float = 0.01
    mask_threshold: float = 0.05
    lr: float = 1e-2
    lr_min: float = 1e-3
    cycle_steps: int = 500
    loss: Literal["derivative", "rk4"] = "derivative"
    rk4_window: int = 4
    derivative: Literal["auto", "central", "savgol"] = "auto"
    savgol_window: int = 21
    savgol_order: int = 3
    max_points: int = 1500
    prune_tol: float = 1e-3
    snap_tol: float = 0.03
    n_thresholds: int = 30
    threshold_min: float = 1e-4
    threshold_max: float = 1.0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.n_layers < 1:
            raise ValueError(f"n_layers must be >= 1, got {self.n_layers}")
        counts = (self.n_identity, self.n_sin, self.n_cos, self.n_products, self.n_div, self.n_exp)
        if min(counts) < 0 or sum(counts) == 0:
            raise ValueError(f"unit counts must be >= 0 and not all 0, got {counts}")
        if self.steps < 1 or self.cycle_steps < 2 or self.max_points < 10:
            raise ValueError(
                f"need steps >= 1, cycle_steps >= 2, max_points >= 10; got {self.steps}, {self.cycle_steps}, "
                f"{self.max_points}"
            )
        if not (
            0 <= self.warmup_fraction and 0 <= self.sparse_fraction and self.warmup_fraction + self.sparse_fraction <= 1
        ):
            raise ValueError(
                f"warmup_fraction and sparse_fraction must be >= 0 and sum to <= 1, got {self.warmup_fraction}, "
                f"{self.sparse_fraction}"
            )
        if not 0 < self.lr_min <= self.lr:
            raise ValueError(f"need 0 < lr_min <= lr, got lr_min={self.lr_min}, lr={self.lr}")
        if self.savgol_window < 3 or self.savgol_window % 2 == 0 or self.savgol_order >= self.savgol_window:
            raise ValueError(
                f"savgol_window must be odd and >= 3 and savgol_order < savgol_window, got {self.savgol_window}, "
                f"{self.savgol_order}"
            )
        if self.rk4_window < 1 or self.l_half < 0 or self.l_half_a <= 0 or self.mask_threshold < 0:
            raise ValueError(
                f"need rk4_window >= 1, l_half >= 0, l_half_a > 0, mask_threshold >= 0; got {self.rk4_window}, "
                f"{self.l_half}, {self.l_half_a}, {self.mask_threshold}"
            )
        if not 0 < self.threshold_min < self.threshold_max or self.n_thresholds < 1:
            raise ValueError(
                f"need 0 < threshold_min < threshold_max and n_thresholds >= 1, got {self.threshold_min}, "
                f"{self.threshold_max}, {self.n_thresholds}"
            )

    @property
    def mask_step(self) -> int:
        """The optimizer step at which small weights are masked (start of fine-tuning)."""
        return int(round((self.warmup_fraction + self.sparse_fraction) * self.steps))

    def phase(self, step: int) -> Phase:
        """The schedule phase of optimizer step ``step`` (0-based)."""
        if step < int(round(self.warmup_fraction * self.steps)):
            return "warmup"
        return "sparse" if step < self.mask_step else "finetune"
