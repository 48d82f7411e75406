"""The two PAIRS stages: stage 2 calls the encoder only to build the bank, once, and never inside the head's loop;
a short PAIRS run on the Gaussian model is calibrated at N = 100 and beats the naive factorisation."""

from __future__ import annotations

import math

import pytest
import torch
from lightning.pytorch import Callback, LightningModule, Trainer

from lightning_papers.datamodules.set_simulators import GaussianSharedLocation, simulate, simulate_in_chunks
from lightning_papers.datamodules.simulated_sets import SimulatedSetsDataModule
from lightning_papers.methods.pairs.bank import EmbeddingBank, pre_aggregate
from lightning_papers.methods.pairs.baselines import naive_factorized_log_posterior
from lightning_papers.methods.pairs.encoder import DeepSetEncoder
from lightning_papers.methods.pairs.evaluation import head_log_q_grid, score
from lightning_papers.methods.pairs.heads import GaussianHead
from lightning_papers.methods.pairs.module import PairsNPE
from lightning_papers.methods.pairs.training import fit_joint, refit_head, train_head


class CountEncoderCalls(Callback):
    """Count forward calls of the element network φ inside every training batch, per stage."""

    def __init__(self) -> None:
        self.calls = 0
        self.per_batch: dict[int, list[int]] = {1: [], 2: []}

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        def hook(*_: object) -> None:
            self.calls += 1

        pl_module.encoder.phi.register_forward_hook(hook)

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch, batch_idx: int) -> None:
        self._start = self.calls

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs, batch, batch_idx: int) -> None:
        self.per_batch[pl_module.stage_at_epoch(trainer.current_epoch)].append(self.calls - self._start)


def run_two_stages(stage2_n: int, stage2_batches: int, num_sets: int = 300, chunk: int = 2**17,
                   optimizer: str = "adam") -> CountEncoderCalls:  # fmt: skip
    """Stage 1: 2 epochs x 4 batches; stage 2: 2 epochs x ``stage2_batches`` head steps (``limit_train_batches``
    is not used: the epoch length is the datamodule's ``batches_per_epoch``, so stage 1 is 2 x ``stage2_batches``)."""
    sim = GaussianSharedLocation()
    dm = SimulatedSetsDataModule(sim, batch_size=32, batches_per_epoch=stage2_batches, stage2_set_sizes=[stage2_n],
                                 stage2_num_sets=num_sets, val_set_sizes=[5], val_num_sets=8,
                                 chunk_elements=chunk)  # fmt: skip
    model = PairsNPE(theta_dim=1, x_dim=1, stage1_epochs=2, grid_points=50, stage2_optimizer=optimizer,
                     stage2_batch_size=64, chunk_elements=chunk)  # fmt: skip
    counter = CountEncoderCalls()
    trainer = Trainer(max_epochs=4, limit_val_batches=0, logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False, callbacks=[counter],
                      accelerator="cpu")  # fmt: skip
    enc_before = [p.detach().clone() for p in model.encoder.parameters()]
    trainer.fit(model, dm)
    counter.model, counter.encoder_before = model, enc_before
    return counter


