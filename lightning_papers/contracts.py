"""Module <-> datamodule contracts, written as ``typing.Protocol`` classes and checked in ``setup``.

A method's LightningModule states what it needs from its data as a ``runtime_checkable`` Protocol next to the
module (preferably batches only: the module reads what ``training_step`` receives and never reaches into
``trainer.datamodule``). When it does need something from the datamodule (a dimension, a stream length), it
calls :func:`check_datamodule` in ``setup`` so a mismatched datamodule fails before the first step with a message
that names what is missing.
"""

from __future__ import annotations

from typing import Any


def missing_members(obj: Any, protocol: type) -> list[str]:
    """Names the protocol declares (attributes and methods) that ``obj`` lacks."""
    names = set(getattr(protocol, "__annotations__", {}))
    names |= {n for n, v in vars(protocol).items() if callable(v) and not n.startswith("_")}
    return sorted(n for n in names if not hasattr(obj, n))


def check_datamodule(datamodule: Any, protocol: type, who: str) -> None:
    """Raise ``TypeError`` naming the missing members if ``datamodule`` does not satisfy ``protocol``.

    Args:
        datamodule: ``trainer.datamodule`` (``None`` when the user passed dataloaders directly).
        protocol: The ``typing.Protocol`` the module needs.
        who: The module's class name, for the message.
    """
    if datamodule is None:
        raise TypeError(f"{who} needs a datamodule that satisfies {protocol.__name__}; got dataloaders only")
    missing = missing_members(datamodule, protocol)
    if missing:
        raise TypeError(
            f"{who} needs a datamodule that satisfies {protocol.__name__}; "
            f"{type(datamodule).__name__} lacks {', '.join(missing)}"
        )
