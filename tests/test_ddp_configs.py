"""Every debug config runs under ``ddp_spawn`` on 2 CPU processes and its replicas end with identical weights, or
its method declares ``max_world_size = 1`` and the CLI refuses the multi-process fit before any process starts.

The README says how each method scales; this is the check on CPUs (gloo).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from lightning.pytorch import Callback, LightningModule, Trainer

from lightning_papers.cli import cli_main
from tests.helpers.ddp import ddp_cpu_kwargs
from tests.helpers.debug_configs import CASES, CONFIGS, build, flags


class AssertReplicasIdentical(Callback):
    """At the end of fit, all-gather every rank's flattened weights and raise if any rank differs from rank 0."""

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        flat = torch.cat([p.detach().float().flatten() for p in pl_module.parameters()] or [torch.zeros(1)])
        gathered = pl_module.all_gather(flat)
        if not all(torch.equal(gathered[0], g) for g in gathered[1:]):
            raise AssertionError(f"ranks ended with different weights ({type(pl_module).__name__})")


@pytest.mark.ddp
@pytest.mark.parametrize("config", sorted(CASES))
def test_debug_config_runs_on_two_ddp_processes(config: str, tmp_path: Path) -> None:
    overrides, _, total = CASES[config]  # total steps; under DDP each rank takes them on its share of the data
    cli = build(config, tmp_path, overrides, total)
    if getattr(cli.model, "max_world_size", None) == 1:
        args = ["fit", "--config", str(CONFIGS / config), *flags(overrides), "--trainer.logger", "false",
                "--trainer.default_root_dir", str(tmp_path), "--trainer.devices", "2",
                "--trainer.strategy", "ddp_spawn"]
        with pytest.raises(ValueError, match="world_size=2"):
            cli_main(args)  # refused in the CLI's before_fit: no process is spawned, nothing is trained
        return
    settings = {k: v for k, v in cli.config.trainer.as_dict().items() if k in ("max_epochs", "max_steps",
                "reload_dataloaders_every_n_epochs", "check_val_every_n_epoch", "num_sanity_val_steps")}
    check = AssertReplicasIdentical()
    trainer = Trainer(**settings, **ddp_cpu_kwargs(), default_root_dir=str(tmp_path), callbacks=[check])
    trainer.fit(cli.model, datamodule=cli.datamodule)  # a failed check on any rank re-raises here
