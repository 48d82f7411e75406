"""Cross-fitting: a source row is only ever evaluated by a model that did not see it; the fits recover the truth."""

from __future__ import annotations

import torch

from lightning_papers.datamodules.source_target import SourceTargetDataModule
from lightning_papers.methods.drum import nuisances
from lightning_papers.methods.drum.config import DRUMConfig


def test_cross_fitting_never_evaluates_a_model_on_its_training_rows(monkeypatch) -> None:
    dm = SourceTargetDataModule(n_source=300, n_target=200, n_eval=10)
    dm.setup()
    cfg = DRUMConfig(n_folds=3, nuisance_steps=2, hidden=8)
    trained: dict[int, set[int]] = {}
    original = nuisances.train

    def recording(model, loss_fn, rows, cfg, g):  # noqa: ANN001, ANN202
        trained[id(model)] = set(rows.tolist())
        return original(model, loss_fn, rows, cfg, g)

    monkeypatch.setattr(nuisances, "train", recording)
    nu = nuisances.init_nuisances(5, 1, 300, 200, cfg)
    nuisances.fit_nuisances(nu, dm.source_x, dm.source_a, dm.source_y, dm.target_x, cfg)
    for cf in (nu.mu_models, nu.gauss, nu.clf):
        seen: dict[int, list[int]] = {}
        idx = torch.randperm(300)[:200]

        def record(m: torch.nn.Module, rows: torch.Tensor, seen: dict = seen, idx: torch.Tensor = idx) -> torch.Tensor:
            seen.setdefault(id(m), []).extend(idx[rows].tolist())
            return torch.zeros(len(rows))

        cf.oof(idx, record)
        assert sum(len(v) for v in seen.values()) == 200  # every requested row evaluated exactly once
        for model_id, rows in seen.items():
            assert not trained[model_id] & set(rows), "a nuisance was evaluated on its own training fold"
            assert len(trained[model_id]) > 0


def test_fitted_nuisances_approach_the_truth() -> None:
    dm = SourceTargetDataModule(n_source=3000, n_target=3000, n_eval=10)
    dm.setup()
    cfg = DRUMConfig(nuisance_steps=400)
    nu = nuisances.fit_nuisances(nuisances.init_nuisances(5, 1, 3000, 3000, cfg), dm.source_x, dm.source_a,
                                 dm.source_y, dm.target_x, cfg)
    x, a = dm.target_x, torch.randn(3000, 1)
    mu_true = dm.true_mu(x, a)
    assert float(((nu.mu(x, a) - mu_true) ** 2).mean()) < 0.1 * float(mu_true.var())
    m, s = nu.base(x)
    m0, s0 = dm.true_source_a(x)
    assert float(((m - m0) ** 2).mean()) < 0.05 and float((s / s0 - 1).abs().mean()) < 0.1
    w, w0 = nu.ratio(dm.source_x, torch.arange(3000)), dm.true_density_ratio(dm.source_x)
    assert float((w.log() - w0.log()).abs().mean()) < 0.2
    assert abs(float(nu.sigma2) - dm.noise_var) < 0.15
