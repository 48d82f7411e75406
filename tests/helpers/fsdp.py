"""Two-process CPU runs of Lightning's sharded strategies (gloo, spawned workers, clean exit) for tests.

What it takes to run them on CPU with torch 2.14 / Lightning 2.6:

* ``FSDPStrategy`` (FSDP1). Lightning refuses ``accelerator="cpu"`` only for the plain class (the accelerator
  connector checks ``type(strategy) is FSDPStrategy``), and it wraps with ``device_id=root_device.index`` (None on
  CPU), which torch refuses ("FSDP needs a non-CPU accelerator device"). :class:`CPUFSDPSpawn` wraps the model
  itself with ``device_id=torch.device("cpu")``, which torch accepts, and lets Lightning do the rest.
* ``ModelParallelStrategy`` (FSDP2, ``fully_shard`` on a ``DeviceMesh``) runs on a CPU mesh as is; it launches
  processes by re-running the script, which pytest cannot be, so :class:`CPUModelParallelSpawn` spawns them.

Both use :mod:`tests.helpers.ddp`'s clean-exit launcher; rank 0 sends back no weights (the parameters are shards or
DTensors, which the main process could not load), so assertions belong inside the workers' hooks.
"""

from __future__ import annotations

from typing import Any

import torch
from lightning.pytorch.strategies import FSDPStrategy, ModelParallelStrategy
from lightning.pytorch.strategies.launchers.multiprocessing import _WorkerOutput
from torch import nn

from tests.helpers.ddp import COLLECTIVE_TIMEOUT, _CleanExitLauncher


class _NoWeightsLauncher(_CleanExitLauncher):
    """Spawn launcher whose rank 0 returns the trainer state and results but no weights."""

    def _collect_rank_zero_results(self, trainer: Any, results: Any) -> _WorkerOutput | None:
        if self._strategy.local_rank != 0:
            return None
        return _WorkerOutput(None, None, trainer.state, results, self.get_extra_results(trainer))


class CPUFSDPSpawn(FSDPStrategy):
    """Lightning's ``FSDPStrategy`` on CPU processes (gloo): wraps with ``device_id=cpu`` (see module docstring)."""

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("timeout", COLLECTIVE_TIMEOUT)
        super().__init__(**kwargs)

    def _setup_model(self, model: nn.Module) -> nn.Module:
        from torch.distributed.fsdp import FullyShardedDataParallel

        if not any(isinstance(m, FullyShardedDataParallel) for m in model.modules()):
            model = FullyShardedDataParallel(
                module=model, cpu_offload=self.cpu_offload, mixed_precision=self.mixed_precision_config,
                sharding_strategy=self.sharding_strategy, device_id=torch.device("cpu"), **self.kwargs)
            self.kwargs.pop("auto_wrap_policy", None)  # applied above; Lightning would warn that it is ignored
        return super()._setup_model(model)

    def _configure_launcher(self) -> None:
        self._launcher = _NoWeightsLauncher(self, start_method="spawn")


class CPUModelParallelSpawn(ModelParallelStrategy):
    """Lightning's ``ModelParallelStrategy`` with spawned CPU workers (a ``[data_parallel, tensor_parallel]`` mesh)."""

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("timeout", COLLECTIVE_TIMEOUT)
        super().__init__(**kwargs)

    def _configure_launcher(self) -> None:
        self._launcher = _NoWeightsLauncher(self, start_method="spawn")


def sharded_cpu_kwargs(strategy: FSDPStrategy | ModelParallelStrategy, devices: int = 2) -> dict[str, Any]:
    """Trainer arguments for a ``devices``-process CPU run of a sharded ``strategy``."""
    return {"accelerator": "cpu", "devices": devices, "strategy": strategy, "logger": False,
            "enable_progress_bar": False, "enable_model_summary": False}
