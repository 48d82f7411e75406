"""PairsNPE is a thin shell: a Lightning fit takes exactly the steps of the plain-torch loops (both stage-2
optimizers); a run stopped at any optimizer step (mid-epoch, in stage 1 or in stage 2) and resumed from its
checkpoint ends with the same weights and metrics as an uninterrupted run; under DDP (2 CPU processes) the ranks
draw different stage-1 sets and end with identical weights, the same bank and the same (synced) metrics."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from lightning.pytorch import Callback, LightningModule, Trainer, seed_everything

from lightning_papers.datamodules.set_simulators import GaussianSharedLocation
from lightning_papers.datamodules.simulated_sets import SimulatedSetsDataModule, SimulatedSetStream
from lightning_papers.methods.pairs.bank import pre_aggregate
from lightning_papers.methods.pairs.encoder import DeepSetEncoder
from lightning_papers.methods.pairs.heads import build_head
from lightning_papers.methods.pairs.module import PairsNPE
from lightning_papers.methods.pairs.training import train_head, train_npe
from tests.helpers.ddp import ddp_cpu_kwargs

BATCHES, STAGE1_EPOCHS, MAX_EPOCHS = 5, 2, 4  # 10 stage-1 steps, then 10 stage-2 steps


def make(optimizer: str) -> tuple[PairsNPE, SimulatedSetsDataModule]:
    seed_everything(0, verbose=False)
    model = PairsNPE(theta_dim=1, x_dim=1, stage1_epochs=STAGE1_EPOCHS, stage2_optimizer=optimizer,
                     stage2_lr=3e-3, stage2_batch_size=64, grid_points=200, seed=5)  # fmt: skip
    dm = SimulatedSetsDataModule(GaussianSharedLocation(), batch_size=32, batches_per_epoch=BATCHES,
                                 stage2_set_sizes=[10, 100], stage2_num_sets=200, val_set_sizes=[2, 100],
                                 val_num_sets=16, seed=3)  # fmt: skip
    return model, dm


def trainer(**kwargs: object) -> Trainer:
    return Trainer(max_epochs=MAX_EPOCHS, accelerator="cpu", logger=False, enable_checkpointing=False,
                   enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                   **kwargs)  # fmt: skip


@pytest.mark.parametrize("optimizer", ["adam", "lbfgs"])
def test_lightning_fit_takes_the_plain_loops_steps(optimizer: str) -> None:
    model, dm = make(optimizer)
    trainer(limit_val_batches=0).fit(model, dm)

    torch.manual_seed(0)  # what seed_everything(0) did before the module built its networks
    enc, head = DeepSetEncoder(1, 16, [64, 64]), build_head("gaussian", 1, 16, [64, 64])
    stream = SimulatedSetStream(dm.simulator, [1, 2], 32, STAGE1_EPOCHS * BATCHES, seed=3)
    train_npe(enc, head, stream, lr=1e-3)
    bank = pre_aggregate(enc, dm.stage2_sets())
    train_head(head, bank, (MAX_EPOCHS - STAGE1_EPOCHS) * BATCHES, batch_size=64, lr=3e-3, seed=5,
               optimizer=optimizer)  # fmt: skip

    torch.testing.assert_close(model.bank.z, bank.z, rtol=0, atol=0)
    for name, value in {**{f"encoder.{k}": v for k, v in enc.state_dict().items()},
                        **{f"head.{k}": v for k, v in head.state_dict().items()}}.items():  # fmt: skip
        torch.testing.assert_close(model.state_dict()[name], value, rtol=0, atol=0, msg=name)


class CrashAt(Callback):
    """Save a checkpoint after optimizer step ``step`` (in ``on_train_batch_end``, as ModelCheckpoint does), then
    crash."""

    def __init__(self, step: int, path: Path) -> None:
        self.step, self.path = step, path

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs, batch, batch_idx: int) -> None:
        if trainer.global_step == self.step:
            trainer.save_checkpoint(self.path)
            raise RuntimeError("simulated crash")


@pytest.mark.parametrize(("optimizer", "crash_step"), [("adam", 7), ("adam", 13), ("lbfgs", 13)],
                         ids=["stage1-mid-epoch", "stage2-adam-mid-epoch", "stage2-lbfgs-mid-epoch"])  # fmt: skip
def test_resume_at_any_step_gives_the_uninterrupted_result(optimizer: str, crash_step: int, tmp_path: Path) -> None:
    """Steps 7 and 13 are the 3rd and 4th batch of epochs 1 (stage 1) and 2 (stage 2, bank already built)."""
    full, dm = make(optimizer)
    trainer().fit(full, dm)

    crashed, dm = make(optimizer)
    ckpt = tmp_path / "crash.ckpt"
    with pytest.raises(RuntimeError, match="simulated crash"):
        trainer(callbacks=[CrashAt(crash_step, ckpt)]).fit(crashed, dm)
    resumed, dm = make(optimizer)
    seed_everything(123, verbose=False)  # a resumed run must not depend on the global RNG
    trainer().fit(resumed, dm, ckpt_path=ckpt)

    assert resumed.global_step == full.global_step == MAX_EPOCHS * BATCHES
    for name, value in full.state_dict().items():
        torch.testing.assert_close(resumed.state_dict()[name], value, rtol=0, atol=0, msg=name)
    assert resumed.last_val == full.last_val and sorted(full.last_val) == [2, 100]
    torch.testing.assert_close(resumed.bank.z, full.bank.z, rtol=0, atol=0)


class CheckRanks(Callback):
    """Inside every DDP rank: stage-1 sets differ between ranks; at the end, weights, bank and metrics agree."""

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch, batch_idx: int) -> None:
        if trainer.global_step == 0:
            xs = pl_module.all_gather(batch["x"])
            assert xs.shape[0] == 2 and not torch.equal(xs[0], xs[1]), "both ranks drew the same stage-1 sets"

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        flat = torch.cat([p.detach().reshape(-1) for p in pl_module.parameters()])
        gathered = {"weights": pl_module.all_gather(flat), "bank": pl_module.all_gather(pl_module.bank.z),
                    "kl": pl_module.all_gather(torch.tensor(pl_module.last_val[100]["kl"]))}  # fmt: skip
        for name, g in gathered.items():
            assert torch.equal(g[0], g[1]), f"{name} differs between ranks"
        assert len(pl_module.bank) == 200


@pytest.mark.ddp
def test_debug_config_under_ddp_spawn_keeps_ranks_identical() -> None:
    from lightning_papers.cli import cli_main

    config = Path(__file__).resolve().parents[3] / "configs/pairs/debug.yaml"
    cli = cli_main(["--config", str(config), "--model.init_args.stage1_epochs=2", "--model.init_args.grid_points=200",
                    "--data.init_args.batch_size=32", "--data.init_args.batches_per_epoch=4",
                    "--data.init_args.stage2_set_sizes=[10, 100]", "--data.init_args.stage2_num_sets=200",
                    "--data.init_args.val_set_sizes=[2, 100]", "--data.init_args.val_num_sets=16"],
                   run=False)  # fmt: skip
    trainer = Trainer(**ddp_cpu_kwargs(), max_epochs=3, num_sanity_val_steps=0, callbacks=[CheckRanks()])
    trainer.fit(cli.model, cli.datamodule)  # an assertion failing in a rank fails the fit
    assert trainer.state.finished


def test_predict_on_user_npz_sets(tmp_path: Path) -> None:
    """``predict`` on the user's own sets of different sizes: one posterior summary per set; a larger set drawn with
    the same log variance gives a narrower posterior."""
    import numpy as np

    model, dm = make("lbfgs")
    trainer(limit_val_batches=0).fit(model, dm)
    gen = np.random.default_rng(0)
    path = tmp_path / "sets.npz"
    np.savez(path, x_0=gen.normal(0.3, 1.0, size=(5, 1)), x_1=gen.normal(0.3, 1.0, size=(2000, 1)))
    dm.predict_path = str(path)
    out = trainer().predict(model, dm)
    assert [o["set_size"] for o in out] == [5, 2000]
    assert all(o["samples"].shape == (model.hparams.predict_samples, 1) for o in out)
    assert out[1]["sd"].item() < out[0]["sd"].item()


def test_resume_after_a_fit_cut_by_max_steps(tmp_path: Path) -> None:
    """``--trainer.max_steps 7`` stops in the middle of epoch 1; a fit resumed from the checkpoint written after it
    plays the rest of epoch 1 (not the next epoch) and ends as the uninterrupted run."""
    full, dm = make("lbfgs")
    trainer().fit(full, dm)
    first, dm = make("lbfgs")
    cut = trainer(max_steps=7)
    cut.fit(first, dm)
    cut.save_checkpoint(tmp_path / "cut.ckpt")
    resumed, dm = make("lbfgs")
    trainer().fit(resumed, dm, ckpt_path=tmp_path / "cut.ckpt")
    assert resumed.global_step == MAX_EPOCHS * BATCHES
    for name, value in full.state_dict().items():
        torch.testing.assert_close(resumed.state_dict()[name], value, rtol=0, atol=0, msg=name)
    assert resumed.last_val == full.last_val
