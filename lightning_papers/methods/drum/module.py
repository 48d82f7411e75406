"""``DRUMModule``: the DRUM game (``game.py``) under Lightning's manual optimisation.

On the first fit the module cross-fits the nuisances (``nuisances.py``), then every training step is one
:meth:`DRUMGame.step` (k_g generator steps on the generator optimiser, the dual update, one predictor step on the
predictor optimiser; the first ``warm_start_steps`` are predictor steps at rho = 0). Note that ``global_step``
counts every optimiser step (k_g + 1 per game step once the game has started). The nuisances, the multiplier
lambda and the game's step counter are in ``state_dict``; the minibatch stream is a function of that counter, so a
resumed fit (``--ckpt_path``) continues exactly.

At the end of a fit the module writes, under ``<logger save_dir>/predictions/<run id>/`` (the figures' sibling):
``target_predictions.csv`` (target row id, prediction of E[Y | x] or P(Y = 1 | x), the rho it was trained at) and
``robustness.csv`` (worst-case risk of DRUM's f and of multiple imputation over a grid of KL radii, by the
exponential-tilt dual against the fitted p_S and mu). ``lightning-papers predict`` returns the same predictions.

Data contract (:class:`SourceTargetData`): ``lightning_papers.datamodules.source_target.SourceTargetDataModule``.
"""

from __future__ import annotations

import csv
import time
from dataclasses import fields
from pathlib import Path
from typing import Any, ClassVar, Literal, Protocol, runtime_checkable

import torch
from lightning.pytorch import LightningModule
from typing_extensions import override

from lightning_papers.contracts import check_datamodule
from lightning_papers.methods.drum.baselines import MultipleImputation
from lightning_papers.methods.drum.config import DRUMConfig
from lightning_papers.methods.drum.exact import kl_dual_worst_case
from lightning_papers.methods.drum.game import DRUMGame, GameData, expected_loss
from lightning_papers.methods.drum.nuisances import fit_nuisances, init_nuisances
from lightning_papers.metrics.binary_outcome import binary_report
from lightning_papers.plotting import figure_dir


@runtime_checkable
class SourceTargetData(Protocol):
    """What ``DRUMModule`` reads from its datamodule after ``setup``."""

    source_x: torch.Tensor
    source_a: torch.Tensor
    source_y: torch.Tensor
    target_x: torch.Tensor
    eval_sets: dict
    outcome: str
    target_ids: list


