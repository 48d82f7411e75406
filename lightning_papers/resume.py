"""Resume helper: a checkpoint written after ``max_steps`` cut an epoch resumes that epoch, not the next one.

A neutral utility (plain Python on Lightning's checkpoint dictionary): a module's ``on_load_checkpoint`` runs before
Lightning restores its loops from the same dictionary, so calling it there is enough (QDSB and PAIRS do).
"""

from __future__ import annotations

from typing import Any


def reopen_epoch_cut_by_max_steps(checkpoint: dict[str, Any]) -> bool:
    """Make a checkpoint saved after ``max_steps`` stopped a fit mid-epoch resume that epoch where it stopped.

    Lightning marks the epoch in progress as processed and completed when ``max_steps`` ends the fit, so a
    resume with a larger ``max_steps`` would start the *next* epoch (at the stopped batch index) and skip the
    rest of the cut one. When the epoch loop's batch progress shows an unfinished epoch, this rolls the epoch
    counters back to Lightning's "restarted mid-epoch" state, exactly what a checkpoint saved during that step
    holds. Checkpoints saved during training, at an epoch end or by any other stop are left alone.

    Returns:
        Whether the checkpoint was changed.
    """
    try:
        fit = checkpoint["loops"]["fit_loop"]
        batches, epochs = fit["epoch_loop.batch_progress"], fit["epoch_progress"]
    except (KeyError, TypeError):
        return False
    cur = epochs["current"]
    unfinished = not batches.get("is_last_batch", True) and batches["current"]["completed"] > 0
    if not unfinished or not cur["ready"] == cur["started"] == cur["processed"] == cur["completed"] > 0:
        return False
    for part in ("current", "total"):
        epochs[part]["processed"] -= 1
        epochs[part]["completed"] -= 1
    checkpoint["epoch"] = int(checkpoint.get("epoch", cur["completed"])) - 1
    return True
