"""The comparison recalibrators recover known ground truth: a temperature, a Platt map, bin frequencies."""

from __future__ import annotations

import numpy as np
import pytest

from lightning_papers.methods.adaptive_calibration.recalibration_baselines import (
    fit_temperature,
    online_histogram_binning,
    online_platt,
    sliding_temperature,
    temperature_confidence,
)


def sampled(n: int, temperature: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Logits whose labels are drawn from softmax(logits / temperature): the true temperature is known."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(n, 5)) * 3.0
    p = np.exp(logits / temperature)
    p /= p.sum(axis=1, keepdims=True)
    return logits, np.array([rng.choice(5, p=row) for row in p])


def test_temperature_fit_recovers_the_true_temperature() -> None:
    logits, y = sampled(6000, 2.5, 0)
    assert fit_temperature(logits, y) == pytest.approx(2.5, rel=0.08)
    np.testing.assert_allclose(temperature_confidence(np.array([[0.0, np.log(3.0)]]), 1.0), [0.75])
    out = sliding_temperature(logits, y, start=1.0, window=1000, every=1000)
    np.testing.assert_allclose(out[:1000], temperature_confidence(logits[:1000], 1.0))
    np.testing.assert_allclose(
        out[1000:2000], temperature_confidence(logits[1000:2000], fit_temperature(logits[:1000], y[:1000]))
    )


def test_online_platt_and_histogram_binning_learn_the_true_map() -> None:
    rng = np.random.default_rng(1)
    conf = rng.uniform(0.05, 0.95, 20000)
    truth = 1.0 / (1.0 + np.exp(-(0.5 * np.log(conf / (1 - conf)) - 0.3)))  # a Platt map: a = 0.5, b = -0.3
    y = (rng.random(20000) < truth).astype(float)
    ops = online_platt(conf, y)
    assert ops[0] == pytest.approx(conf[0])  # starts at the identity
    assert np.abs(ops[-5000:] - truth[-5000:]).mean() < 0.02 < np.abs(conf - truth).mean()
    hb = online_histogram_binning(conf, y, n_bins=10)
    assert hb[0] == conf[0]
    centres = (np.minimum((conf * 10).astype(int), 9) + 0.5) / 10
    mid = 1.0 / (1.0 + np.exp(-(0.5 * np.log(centres / (1 - centres)) - 0.3)))
    assert np.abs(hb[-5000:] - mid[-5000:]).mean() < 0.03
