"""The Lightning shell: the CLI runs the debug config and leaves its figures and metric, a run resumed
mid-horizon equals an uninterrupted one, and the plain-Python loop of the docs runs."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import ModelCheckpoint

from lightning_papers.cli import cli_main
from lightning_papers.datamodules.auctions import AuctionDataModule
from lightning_papers.methods.shilled_auctions.module import ShilledAuctionModule

ROOT = Path(__file__).resolve().parents[3]


def test_cli_fit_debug_config(tmp_path: Path) -> None:
    cli = cli_main(
        [
            "fit", "--config", str(ROOT / "configs/shilled_auctions/debug.yaml"),
            "--trainer.logger=false", "--trainer.enable_progress_bar=false",
            f"--trainer.default_root_dir={tmp_path}",
            "--data.init_args.replicas=200", "--data.init_args.horizon=6000", "--data.init_args.block=500",
            "--model.init_args.race_first_check=512",
        ]
    )  # fmt: skip
    metrics = cli.trainer.callback_metrics
    module = cli.model
    assert cli.trainer.global_step == 12 and module.env.t == 6000
    assert float(metrics["train/regret"]) == pytest.approx(float(module.env.regret.mean()))
    assert 0.2 < float(metrics["train/regret_slope"]) < 1.0  # sublinear, not flat
    assert float(metrics["train/best_bid"]) == pytest.approx(0.464, abs=0.005)
    for key in ("regret", "bids", "trust"):
        assert list((tmp_path / "figures").glob(f"train_{key}_step*.png")), key


def _fit(tmp_path: Path, **trainer_kwargs) -> tuple[ShilledAuctionModule, AuctionDataModule, Trainer]:
    module = ShilledAuctionModule(learner="racing", anytime=True, race_first_check=256, first_horizon=512)
    dm = AuctionDataModule(replicas=64, horizon=3000, block=400, shill="low_shill", rho=0.3, seed=3)
    trainer = Trainer(logger=False, default_root_dir=tmp_path, enable_progress_bar=False, enable_model_summary=False,
                      max_epochs=1, **trainer_kwargs)  # fmt: skip
    return module, dm, trainer


def test_resume_mid_horizon_equals_an_uninterrupted_run(tmp_path: Path) -> None:
    module, dm, trainer = _fit(tmp_path / "full", enable_checkpointing=False)
    trainer.fit(module, dm)
    full = module.auction_state()

    ckpt_dir = tmp_path / "ckpt"
    every_3 = ModelCheckpoint(dirpath=ckpt_dir, every_n_train_steps=3, save_top_k=-1)
    first, dm1, trainer1 = _fit(tmp_path / "a", max_steps=3, callbacks=[every_3])
    trainer1.fit(first, dm1)
    assert first.env.t == 1200
    (ckpt,) = ckpt_dir.glob("*.ckpt")
    resumed, dm2, trainer2 = _fit(tmp_path / "b", enable_checkpointing=False)
    trainer2.fit(resumed, dm2, ckpt_path=str(ckpt))
    state = resumed.auction_state()
    assert resumed.env.t == 3000 and trainer2.global_step == trainer.global_step == 8
    assert torch.equal(state["env"]["regret"], full["env"]["regret"])
    assert state["curve"] == full["curve"] and state["trust"] == full["trust"]


@pytest.mark.parametrize("learner", ["transparent", "exp3", "naive"])
def test_baselines_run_in_the_module(learner: str, tmp_path: Path) -> None:
    module = ShilledAuctionModule(learner=learner)
    dm = AuctionDataModule(replicas=8, horizon=600, block=300, shill="none")
    trainer = Trainer(logger=False, default_root_dir=tmp_path, enable_progress_bar=False, enable_model_summary=False,
                      enable_checkpointing=False, max_epochs=1)  # fmt: skip
    trainer.fit(module, dm)
    assert module.env.t == 600 and torch.isfinite(module.env.regret).all()
    assert module.hist_all.sum() == 600 * 8


def test_module_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="unknown learner 'magic'"):
        ShilledAuctionModule(learner="magic")
    with pytest.raises(ValueError, match="band must be in"):
        ShilledAuctionModule(band=0.7)


def test_the_plain_python_loop_in_the_docs_runs(capsys: pytest.CaptureFixture) -> None:
    doc = (ROOT / "docs/shilled_auctions.md").read_text()
    blocks = [b for b in re.findall(r"```python\n(.*?)```", doc, flags=re.S) if "learner.update(" in b]
    assert blocks, "docs/shilled_auctions.md shows the learner in a plain Python loop"
    exec(compile(blocks[0], "docs/shilled_auctions.md", "exec"), {"__name__": "doc_example"})  # noqa: S102
    out = capsys.readouterr().out
    assert "regret" in out
