"""Two-process CPU DDP for tests: ``Trainer(**ddp_cpu_kwargs())`` runs on 2 gloo processes via ``ddp_spawn``.

With ``ddp_spawn`` the main process gets back only the model's parameters, so put assertions that need every
rank *inside* hooks (a callback that checks, then raises) or gather what you need with ``all_gather`` there.

Clean exit. Lightning never destroys a gloo process group (it registers ``destroy_process_group`` at exit for
NCCL only), so each spawned worker used to leave the interpreter with the group alive and its C++ threads
running. On a loaded machine the interpreter's teardown then sometimes destroyed a still-joinable
``std::thread``: the worker died with "terminate called without an active exception" (SIGABRT) after the test
itself had passed. The minimal pattern (2 spawned gloo workers, a broadcast and an all-reduce, return without
destroying) aborted this way in 2 of 33 runs on the loaded 2-core machine beside a CPU hog, and in 0 of 34 runs
with the barrier-then-destroy below.
:class:`CleanExitDDPSpawn` therefore ends every worker with a barrier (all ranks done with collectives) and
``destroy_process_group()``, and starts the workers with one OpenMP/MKL thread each (no thread pools to
oversubscribe the two cores, fewer threads alive at exit). Collectives time out after ``COLLECTIVE_TIMEOUT``
instead of Lightning's 30 minutes, so a test that deadlocks fails instead of hanging the suite.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Any

import torch.distributed as dist
from lightning.pytorch.strategies import DDPStrategy
from lightning.pytorch.strategies.launchers.multiprocessing import _MultiProcessingLauncher

COLLECTIVE_TIMEOUT = timedelta(seconds=300)
ONE_THREAD = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}


@contextmanager
def _environment(values: dict[str, str]) -> Iterator[None]:
    """Set environment variables for the duration (spawned children inherit them), then restore the old ones."""
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def shutdown_process_group(barrier: bool = True) -> None:
    """Wait for every rank (if ``barrier``), then destroy the default process group of this process."""
    if not (dist.is_available() and dist.is_initialized()):
        return
    try:
        if barrier:
            dist.monitored_barrier(timeout=COLLECTIVE_TIMEOUT)  # gloo: names a rank that never arrives
    finally:
        dist.destroy_process_group()


class _CleanExitLauncher(_MultiProcessingLauncher):
    """Lightning's spawn launcher; children start with one thread and end by destroying their process group."""

    def launch(self, function: Callable, *args: Any, trainer: Any = None, **kwargs: Any) -> Any:
        with _environment(ONE_THREAD):
            return super().launch(function, *args, trainer=trainer, **kwargs)

    def _wrapping_function(self, *args: Any, **kwargs: Any) -> None:
        finished = False
        try:
            super()._wrapping_function(*args, **kwargs)
            finished = True
        finally:
            # after an error the other rank may be stuck in a collective: no barrier then, only the local destroy
            shutdown_process_group(barrier=finished)


class CleanExitDDPSpawn(DDPStrategy):
    """``ddp_spawn`` (gloo on CPU) whose workers exit cleanly (see the module docstring)."""

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("timeout", COLLECTIVE_TIMEOUT)
        super().__init__(start_method="spawn", **kwargs)

    def _configure_launcher(self) -> None:
        self._launcher = _CleanExitLauncher(self, start_method=self._start_method)


def ddp_cpu_kwargs(devices: int = 2) -> dict[str, Any]:
    """Trainer arguments for a ``devices``-process CPU DDP run (gloo backend, spawned workers, clean exit)."""
    return {
        "accelerator": "cpu",
        "devices": devices,
        "strategy": CleanExitDDPSpawn(),
        "logger": False,
        "enable_checkpointing": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
    }
