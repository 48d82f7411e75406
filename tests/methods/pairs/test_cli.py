"""The shipped config runs both PAIRS stages from the CLI (tiny overrides) and logs coverage per N and figures; a
user simulator is plugged in by ``class_path``."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from lightning_papers.cli import cli_main
from lightning_papers.datamodules.set_simulators import GaussianSharedLocation

CONFIG = Path(__file__).resolve().parents[3] / "configs/pairs/debug.yaml"


class ScaledGaussian(GaussianSharedLocation):
    """A user simulator: the Gaussian model with every observation multiplied by ``scale``."""

    def __init__(self, scale: float = 1.0) -> None:
        self.scale = scale

    def sample(self, num_sets: int, set_size: int, generator: torch.Generator | None = None):
        theta, x = super().sample(num_sets, set_size, generator)
        return theta, self.scale * x


TINY = [
    "--trainer.max_epochs=3",
    "--trainer.check_val_every_n_epoch=1",
    "--model.init_args.stage1_epochs=2",
    "--model.init_args.grid_points=300",
    "--data.init_args.batch_size=64",
    "--data.init_args.batches_per_epoch=20",
    "--data.init_args.stage2_set_sizes=[10, 100]",
    "--data.init_args.stage2_num_sets=200",
    "--data.init_args.val_set_sizes=[2, 100]",
    "--data.init_args.val_num_sets=30",
]


def test_shipped_config_runs_both_stages(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # the config writes under ./runs
    cli = cli_main(["fit", "--config", str(CONFIG), *TINY])
    model, dm = cli.model, cli.datamodule
    assert cli.trainer.current_epoch == 3
    assert not model.encoder.phi[0].weight.requires_grad  # stage 2 ran: encoder frozen, head refit on the bank
    assert model.bank is not None and len(model.bank) == 200 and not hasattr(dm, "bank")
    assert sorted(model.last_val) == [2, 100]
    for res in model.last_val.values():
        assert {"coverage50", "coverage90", "kl", "mean_err_sd", "sbc_max_dev"} <= set(res)
        assert 0.0 <= res["coverage90"] <= 1.0 and res["kl"] >= 0.0
    logged = cli.trainer.callback_metrics
    assert "val/N100/coverage90" in logged and "val/N2/kl" in logged
    pngs = [p for p in (tmp_path / "runs").rglob("*.png") if "figures" in p.parts]  # FigureLogger's own copies
    names = {p.name.rsplit("_step", 1)[0] for p in pngs}
    assert names == {"val_posteriors", "val_coverage_kl_vs_N"}


def test_user_simulator_by_class_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    args = ["--config", str(CONFIG),
            f"--data.init_args.simulator.class_path={ScaledGaussian.__module__}.ScaledGaussian",
            "--data.init_args.simulator.init_args.scale=3.0"]  # fmt: skip
    cli = cli_main(args, run=False)
    sim = cli.datamodule.simulator
    assert type(sim).__name__ == "ScaledGaussian" and sim.scale == 3.0
    theta, x = sim.sample(2000, 2, torch.Generator().manual_seed(0))
    # x = 3 (ν + e^{θ/2} ε): the first element's variance is 9 (1 + E e^θ) = 9 (1 + e^{1/2})
    assert abs(float(x[:, 0, 0].var()) / (9 * (1 + 2.718281828**0.5)) - 1) < 0.15