@pytest.mark.parametrize(("stage2_n", "optimizer"), [(10, "adam"), (1000, "lbfgs")])
def test_stage2_never_calls_the_encoder_in_the_head_loop(stage2_n: int, optimizer: str) -> None:
    few, many = run_two_stages(stage2_n, 3, optimizer=optimizer), run_two_stages(stage2_n, 9, optimizer=optimizer)
    bank_calls = math.ceil(300 / max(1, 2**17 // stage2_n))  # 300 sets, 2^17 elements per call
    for c, batches in [(few, 3), (many, 9)]:
        assert c.per_batch[1] == [1] * (2 * batches)  # stage 1: one encoder call a step
        # stage 2: the first step builds the bank (its only encoder calls), every later head step calls it never
        assert c.per_batch[2] == [bank_calls] + [0] * (2 * batches - 1)
        # the head is fitted on (θ [M, 1], z [M, 16], log N [M, 1]) whatever the set size N was
        bank = c.model.bank
        assert (bank.theta.shape, bank.z.shape, bank.log_n.shape) == ((300, 1), (300, 16), (300, 1))
        # the encoder is frozen in stage 2: it ends where stage 1 left it, and it did change during stage 1
        assert not c.model.encoder.phi[0].weight.requires_grad
        assert any((a - b).abs().max() > 0 for a, b in zip(c.encoder_before, c.model.encoder.parameters()))


def test_bank_is_pre_aggregated_in_chunks_once() -> None:
    """300 sets at N = 1000 with 2^14-element chunks: 16 sets per call, so exactly 19 encoder calls, once."""
    c = run_two_stages(1000, stage2_batches=2, num_sets=300, chunk=2**14)
    assert c.per_batch[2] == [math.ceil(300 / (2**14 // 1000)), 0, 0, 0]


def test_train_head_updates_only_the_head_and_matches_the_bank() -> None:
    sim = GaussianSharedLocation()
    enc = DeepSetEncoder(1)
    bank = pre_aggregate(enc, simulate_in_chunks(sim, 400, [3, 50], seed=0))
    assert bank.theta.shape == (400, 1) and bank.z.shape == (400, 16) and bank.log_n.shape == (400, 1)
    torch.testing.assert_close(bank.log_n.unique(), torch.tensor([math.log(3), math.log(50)]))
    head = GaussianHead(1, 16)
    before = [p.detach().clone() for p in head.parameters()]
    losses = train_head(head, bank, steps=300, batch_size=128, lr=3e-3, seed=0)
    assert all((a - b).abs().max() > 0 for a, b in zip(before, head.parameters()))
    assert sum(losses[-30:]) / 30 < sum(losses[:30]) / 30 - 0.2
    with pytest.raises(ValueError, match="steps and batch_size"):
        train_head(head, bank, steps=0)


def test_lbfgs_head_fit_recovers_a_planted_conditional_gaussian() -> None:
    """A bank with θ | z, N ~ N(sin(2 z_0) + 0.5 z_1, (0.05 + 0.2 sigmoid(z_2 - log N))²): full-batch L-BFGS
    recovers the planted mean and sd at held-out contexts, and a bad optimizer name is rejected by name."""
    g = torch.Generator().manual_seed(0)

    def planted(m: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        z = torch.randn(m, 16, generator=g)
        log_n = torch.log(torch.randint(1, 1000, (m, 1), generator=g).float())
        mu = torch.sin(2 * z[:, :1]) + 0.5 * z[:, 1:2]
        sd = 0.05 + 0.2 * torch.sigmoid(z[:, 2:3] - log_n)
        return z, log_n, mu, sd

    z, log_n, mu, sd = planted(4000)
    bank = EmbeddingBank(mu + sd * torch.randn(mu.shape, generator=g), z, log_n)
    torch.manual_seed(0)
    head = GaussianHead(1, 16)
    losses = train_head(head, bank, steps=300, optimizer="lbfgs")
    assert losses[-1] < losses[0] - 1.0
    zt, log_nt, mut, sdt = planted(500)
    with torch.no_grad():
        mu_hat, sd_hat = head.mean_sd(zt, log_nt)
    err = ((mu_hat - mut) / sdt).abs()
    assert err.median() < 1.0  # typical mean error in units of the planted sd (0.31 measured)
    assert (mu_hat - mut).pow(2).mean().sqrt() < 0.3 * mut.std()  # RMS error vs the spread of the mean (0.22)
    assert (sd_hat / sdt).log().abs().median() < 0.3  # 0.13 measured
    with pytest.raises(ValueError, match="'sgd'"):
        train_head(head, bank, steps=10, optimizer="sgd")  # type: ignore[arg-type]


def test_short_pairs_run_is_calibrated_at_n_100() -> None:
    """Stage 1 on N ∈ {1, 2} (800 steps), stage 2 at N = 100: 50%/90% coverage near nominal, KL far below naive."""
    sim = GaussianSharedLocation()
    enc, head1 = fit_joint(sim, [1, 2], steps=800, batch_size=256, seed=0)
    head2 = refit_head(enc, head1, sim, [100], num_sets=4000, steps=1500, batch_size=256, seed=1)
    theta, x = simulate(sim, 400, 100, torch.Generator().manual_seed(123))
    grid = sim.grid(1500)
    res = score(head_log_q_grid(enc, head2, grid, x), sim, grid, theta, x)
    naive = score(naive_factorized_log_posterior(sim, grid, x), sim, grid, theta, x)
    stage1_only = score(head_log_q_grid(enc, head1, grid, x), sim, grid, theta, x)
    assert 0.82 <= res["coverage90"] <= 0.97, res
    assert 0.38 <= res["coverage50"] <= 0.62, res
    assert res["kl"] < 0.5 and res["kl"] < naive["kl"] / 5, (res, naive)
    assert res["mean_err_sd"] < 1.0, res
    # without the stage-2 refit the stage-1 head (log N ∈ {0, log 2} only) is far off at N = 100
    assert stage1_only["kl"] > 3 * res["kl"], stage1_only
