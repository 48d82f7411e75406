"""Write the small example tables of ``configs/drum/tables.yaml``: ``source.csv`` and ``target.csv``.

A made-up clinical-style pair (binary outcome): shared covariates age, bmi, sbp; a biomarker recorded only in the
source; the target is older and its biomarker runs higher and more variable given the covariates (an A | X shift).
The target's ``event`` column is there for evaluation only. Run: ``python examples/drum/make_example.py``.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np


def make(n: int, target: bool, rng: np.random.Generator) -> list[list[float]]:
    age = rng.normal(62 if target else 55, 10, n)
    bmi = rng.normal(27, 4, n)
    sbp = rng.normal(135 if target else 130, 15, n)
    z = (age - 55) / 10
    bio = 0.6 * z + (0.5 if target else 0.0) + (1.5 if target else 1.0) * rng.normal(size=n)
    logit = -0.8 + 0.5 * z + 0.03 * (bmi - 27) + 0.02 * (sbp - 130) + 0.7 * bio + 0.3 * bio**2
    event = rng.binomial(1, 1 / (1 + np.exp(-logit)))
    return [[round(a, 1), round(b, 1), round(s, 1), round(m, 3), int(e)] for a, b, s, m, e in
            zip(age, bmi, sbp, bio, event)]


def main(out: Path = Path(__file__).parent) -> None:
    rng = np.random.default_rng(0)
    with (out / "source.csv").open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["age", "bmi", "sbp", "biomarker", "event"])
        w.writerows(make(1500, False, rng))
    with (out / "target.csv").open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["patient_id", "age", "bmi", "sbp", "event"])
        w.writerows([f"T{i:04d}", *r[:3], r[4]] for i, r in enumerate(make(1000, True, rng)))


if __name__ == "__main__":
    main()
