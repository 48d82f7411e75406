"""The unknown-value variant: v_t ~ F_v i.i.d., shown only after a win. The environment never shows v_t after a
loss, the pseudo-regret is the closed form of E[v], the learners converge on estimates from won rounds only, and
the datamodule/module/CLI run it and resume exactly."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import ModelCheckpoint

from lightning_papers.cli import cli_main
from lightning_papers.datamodules.auction_distributions import Uniform, beta
from lightning_papers.datamodules.auctions import AuctionDataModule
from lightning_papers.methods.shilled_auctions.base import play
from lightning_papers.methods.shilled_auctions.environment import ShilledAuctionEnv, best_bid
from lightning_papers.methods.shilled_auctions.learners import build_learner
from lightning_papers.methods.shilled_auctions.module import ShilledAuctionModule

ROOT = Path(__file__).resolve().parents[3]


def _env(replicas: int = 64, seed: int = 0, **kwargs) -> ShilledAuctionEnv:
    return ShilledAuctionEnv(beta(2, 4), Uniform(0, 1), replicas=replicas, seed=seed, values=Uniform(0.5, 1.0),
                             value_revealed="on_win", **kwargs)  # fmt: skip


def test_a_loss_never_shows_the_value() -> None:
    env_a, env_b = _env(), _env()
    m, s = env_a.draw(50)
    v = env_a.draw_values(50)
    assert 0.5 <= float(v.min()) and float(v.max()) <= 1.0
    bids = torch.full((50, 64), 0.4, dtype=torch.float64)
    won_a, rep_a, shown_a = env_a.step_with_values(bids, m, s, v)
    v_other = torch.where(bids >= m, v, 1.0 - 0.3 * v)  # change every value of a round the learner lost
    won_b, rep_b, shown_b = env_b.step_with_values(bids, m, s, v_other)
    assert won_a.any() and (~won_a).any()
    assert torch.equal(torch.isnan(shown_a), ~won_a) and torch.equal(shown_a[won_a], v[won_a])
    for a, b in ((won_a, won_b), (rep_a, rep_b), (shown_a, shown_b)):  # identical feedback: nothing about v leaks
        assert torch.equal(torch.nan_to_num(a.double(), nan=-1.0), torch.nan_to_num(b.double(), nan=-1.0))
    # the values drawn by the environment itself are those of the datamodule's stream, and always-revealed shows all
    env_c = ShilledAuctionEnv(beta(2, 4), Uniform(0, 1), replicas=64, values=Uniform(0.5, 1.0))
    _, _, shown_c = env_c.step_with_values(bids)
    assert not env_c.value_known and torch.equal(shown_c, v)


def test_pseudo_regret_closed_form_with_random_values() -> None:
    """m ~ U[0, 1], v_t ~ U[0.5, 1]: U(b) = (0.75 − b)·b, b* = 0.375, U* = 0.140625, whatever the v_t drawn."""
    env = ShilledAuctionEnv(Uniform(0, 1), Uniform(0, 1), replicas=2, values=Uniform(0.5, 1.0), value_revealed="on_win")
    assert env.mean_value == 0.75 and not env.value_known
    assert env.best_bid == pytest.approx(0.375, abs=1e-9) and env.best_utility == pytest.approx(0.140625, abs=1e-15)
    for _ in range(3):
        env.step_with_values(torch.tensor([0.2, 0.7], dtype=torch.float64))
    expected = torch.tensor([3 * (0.140625 - 0.55 * 0.2), 3 * (0.140625 - 0.05 * 0.7)], dtype=torch.float64)
    torch.testing.assert_close(env.regret, expected)


@pytest.mark.parametrize("name", ["robust", "racing"])
def test_learner_converges_on_values_seen_after_wins_only(name: str) -> None:
    R, checkpoints = 64, (2000, 16000)
    env = _env(R, seed=7)
    learner = build_learner(name, R, 1.0, checkpoints[-1], shill=Uniform(0, 1), value_known=False)
    regret = []
    for t in checkpoints:
        play(learner, env, t - env.t)
        regret.append(float(env.regret.mean()))
    slope = torch.log(torch.tensor(regret[1] / regret[0])) / torch.log(torch.tensor(checkpoints[1] / checkpoints[0]))
    assert float(slope) < 0.85, (regret, float(slope))  # sublinear (linear regret has slope 1)
    assert regret[1] / checkpoints[1] < 0.7 * regret[0] / checkpoints[0]  # per-round regret falls
    robust = learner if name == "robust" else learner.branches[0]
    v_hat = robust.value_estimate()
    assert float((v_hat - 0.75).abs().max()) < 0.02 and float(robust.value_count.min()) > 1000  # from wins only
    assert bool((robust.value_count <= env.t).all())
    best = int(torch.argmax(env.utility(robust.grid)))
    assert bool(((robust.lo <= best) & (best <= robust.hi)).all())


def test_on_win_needs_a_learner_that_does_not_know_v_and_bad_input_names_the_value() -> None:
    env = _env(4)
    with pytest.raises(ValueError, match="value_known=False"):
        play(build_learner("robust", 4, 1.0, 100), env, 10)
    with pytest.raises(ValueError, match="values="):
        build_learner("robust", 4, 1.0, 100, value_known=False).update(
            torch.zeros(4), torch.zeros(4, dtype=torch.bool), torch.zeros(4)
        )
    with pytest.raises(ValueError, match=r"Uniform\(0.5, 2.0\).*\[0, v=1.0\]"):
        ShilledAuctionEnv(beta(2, 4), Uniform(0, 1), values=Uniform(0.5, 2.0))
    with pytest.raises(ValueError, match="'sometimes'"):
        ShilledAuctionEnv(beta(2, 4), Uniform(0, 1), value_revealed="sometimes")
    with pytest.raises(ValueError, match="'sometimes'"):
        AuctionDataModule(value_revealed="sometimes")
    with pytest.raises(ValueError, match="'lognormal'"):
        AuctionDataModule(value_distribution="lognormal")
    with pytest.raises(ValueError, match="value_low must be in \\[0, value=1.0\\).*1.5"):
        AuctionDataModule(value_distribution="uniform", value_low=1.5)


def test_every_learner_runs_with_an_unknown_value() -> None:
    env = _env(8)
    for name in ("robust", "optimistic", "racing", "naive", "exp3", "oracle"):
        env = _env(8)
        learner = build_learner(name, 8, 1.0, 300, shill=Uniform(0, 1), best_bid=env.best_bid, value_known=False)
        play(learner, env, 300)
        assert env.t == 300 and bool(torch.isfinite(env.regret).all()), name
    for name in ("transparent", "robust"):  # anytime and transparent (m shown on every round)
        env = _env(8, transparent=name == "transparent")
        learner = build_learner(name, 8, 1.0, None if name == "robust" else 300, value_known=False)
        play(learner, env, 3000 if name == "robust" else 300)
        assert bool(torch.isfinite(env.regret).all())


def test_cli_config_and_exact_resume_on_win(tmp_path: Path) -> None:
    cli = cli_main(
        [
            "fit", "--config", str(ROOT / "configs/shilled_auctions/value_on_win.yaml"),
            "--trainer.logger=false", "--trainer.enable_progress_bar=false", f"--trainer.default_root_dir={tmp_path}",
            "--data.init_args.replicas=64", "--data.init_args.horizon=2000", "--data.init_args.block=500",
        ]
    )  # fmt: skip
    assert cli.model.env.t == 2000 and not cli.model.env.value_known
    assert float(cli.trainer.callback_metrics["train/best_bid"]) == pytest.approx(best_bid(beta(2, 4), 0.75)[0])

    def fit(root: Path, **kwargs) -> tuple[ShilledAuctionModule, Trainer, AuctionDataModule]:
        module = ShilledAuctionModule(learner="racing", race_first_check=256)
        dm = AuctionDataModule(replicas=32, horizon=2400, block=400, seed=3, value_distribution="uniform",
                               value_low=0.5, value_revealed="on_win")  # fmt: skip
        trainer = Trainer(logger=False, default_root_dir=root, enable_progress_bar=False, enable_model_summary=False,
                          max_epochs=1, **kwargs)  # fmt: skip
        return module, trainer, dm

    full, trainer, dm = fit(tmp_path / "full", enable_checkpointing=False)
    trainer.fit(full, dm)
    ckpt_dir = tmp_path / "ckpt"
    first, trainer1, dm1 = fit(
        tmp_path / "a", max_steps=3, callbacks=[ModelCheckpoint(dirpath=ckpt_dir, every_n_train_steps=3, save_top_k=-1)]
    )
    trainer1.fit(first, dm1)
    (ckpt,) = ckpt_dir.glob("*.ckpt")
    resumed, trainer2, dm2 = fit(tmp_path / "b", enable_checkpointing=False)
    trainer2.fit(resumed, dm2, ckpt_path=str(ckpt))
    a, b = resumed.auction_state(), full.auction_state()
    assert resumed.env.t == 2400 and torch.equal(a["env"]["regret"], b["env"]["regret"])
    torch.testing.assert_close(a["learner"], b["learner"], rtol=0, atol=0)
