"""Drop-in callbacks for any Lightning project.

``GradientProjection`` (GRASP) and ``AdaptiveCalibration`` (calibration epochs) are loaded lazily, so
``import lightning_papers.callbacks`` stays light.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "GradientProjection": "lightning_papers.callbacks.gradient_projection",
    "IterativeGradientProjection": "lightning_papers.callbacks.iterative_projection",
    "AdaptiveCalibration": "lightning_papers.callbacks.calibration",
    "FigureLogger": "lightning_papers.callbacks.figures",
}

__all__ = list(_LAZY)


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'lightning_papers.callbacks' has no attribute {name!r}")
    return getattr(importlib.import_module(_LAZY[name]), name)
