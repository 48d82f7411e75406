"""chi^2-DRO baseline against a direct solve of its primal; the classifier omega against a closed-form ratio."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.optimize import minimize, minimize_scalar

from lightning_papers.methods.drum.baselines import build_baseline, chi2_dual
from lightning_papers.methods.drum.config import DRUMConfig
from lightning_papers.methods.drum.game import DRUMGame, GameData
from lightning_papers.methods.drum.nuisances import CrossFitted, fit_nuisances, fold_ids, init_nuisances, mlp
from lightning_papers.methods.drum.omega import fit_ratio_classifier


def primal_chi2(ell: np.ndarray, rho: float) -> float:
    """max_q q.ell over the simplex with (1/2) n sum (q_i - 1/n)^2 <= rho (chi2(Q||P_n) <= rho), by SLSQP."""
    n = len(ell)
    cons = [{"type": "eq", "fun": lambda q: q.sum() - 1.0},
            {"type": "ineq", "fun": lambda q: rho - 0.5 * n * ((q - 1.0 / n) ** 2).sum()}]
    res = minimize(lambda q: -q @ ell, np.full(n, 1.0 / n), jac=lambda q: -ell, bounds=[(0.0, 1.0)] * n,
                   constraints=cons, method="SLSQP", options={"ftol": 1e-12, "maxiter": 500})
    assert res.success, res.message
    return float(ell @ res.x)


@pytest.mark.parametrize("rho", [0.05, 0.5, 3.0])  # 3.0: the q >= 0 bound is active (several q_i = 0)
def test_chi2_dual_equals_primal_on_a_discrete_sample(rho: float) -> None:
    ell = np.random.default_rng(1).exponential(1.0, 9)
    t = torch.tensor(ell, dtype=torch.float64)
    dual = minimize_scalar(lambda e: float(chi2_dual(t, torch.tensor(e, dtype=torch.float64), rho)),
                           bounds=(float(ell.min()) - 20, float(ell.max())), method="bounded",
                           options={"xatol": 1e-10})
    assert dual.fun == pytest.approx(primal_chi2(ell, rho), rel=1e-5)
    assert ell.mean() < dual.fun <= ell.max() + 1e-9


def test_chi2_baseline_lowers_its_robust_objective_below_erm() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2000, 2, generator=g)
    y = 5.0 * (torch.rand(2000, generator=g) < 0.1).float()  # a 10 % minority that ERM's mean 0.5 under-serves
    cfg = DRUMConfig(hidden=16, batch_size=256)
    rho = 1.0

    def robust(f: torch.nn.Module) -> float:
        with torch.no_grad():
            ell = (f(x) - y) ** 2
        return minimize_scalar(lambda e: float(chi2_dual(ell, torch.tensor(e), rho)), bounds=(-50, float(ell.max())),
                               method="bounded").fun

    erm = build_baseline("erm", None, x, y, cfg, steps=400)
    dro = build_baseline("chi2", None, x, y, cfg, steps=400, chi2_rho=rho)
    assert robust(dro) < 0.9 * robust(erm)
    with torch.no_grad():
        assert float(((erm(x) - y) ** 2).mean()) < float(((dro(x) - y) ** 2).mean())
        assert float(dro(x).mean()) > float(erm(x).mean()) + 0.3  # moved towards the minority
    with pytest.raises(ValueError, match="chi2_rho"):
        build_baseline("chi2", None, x, y, cfg, steps=1, chi2_rho=-0.1)


def test_classifier_ratio_matches_gaussian_closed_form() -> None:
    """den N(0, I), num N(m, I) in R^2: log p_num/p_den = m.z - |m|^2/2; out-of-fold estimate on the den rows."""
    g = torch.Generator().manual_seed(0)
    m = torch.tensor([0.6, -0.3])
    z_den, z_num = torch.randn(4000, 2, generator=g), m + torch.randn(3000, 2, generator=g)
    cfg = DRUMConfig(hidden=32, nuisance_steps=600, batch_size=256)
    torch.manual_seed(0)
    clf = CrossFitted([mlp(2, 1, 32) for _ in range(2)], fold_ids(4000, 2, g))
    fit_ratio_classifier(clf, z_den, z_num, fold_ids(3000, 2, g), cfg, g)
    est = clf.oof(torch.arange(4000), lambda mod, rows: mod(z_den[rows]).squeeze(-1))
    true = z_den @ m - 0.5 * float(m @ m)
    bulk = z_den.norm(dim=1) < 2.0  # 86 % of the mass; the tails have few points of either class
    assert float((est - true)[bulk].abs().mean()) < 0.12
    assert float((est.exp() - true.exp())[bulk].abs().mean()) < 0.15  # omega itself, mean ratio 1
    assert float(torch.corrcoef(torch.stack([est, true]))[0, 1]) > 0.95


def test_transport_game_with_classifier_omega_corrects_and_refits_identically_from_a_state_dict() -> None:
    with pytest.raises(ValueError, match="omega: classifier"):
        DRUMConfig(divergence="transport", bias_correction=True)
    g = torch.Generator().manual_seed(3)
    x_s, x_t = torch.randn(600, 2, generator=g), 0.5 + torch.randn(500, 2, generator=g)
    a_s = x_s[:, :1] + torch.randn(600, 1, generator=g)
    y_s = x_s[:, 0] + a_s[:, 0] + 0.5 * a_s[:, 0] ** 2 + 0.3 * torch.randn(600, generator=g)
    data = GameData(x_s, a_s, y_s, x_t)
    cfg = DRUMConfig(divergence="transport", omega="classifier", omega_every=4, rho=0.3, hidden=16,
                     nuisance_steps=60, warm_start_steps=2, batch_size=128)
    nu = fit_nuisances(init_nuisances(2, 1, 600, 500, cfg), x_s, a_s, y_s, x_t, cfg)
    full = DRUMGame(nu, 2, 1, cfg).fit(data, 10)
    assert int(full.omega.fitted_at) == 8 and torch.isfinite(torch.tensor(full.evaluate(data)["correction"]))
    part = DRUMGame(nu, 2, 1, cfg).fit(data, 6)
    resumed = DRUMGame(nu, 2, 1, cfg)
    resumed.load_state_dict(part.state_dict())
    assert int(resumed.omega.fitted_at) == 4  # the refit step travels with the state
    resumed.omega.refit(resumed.gen, nu, x_s, a_s, x_t, 6)
    part.omega.refit(part.gen, nu, x_s, a_s, x_t, 6)
    for p, q in zip(part.omega.parameters(), resumed.omega.parameters()):
        assert torch.equal(p, q)


def test_module_fits_transport_with_classifier_omega(tmp_path) -> None:  # noqa: ANN001
    from lightning.pytorch import Trainer

    from lightning_papers.datamodules.source_target import SourceTargetDataModule
    from lightning_papers.methods.drum.module import DRUMModule

    model = DRUMModule(rho=0.3, divergence="transport", bias_correction=True, omega="classifier", omega_every=5,
                       nuisance_steps=20, hidden=16, batch_size=64, warm_start_steps=3, k_g=1,
                       robustness_rhos=[0.0, 0.3])
    Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False, enable_model_summary=False,
            enable_checkpointing=False, default_root_dir=str(tmp_path), max_epochs=1).fit(
        model, datamodule=SourceTargetDataModule(n_source=300, n_target=200, n_eval=100, steps_per_epoch=10))
    assert int(model.game.omega.fitted_at) == 5  # refitted at game steps 0 and 5 of the 10
    assert (model.predictions_dir / "target_predictions.csv").exists()
    assert "omega.clf.models.0.0.weight" in {k.removeprefix("game.") for k in model.state_dict()}
