"""SF2MModule end to end: Gauss -> Gauss reaches the target moments, the CLI trains and writes figures, a
checkpoint keeps the plan, a datamodule without the clouds fails before training, the torchmetrics scores equal
the functional ones, and under 2-process DDP every rank samples from rank 0's anchor plan."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
import yaml
from lightning.pytorch import Callback, LightningDataModule, LightningModule, Trainer

from lightning_papers.cli import cli_main
from lightning_papers.datamodules.point_clouds import GaussianPairDataModule, PointCloudPairDataModule
from lightning_papers.datamodules.step_clock import StepClock
from lightning_papers.methods.qdsb.coupling import QuantizedCoupling
from lightning_papers.methods.qdsb.module import SF2MModule
from lightning_papers.metrics.distributions import energy_distance, gaussian_kl, mmd_rbf, wasserstein
from tests.helpers.ddp import ddp_cpu_kwargs

ROOT = Path(__file__).resolve().parents[3]
QUIET: dict[str, Any] = {
    "logger": False,
    "enable_checkpointing": False,
    "enable_progress_bar": False,
    "enable_model_summary": False,
    "accelerator": "cpu",
}


def test_sf2m_moves_gaussian_moments_to_the_target() -> None:
    dm = GaussianPairDataModule(dim=2, shift=3.0, n_train=4096, n_val=2048, steps_per_epoch=100, seed=0)
    model = SF2MModule(sigma=0.5, coupling="qdsb", n_anchors=64, lr=3e-3, refresh_every=0, num_threads=1)
    Trainer(max_epochs=8, limit_val_batches=0, **QUIET).fit(model, dm)
    torch.manual_seed(1)
    gen = model.generate(dm.val_source).double()
    mean, cov = gen.mean(0), torch.cov(gen.T)
    # tolerances: 800 steps of SGD leave ~0.1 mean and ~0.2 covariance error; the source is 3.0 away in mean
    assert float((mean - dm.m1).norm()) < 0.3
    assert float((cov - dm.cov1).abs().max()) < 0.4
    assert gaussian_kl(mean, cov, dm.m1, dm.cov1) < 0.1
    src = dm.val_source.double()
    assert gaussian_kl(src.mean(0), torch.cov(src.T), dm.m1, dm.cov1) > 2.0
    metrics = model.evaluate("val")  # KL to the closed-form SB marginals mid-way and at the end
    assert metrics["kl_t0.5"] < 0.1 and metrics["kl_t1"] < 0.1


def test_cli_fit_writes_metrics_and_figures(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)
    cfg = yaml.safe_load((ROOT / "configs/qdsb/debug.yaml").read_text())
    cfg["trainer"].update(max_epochs=2, check_val_every_n_epoch=1, default_root_dir=str(tmp_path))
    cfg["trainer"]["logger"]["init_args"]["save_dir"] = str(tmp_path)
    figures = next(c for c in cfg["trainer"]["callbacks"] if c["class_path"].endswith("FigureLogger"))
    figures["init_args"]["every_n_epochs"] = 1
    cfg["model"]["init_args"].update(n_anchors=32, n_eval=256, n_sample_steps=20)
    cfg["data"]["init_args"].update(n_train=2048, n_val=256, steps_per_epoch=5)
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    cli = cli_main(["fit", "--config", str(path)])
    m = cli.trainer.callback_metrics
    for key in ("val/w1", "val/mmd", "val/energy", "coupling/expected_cost", "train/loss"):
        assert key in m and torch.isfinite(m[key]), key
    assert cli.trainer.global_step == 10
    assert list(tmp_path.rglob("val_samples_step*.png")), "no sample figure written"


def test_checkpoint_keeps_the_anchor_plan(tmp_path: Path) -> None:
    dm = PointCloudPairDataModule("8gaussians", "moons", n_train=1024, n_val=128, steps_per_epoch=3)
    model = SF2MModule(n_anchors=16, refresh_every=0, n_eval=128, n_sample_steps=5, seed=4)
    trainer = Trainer(max_epochs=1, limit_val_batches=0, **{**QUIET, "enable_checkpointing": True},
                      default_root_dir=tmp_path)
    trainer.fit(model, dm)
    ckpt = tmp_path / "last.ckpt"
    trainer.save_checkpoint(ckpt)
    resumed = SF2MModule(n_anchors=16, refresh_every=0, n_eval=128, n_sample_steps=5, seed=123)
    Trainer(max_epochs=2, limit_val_batches=0, **QUIET).fit(resumed, dm, ckpt_path=ckpt)
    assert torch.equal(resumed.coupling.plan, model.coupling.plan)
    assert torch.equal(resumed.coupling.cells0, model.coupling.cells0)


class _TrainCloudsOnly(LightningDataModule):
    """Has the training clouds and a loader but no held-out clouds."""

    def __init__(self) -> None:
        super().__init__()
        self.train_source, self.train_target = torch.randn(64, 2), torch.randn(64, 2)

    def train_dataloader(self) -> StepClock:
        return StepClock.of(2)


def test_a_datamodule_without_the_clouds_fails_before_training() -> None:
    model = SF2MModule(n_anchors=4, dim=2)
    with pytest.raises(TypeError, match="needs a datamodule that satisfies PointCloudPairs; _TrainCloudsOnly lacks "
                                        "val_source, val_target"):  # fmt: skip
        Trainer(max_steps=1, **QUIET).fit(model, _TrainCloudsOnly())
    with pytest.raises(TypeError, match="got dataloaders only"):
        Trainer(max_steps=1, **QUIET).fit(model, train_dataloaders=StepClock.of(2))
    assert not model.coupling.fitted  # nothing ran


def test_validation_scores_are_the_functional_distances_and_the_figure_says_what_it_shows() -> None:
    dm = GaussianPairDataModule(dim=3, n_train=512, n_val=128, steps_per_epoch=2, seed=1)
    model = SF2MModule(sigma=0.5, n_anchors=8, n_restarts=1, batch_size=64, n_eval=96, n_sample_steps=5)
    trainer = Trainer(max_epochs=1, **QUIET)
    trainer.fit(model, dm)
    m, e = trainer.callback_metrics, model.last_eval
    gen, target = e["generated"], e["target"]
    assert gen.shape == target.shape == (96, 3)
    assert float(m["val/w1"]) == pytest.approx(wasserstein(gen, target, 1), rel=1e-5)
    assert float(m["val/w2"]) == pytest.approx(wasserstein(gen, target, 2), rel=1e-5)
    assert float(m["val/mmd"]) == pytest.approx(mmd_rbf(gen, target), rel=1e-5)
    assert float(m["val/energy"]) == pytest.approx(energy_distance(gen, target), rel=1e-5, abs=1e-7)
    g = gen.double()
    assert float(m["val/kl_t1"]) == pytest.approx(gaussian_kl(g.mean(0), torch.cov(g.T), *dm.sb_marginal(1.0, 0.5)),
                                                   rel=1e-5)  # fmt: skip
    assert model.evaluate("val") == pytest.approx(e["scores"])  # the validation sampler is seeded: repeatable
    fig = model.make_figures("validate")["val/samples"]
    ax = fig.axes[0]
    assert ax.get_xlabel() == "coordinate 1 of 3" and ax.get_ylabel() == "coordinate 2 of 3"
    assert f"W1 {e['scores']['w1']:.3f}" in ax.get_title() and "coordinates 1 and 2 of d = 3" in ax.get_title()
    labels = ax.get_legend_handles_labels()[1]
    assert labels == ["target (held out)", "source", "trajectories", "generated"]


class RankSeededCoupling(QuantizedCoupling):
    """Anchors depend on the rank that fits them: only a broadcast can make every rank's plan the same."""

    def fit(self, x0: torch.Tensor, x1: torch.Tensor) -> QuantizedCoupling:
        self.seed += 1000 * (dist.get_rank() if dist.is_initialized() else 0)
        return super().fit(x0, x1)


