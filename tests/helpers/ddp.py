"""Two-process CPU DDP for tests: ``Trainer(**ddp_cpu_kwargs())`` runs on 2 gloo processes via ``ddp_spawn``.

With ``ddp_spawn`` the main process gets back only the model's parameters, so put assertions that need every
rank *inside* hooks (a callback that checks, then raises) or gather what you need with ``all_gather`` there.
"""

from __future__ import annotations

from typing import Any


def ddp_cpu_kwargs(devices: int = 2) -> dict[str, Any]:
    """Trainer arguments for a ``devices``-process CPU DDP run (gloo backend, spawned workers)."""
    return {
        "accelerator": "cpu",
        "devices": devices,
        "strategy": "ddp_spawn",
        "logger": False,
        "enable_checkpointing": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
    }