class DRUMModule(LightningModule):
    """Distributionally robust transfer with structurally missing covariates (DRUM, arXiv 2605.24212).

    Args:
        rho: Robustness radius (0 = multiple imputation). See ``DRUMConfig`` for every argument below.
        divergence: ``kl`` or ``transport``.
        constraint: ``projection`` (one ball per x) or ``dual`` (penalised game, dual ascent on lambda).
        conditional: ``gaussian`` or ``flow`` (zuko) model of p_S(a | x).
        bias_correction: Add the cross-fitted AIPW-type correction to the predictor's objective.
        omega: Correction weights: ``density`` (w q/p_S; ``kl`` only) or ``classifier`` (cross-fitted classifier
            between (X_T, G(X_T)) and (X_S, A_S); also for ``transport``).
        omega_every: Game steps between refits of the omega classifier.
        n_folds: Cross-fitting folds.
        hidden: MLP width.
        nuisance_steps: Adam steps per nuisance fit.
        nuisance_lr: Nuisance learning rate.
        batch_size: Rows per game step.
        n_draws: Generator draws per target row.
        k_g: Generator steps per predictor step.
        lr_f: Predictor learning rate.
        lr_g: Generator learning rate.
        lr_dual: Dual ascent step size.
        lambda_init: Initial lambda.
        warm_start_steps: Predictor steps at rho = 0 before the game.
        weight_clip: Clip of the correction's importance weights.
        seed: Seed of folds, fits and minibatches.
        robustness_rhos: KL radii of the robustness curve written at the end of a fit.
        eval_draws: Generator draws per target row in validation.
        num_threads: If set, ``torch.set_num_threads`` at setup (the networks are tiny: on a small shared CPU one
            thread avoids oversubscription); None leaves torch's setting alone.
    """

    #: Single process: the nuisances, the generator game and its dual variable are fitted on one device
    #: (a 5,000 + 5,000-row fit takes seconds); DDP would also need unused-parameter detection for the two optimisers.
    max_world_size: ClassVar[int] = 1

    def __init__(
        self,
        rho: float = 0.3,
        divergence: Literal["kl", "transport"] = "kl",
        constraint: Literal["projection", "dual"] = "projection",
        conditional: Literal["gaussian", "flow"] = "gaussian",
        bias_correction: bool = True,
        omega: Literal["density", "classifier"] = "density",
        omega_every: int = 100,
        n_folds: int = 2,
        hidden: int = 64,
        nuisance_steps: int = 400,
        nuisance_lr: float = 3e-3,
        batch_size: int = 256,
        n_draws: int = 4,
        k_g: int = 3,
        lr_f: float = 1e-3,
        lr_g: float = 0.05,
        lr_dual: float = 1.0,
        lambda_init: float = 5.0,
        warm_start_steps: int = 200,
        weight_clip: float = 20.0,
        seed: int = 0,
        robustness_rhos: list[float] | None = None,
        eval_draws: int = 16,
        num_threads: int | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.automatic_optimization = False
        kw = {f.name: self.hparams[f.name] for f in fields(DRUMConfig) if f.name in self.hparams}
        self.cfg = DRUMConfig(**kw)  # validates every value now, before any data is read
        self.rhos = sorted(robustness_rhos) if robustness_rhos is not None else [0.0, 0.1, 0.2, 0.3, 0.45, 0.6]
        if any(r < 0 for r in self.rhos):
            raise ValueError(f"robustness_rhos must be >= 0, got {self.rhos}")
        self.history: list[tuple[int, float, float, float]] = []
        self.seconds = {"nuisances": 0.0, "game": 0.0}
        self._plot: dict[str, Any] = {}

    @override
    def setup(self, stage: str) -> None:
        if self.trainer is not None and self.trainer.world_size > self.max_world_size:
            raise ValueError(f"DRUMModule fits on one process; got world_size={self.trainer.world_size}")
        if self.hparams.num_threads is not None:
            torch.set_num_threads(self.hparams.num_threads)
        if hasattr(self, "game"):
            return
        dm = self.trainer.datamodule
        check_datamodule(dm, SourceTargetData, type(self).__name__)
        dm.setup(stage)
        loss = "log" if dm.outcome == "binary" else "squared"
        self.cfg = DRUMConfig(**{**vars(self.cfg), "loss": loss})
        self.data = GameData(dm.source_x, dm.source_a, dm.source_y, dm.target_x)
        self.eval_sets, self.target_ids = dm.eval_sets, list(dm.target_ids)
        dx, da = dm.source_x.shape[1], dm.source_a.shape[1]
        nu = init_nuisances(dx, da, len(dm.source_x), len(dm.target_x), self.cfg)
        self.game = DRUMGame(nu, dx, da, self.cfg)
        self.register_buffer("fitted", torch.tensor(False))

    @override
    def on_fit_start(self) -> None:
        if not bool(self.fitted):
            t0 = time.perf_counter()
            d = self.data
            fit_nuisances(self.game.nu, d.x_s, d.a_s, d.y_s, d.x_t, self.cfg)
            self.fitted.fill_(True)
            self.seconds["nuisances"] = time.perf_counter() - t0

    @override
    def training_step(self, batch: Any, batch_idx: int) -> None:
        opt_f, opt_g = self.optimizers()
        t0 = time.perf_counter()
        stats = self.game.step(self.data, opt_f, opt_g, backward=self.manual_backward)
        self.seconds["game"] += time.perf_counter() - t0
        self.history.append((int(self.game.steps), stats["risk"], stats["lam"], stats.get("div", 0.0)))
        self.log_dict({f"train/{k}": v for k, v in stats.items()}, prog_bar=False)

    def predict_target(self, x: torch.Tensor) -> torch.Tensor:
        """E[Y | x] (continuous) or P(Y = 1 | x) (binary) from the predictor f."""
        out = self.game.predict(x)
        return torch.sigmoid(out) if self.cfg.loss == "log" else out

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """Worst-case risk at the current generator, and target metrics on every labelled evaluation set."""
        out = self.game.evaluate(self.data, self.hparams.eval_draws, seed=self.cfg.seed + 99)
        per_set = {}
        for name, (x, y) in self.eval_sets.items():
            p = self.predict_target(x)
            per_set[name] = binary_report(p, y) if self.cfg.loss == "log" else {"mse": float(((p - y) ** 2).mean())}
        if per_set:
            key = "brier" if self.cfg.loss == "log" else "mse"
            vals = [r[key] for r in per_set.values()]
            out[f"{key}_mean"], out[f"{key}_worst"] = sum(vals) / len(vals), max(vals)
            if self.cfg.loss == "log":
                for k in ("auroc", "cal_slope", "cal_intercept", "log_loss"):
                    out[f"{k}_mean"] = sum(r[k] for r in per_set.values()) / len(per_set)
        out["seconds_nuisances"], out["seconds_game"] = self.seconds["nuisances"], self.seconds["game"]
        return out

    @override
    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self.log_dict({f"val/{k}": v for k, v in self.evaluate().items()})

    @override
    def test_step(self, batch: Any, batch_idx: int) -> None:
        self.log_dict({f"test/{k}": v for k, v in self.evaluate().items()})

    @override
    def predict_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        return self.predict_target(self.data.x_t)

    @torch.no_grad()
    def robustness(self, n_draws: int = 64) -> dict[str, list[float]]:
        """Worst-case risk of f and of multiple imputation over the KL balls of radii ``robustness_rhos``."""
        g = torch.Generator().manual_seed(self.cfg.seed + 5)
        x, nu = self.data.x_t, self.game.nu
        m, s = nu.base(x)
        a = m[:, None] + s[:, None] * torch.randn(len(x), n_draws, m.shape[1], generator=g)
        mu = nu.mu(x.repeat_interleave(n_draws, 0), a.reshape(-1, m.shape[1])).view(len(x), n_draws)
        preds = {"DRUM f": self.game.predict(x), "multiple imputation": MultipleImputation(nu, seed=self.cfg.seed)(x)}
        return {k: [kl_dual_worst_case(expected_loss(p[:, None], mu, nu.sigma2, self.cfg.loss), r)[0]
                    for r in self.rhos] for k, p in preds.items()}

    @override
    def on_fit_end(self) -> None:
        if not self.trainer.is_global_zero:
            return
        figures = figure_dir(self.trainer)  # <save_dir>/figures/<run id>, or <root>/figures without W&B
        if figures.name == "figures":
            out = figures.parent / "predictions"
        else:
            out = figures.parents[1] / "predictions" / figures.name
        out.mkdir(parents=True, exist_ok=True)
        pred = self.predict_target(self.data.x_t).detach().cpu()
        with (out / "target_predictions.csv").open("w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["id", "prediction", "rho"])
            w.writerows([i, f"{float(p):.6g}", self.cfg.rho] for i, p in zip(self.target_ids, pred))
        curves = self.robustness()
        with (out / "robustness.csv").open("w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["rho", *curves])
            w.writerows([r, *(f"{c[i]:.6g}" for c in curves.values())] for i, r in enumerate(self.rhos))
        self._plot["robustness"] = curves
        self.predictions_dir = Path(out)

    def make_figures(self, stage: str) -> dict[str, Any]:
        """Training curves, the generator's A | X vs the source's, the robustness curve, target calibration."""
        from lightning_papers.methods.drum import plots

        if not hasattr(self, "game"):
            return {}
        tag = "val" if stage == "validate" else stage
        figs = {f"{tag}/game": plots.training_curves(self.history, self.cfg.rho)}
        with torch.no_grad():
            x, g = self.data.x_t[:1000], torch.Generator().manual_seed(0)
            a, div = self.game.gen.sample(x, torch.randn(len(x), 1, self.data.a_s.shape[1], generator=g), self.game.nu)
            figs[f"{tag}/generator"] = plots.generator_vs_source(
                self.data.x_s[:1000, 0], self.data.a_s[:1000, 0], x[:, 0], a[:, 0, 0], float(div))
            if self.cfg.loss == "log" and "target" in self.eval_sets:
                xe, ye = self.eval_sets["target"]
                p = self.predict_target(xe)
                figs[f"{tag}/calibration"] = plots.calibration(p, ye, float(((p - ye) ** 2).mean()))
        figs[f"{tag}/robustness"] = plots.robustness_curve(self.rhos, self.robustness(), self.cfg.rho)
        return figs

    @override
    def configure_optimizers(self) -> list[torch.optim.Optimizer]:
        return list(self.game.optimizers())

    @override
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["drum_history"] = list(self.history)
        checkpoint["drum_seconds"] = dict(self.seconds)

    @override
    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.history = [tuple(h) for h in checkpoint.get("drum_history", [])]
        self.seconds = dict(checkpoint.get("drum_seconds", self.seconds))
