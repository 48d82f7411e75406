"""The forecaster interface shared by every calibrated forecaster here, plus a resumable stream of uniforms.

A forecaster plays the online protocol of the paper (Liu, Luo, Ratliff 2026, arXiv 2605.11490): each round it
outputs a probability ``p_t = predict()``, then sees the outcome ``y_t ∈ {0, 1}`` through ``update(y_t)`` (or
``observe(y_t)``, the same without the check that ``y_t`` is a 0/1 label, for callers that validated a whole batch).
``run(y)`` plays a whole stream and returns the forecasts; it is the same computation as the per-round loop
(tested), only without the per-call validation. ``state_dict()`` / ``load_state_dict()`` hold plain Python values so
a run resumes exactly.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from lightning_papers.metrics.calibration import ArrayLike, as_numpy, check_labels


def check_label(y: float) -> float:
    """Return ``float(y)`` if it is 0 or 1, else raise ``ValueError`` naming the value."""
    if y != 0 and y != 1:
        raise ValueError(f"outcome must be a binary label 0 or 1, got {y!r}")
    return float(y)


class Forecaster:
    """Base class: ``predict() -> float``, ``update(y)``, ``run(y, reference=None) -> p`` and a resumable state.

    Subclasses implement ``predict``, ``observe`` (no validation) and ``_state`` / ``_load``. ``reference`` is only
    used by the oracle (the true means μ_t); the others ignore it.
    """

    def predict(self) -> float:
        raise NotImplementedError

    def update(self, y: float) -> None:
        """Feed the outcome of the round whose forecast was the last ``predict()``."""
        self.observe(check_label(y))

    def observe(self, y: float) -> None:
        """``update`` without the label check: ``y`` must already be known to be 0.0 or 1.0."""
        raise NotImplementedError

    def expected_forecast(self) -> float:
        """The mean of the current forecast distribution (deterministic; used to apply a frozen calibrator)."""
        return self.predict()

    def run(self, y: ArrayLike, reference: ArrayLike | None = None) -> np.ndarray:
        """Play the stream ``y`` (binary outcomes, in time order) and return the forecasts made before each outcome."""
        y_arr = as_numpy(y)
        check_labels(y_arr, "y")
        predict, update = self.predict, self.observe
        out = []
        append = out.append
        for yt in y_arr.tolist():
            append(predict())
            update(yt)
        return np.asarray(out, dtype=np.float64)

    def state_dict(self) -> dict[str, Any]:
        return {"class": type(self).__name__, **self._state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("class") != type(self).__name__:
            raise ValueError(f"state is for {state.get('class')!r}, not {type(self).__name__!r}")
        self._load(state)

    def _state(self) -> dict[str, Any]:
        raise NotImplementedError

    def _load(self, state: dict[str, Any]) -> None:
        raise NotImplementedError


class UniformStream:
    """Uniform [0, 1) numbers drawn in chunks from a seeded PCG64 generator; the state (generator + chunk) resumes."""

    CHUNK = 4096
    SPAWN_KEY = (0xCA11B,)  # so seed s never reproduces np.random.default_rng(s), which may have drawn the data

    def __init__(self, seed: int) -> None:
        self._gen = np.random.Generator(np.random.PCG64(np.random.SeedSequence(seed, spawn_key=self.SPAWN_KEY)))
        self._buf: list[float] = []
        self._pos = 0

    def next(self) -> float:
        if self._pos >= len(self._buf):
            self._buf = self._gen.random(self.CHUNK).tolist()
            self._pos = 0
        u = self._buf[self._pos]
        self._pos += 1
        return u

    def state_dict(self) -> dict[str, Any]:
        return {"gen": self._gen.bit_generator.state, "buf": list(self._buf), "pos": self._pos}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._gen.bit_generator.state = state["gen"]
        self._buf = list(state["buf"])
        self._pos = int(state["pos"])
