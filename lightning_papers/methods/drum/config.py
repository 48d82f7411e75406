"""``DRUMConfig``: the one set of DRUM hyper-parameters, used by the game, the module and the benchmark."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass
class DRUMConfig:
    """Hyper-parameters of DRUM (arXiv 2605.24212, method section; the paper's abstract gives no values, so the
    defaults are this repository's choices for the shift experiment documented in ``docs/drum.md``).

    Args:
        rho: Robustness radius: the target A|X may be up to ``rho`` away (KL, or mean squared transport) from the
            source's. 0 is multiple imputation.
        divergence: ``kl`` (closed form for a Gaussian generator against a Gaussian p_S; Monte Carlo against a
            flow) or ``transport`` (penalty E|delta|^2 on a shift of a source draw, Sinha et al. 2017).
        constraint: ``dual``: the penalised game with projected dual ascent on lambda over the average divergence
            (well posed when the loss grows no faster in a than D, e.g. log-loss); ``projection``: every x's law is
            kept in its own ball by rescaling the generator (needed for squared loss with mu quadratic in a).
        conditional: Model of p_S(a | x): ``gaussian`` (heteroscedastic, diagonal) or ``flow`` (zuko NSF).
        loss: ``squared`` (continuous outcome) or ``log`` (binary outcome; the predictor outputs a logit).
        bias_correction: Add the cross-fitted AIPW-type source residual term C(f, phi) to the predictor's loss.
        omega: Weights omega of the correction: ``density`` (w(x) q_phi(a|x) / p_S(a|x), needs the generator's
            density, so ``divergence='kl'`` only) or ``classifier`` (a cross-fitted classifier between
            (X_T, G_phi(X_T, eps)) and (X_S, A_S), refitted every ``omega_every`` game steps; any divergence).
        omega_every: Game steps between refits of the omega classifier (``omega='classifier'``).
        n_folds: Cross-fitting folds K of the nuisances.
        hidden: Width of every MLP (2 hidden layers): outcome model, conditional, classifier, generator, predictor.
        nuisance_steps: Adam steps of each nuisance fit.
        nuisance_lr: Learning rate of the nuisance fits.
        batch_size: Target rows (and source rows for the correction) per game step.
        n_draws: Generator draws per target row in each game step.
        k_g: Generator ascent steps per predictor step (two-timescale game).
        lr_f: Predictor learning rate.
        lr_g: Generator learning rate of plain SGD (> lr_f: the adversary runs on the faster timescale). SGD, not
            Adam: Adam's per-coordinate normalisation turns the near-zero, symmetry-breaking gradient of a mean
            shift into a full step, and the adversary then settles in a mean-shift local optimum that f chases.
        lr_dual: Step size of the projected dual ascent lambda <- max(0, lambda + lr_dual (D - rho)).
        lambda_init: Initial multiplier lambda.
        warm_start_steps: Predictor steps at rho = 0 (multiple imputation) before the game starts.
        weight_clip: Upper clip of the importance weights omega in the bias correction.
        seed: Seed of the folds, nuisance fits, initialisation and minibatch draws.
    """

    rho: float = 0.3
    divergence: Literal["kl", "transport"] = "kl"
    constraint: Literal["projection", "dual"] = "projection"
    conditional: Literal["gaussian", "flow"] = "gaussian"
    loss: Literal["squared", "log"] = "squared"
    bias_correction: bool = True
    omega: Literal["density", "classifier"] = "density"
    omega_every: int = 100
    n_folds: int = 2
    hidden: int = 64
    nuisance_steps: int = 400
    nuisance_lr: float = 3e-3
    batch_size: int = 256
    n_draws: int = 4
    k_g: int = 3
    lr_f: float = 1e-3
    lr_g: float = 0.05
    lr_dual: float = 1.0
    lambda_init: float = 5.0
    warm_start_steps: int = 200
    weight_clip: float = 20.0
    seed: int = 0

    def __post_init__(self) -> None:
        if not self.rho >= 0:
            raise ValueError(f"rho must be >= 0, got {self.rho}")
        choices = {"divergence": ("kl", "transport"), "conditional": ("gaussian", "flow"), "loss": ("squared", "log"),
                   "constraint": ("projection", "dual"), "omega": ("density", "classifier")}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {getattr(self, name)!r}")
        if self.n_folds < 2:
            raise ValueError(f"n_folds must be >= 2 (cross-fitting), got {self.n_folds}")
        for name in ("hidden", "batch_size", "n_draws", "k_g", "nuisance_steps", "omega_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("lr_f", "lr_g", "nuisance_lr", "weight_clip"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        if self.lr_dual < 0 or self.lambda_init < 0 or self.warm_start_steps < 0:
            raise ValueError(
                f"lr_dual, lambda_init, warm_start_steps must be >= 0, got {self.lr_dual}, {self.lambda_init}, "
                f"{self.warm_start_steps}"
            )
        if self.divergence == "transport" and self.bias_correction and self.omega == "density":
            raise ValueError(
                "omega='density' needs the generator's density q(a|x) (divergence='kl'); the transport generator "
                "has none: set omega: classifier (or bias_correction: false) with divergence: transport"
            )
