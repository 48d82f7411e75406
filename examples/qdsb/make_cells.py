"""Write ``cells.npz``: a tiny *synthetic* stand-in for single-cell PCA embeddings (two "days", 5 dims each).

Day 2 is a two-component Gaussian mixture, day 4 the same components moved and stretched, so a bridge between
them has something to learn. Real data goes in the same format: one ``(N, d)`` float array per time point.
Run from the repository root: ``python examples/qdsb/make_cells.py``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


def main(n: int = 400, dim: int = 5, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    centres = rng.normal(scale=2.0, size=(2, dim))
    comp = rng.integers(2, size=n)
    day2 = centres[comp] + 0.5 * rng.normal(size=(n, dim))
    comp = rng.integers(2, size=n)
    day4 = 1.5 * centres[comp] + 1.0 + 0.7 * rng.normal(size=(n, dim))
    out = Path(__file__).with_name("cells.npz")
    np.savez_compressed(out, day2=day2.astype(np.float32), day4=day4.astype(np.float32))
    print(f"wrote {out} ({out.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