class _DumpCoupling(Callback):
    def __init__(self, out: Path) -> None:
        self.out = out

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int) -> None:
        if batch_idx == 0 and trainer.current_epoch == 0:
            c = pl_module.coupling
            state = {**c.state_dict(), "draw": c.sample(64)[0].cpu()}
            torch.save(state, self.out / f"rank{trainer.global_rank}.pt")

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        e = pl_module.last_eval  # this rank's share of the held-out points, and the scores of all of them
        shard = {"generated": e["generated"], "target": e["target"], "w1": e["scores"]["w1"]}
        torch.save(shard, self.out / f"val_rank{trainer.global_rank}.pt")


@pytest.mark.ddp
def test_ddp_ranks_share_rank0_anchor_plan(tmp_path: Path) -> None:
    dm = PointCloudPairDataModule("8gaussians", "moons", n_train=1024, n_val=128, steps_per_epoch=2)
    model = SF2MModule(n_anchors=16, n_restarts=1, refresh_every=0, n_eval=64, n_sample_steps=5, num_threads=1)
    model.coupling = RankSeededCoupling(n_anchors=16, n_restarts=1, seed=0)
    trainer = Trainer(max_epochs=1, num_sanity_val_steps=0, callbacks=[_DumpCoupling(tmp_path)], **ddp_cpu_kwargs())
    trainer.fit(model, dm)
    r0, r1 = torch.load(tmp_path / "rank0.pt"), torch.load(tmp_path / "rank1.pt")
    for key in ("plan", "cells0", "cells1"):
        assert torch.equal(r0[key], r1[key]), key
    assert not torch.equal(r0["draw"], r1["draw"])  # same plan, independent pair streams per rank
    # rank 1 fitting on its own would have produced a different plan
    dm.setup("fit")  # the workers set up their own copies
    x0, x1 = dm.train_source, dm.train_target
    own = QuantizedCoupling(n_anchors=16, n_restarts=1, seed=1000).fit(x0, x1)
    assert not torch.equal(own.cells0, r1["cells0"])
    # validation: each rank sampled half of the 64 held-out points; the torchmetrics state gathered both halves
    v0, v1 = torch.load(tmp_path / "val_rank0.pt"), torch.load(tmp_path / "val_rank1.pt")
    assert len(v0["generated"]) == len(v1["generated"]) == 32
    w1_all = wasserstein(torch.cat([v0["generated"], v1["generated"]]), torch.cat([v0["target"], v1["target"]]), 1)
    assert v0["w1"] == v1["w1"] == pytest.approx(w1_all, rel=1e-9)
    assert float(trainer.callback_metrics["val/w1"]) == pytest.approx(w1_all, rel=1e-5)
