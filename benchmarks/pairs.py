"""PAIRS benchmark: posterior quality vs set size N for PAIRS and its baselines, on the Gaussian shared-location model.

Model (docs/pairs.md): θ = log σ² ~ N(0, 1), ν ~ N(0, 1) shared by the set, x_i ~ N(ν, e^θ); the exact posterior is
analytic, so KL(exact ‖ q) on a θ grid is available at every N.

Every PAIRS model is trained by ``training.fit_joint`` / ``training.refit_head``, i.e. by the very step functions
(``stage1_step``, ``head_step``) that ``PairsNPE.training_step`` calls; tests/methods/pairs/test_module.py checks that
a Lightning fit and these loops end with bit-identical weights.

Methods, all in one run and scored on the same evaluation sets at N ∈ {1, 2, 10, 100, 1000, 5000}:
  exact            the analytic posterior (reference: KL = 0, coverage = nominal up to sampling noise)
  PAIRS            stage 1 on N ∈ {1, 2}, stage 2: head refit on a bank pre-aggregated at every evaluation N
  PAIRS@1000       the same stage-1 encoder, head refit on a bank at the deployment N = 1000 only
  PAIRS, no stage 2  the stage-1 head evaluated at N (it only saw log N ∈ {0, log 2} in training)
  N=1 encoder + refit  stage 1 on N = 1 only, then the same stage 2 as PAIRS
  end-to-end @1000 a Deep Set trained end to end on sets of N = 1000
  naive factorised the product of exact single-observation posteriors (each observation with its own ν)
  sbi NPE @1000    the peer a user would otherwise pick: sbi's NPE (MAF density estimator) with sbi's
                   PermutationInvariantEmbedding (mean pooling, trial net 1→64→64→16, no z-scoring of x), trained on
                   sets of N = 1000
                   (optional dependency: `pip install sbi`; the row is skipped without it)

Targets: PAIRS 90% coverage in [0.85, 0.95] at N = 1000; KL within 1.5x of end-to-end @1000 at N = 1000
with >= 10x less training compute; the N = 1 encoder and the naive factorisation visibly fail at large N.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/pairs.py            # full, ~5 min on one shared core
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/pairs.py --seed 1 --out /tmp/p1.json --figures /tmp  # other seed
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/pairs.py --quick    # smoke run, ~1 min
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from lightning_papers.datamodules.set_simulators import GaussianSharedLocation, simulate
from lightning_papers.methods.pairs.baselines import naive_factorized_log_posterior
from lightning_papers.methods.pairs.evaluation import head_log_q_grid, score
from lightning_papers.methods.pairs.training import fit_joint, refit_head
from lightning_papers.metrics.posterior import kl_on_grid

ROOT = Path(__file__).resolve().parents[1]
SET_SIZES = [1, 2, 10, 100, 1000, 5000]
DEPLOY_N = 1000

# PAIRS: stage 1 with 1000 steps of 512 sets (N alternating 1, 2), then the head refit by full-batch L-BFGS on the
# bank (300 iterations). The end-to-end baseline keeps its own budget (3000 steps x 32 sets at N = 1000, Adam 1e-3).
# sbi: 2000 simulated sets of N = 1000, batches of 32, at most 20 epochs (sbi's early stopping may end it sooner).
# docs/pairs.md, "Benchmark", gives the earlier Adam settings and what each change buys.
FULL = {
    "stage1_steps": 1000, "stage1_batch": 512, "stage1_lr": 2e-3, "bank_sets_per_n": 1500, "bank_sets_deploy": 2000,
    "head_optimizer": "lbfgs", "head_steps": 300, "e2e_steps": 3000, "e2e_batch": 32, "eval_sets": 800, "grid": 2000,
    "sbi_sims": 2000, "sbi_batch": 32, "sbi_max_epochs": 20,
}  # fmt: skip
QUICK = {
    "stage1_steps": 400, "stage1_batch": 512, "stage1_lr": 2e-3, "bank_sets_per_n": 300, "bank_sets_deploy": 1000,
    "head_optimizer": "lbfgs", "head_steps": 150, "e2e_steps": 400, "e2e_batch": 32, "eval_sets": 200, "grid": 2000,
    "sbi_sims": 300, "sbi_batch": 32, "sbi_max_epochs": 3,
}  # fmt: skip


def train_sbi_npe(
    sim: GaussianSharedLocation, num_sims: int, batch_size: int, max_epochs: int, seed: int
) -> tuple[Any, int]:
    """sbi's NPE with a permutation-invariant embedding, trained on ``num_sims`` sets of N = 1000 (the peer).
    Returns the density estimator and the number of epochs sbi trained (its early stopping may end sooner)."""
    from sbi.inference import NPE
    from sbi.neural_nets import posterior_nn
    from sbi.neural_nets.embedding_nets import FCEmbedding, PermutationInvariantEmbedding
    from sbi.utils.tracking import TensorBoardTracker
    from torch import distributions
    from torch.utils.tensorboard import SummaryWriter

    torch.manual_seed(seed)
    theta, x = simulate(sim, num_sims, DEPLOY_N, torch.Generator().manual_seed(seed))
    trial = FCEmbedding(input_dim=1, output_dim=16, num_layers=3, num_hiddens=64)  # φ: 1→64→64→16, as ours
    embedding = PermutationInvariantEmbedding(trial, trial_net_output_dim=16, aggregation_fn="mean", num_layers=2,
                                              num_hiddens=64, output_dim=16)  # fmt: skip
    prior = distributions.MultivariateNormal(torch.zeros(1), torch.eye(1))
    # z_score_x="none" as in sbi's iid-data tutorial: the default z-scores x per position, which ties it to N = 1000
    net = posterior_nn(model="maf", embedding_net=embedding, z_score_x="none")
    # sbi logs to TensorBoard, by default under ./sbi-logs: keep the repository clean
    tracker = TensorBoardTracker(SummaryWriter(log_dir=tempfile.mkdtemp(prefix="sbi-logs-")))
    inference = NPE(prior=prior, density_estimator=net, tracker=tracker, show_progress_bars=False)
    estimator = inference.append_simulations(theta, x).train(
        training_batch_size=batch_size, max_num_epochs=max_epochs, show_train_summary=False
    )
    return estimator.eval(), int(inference.summary["epochs_trained"][-1])


@torch.no_grad()
def sbi_log_q_grid(estimator: Any, grid: torch.Tensor, x: torch.Tensor, sets_per_call: int = 20) -> torch.Tensor:
    """log q(θ_g | x_s) of an sbi (nflows) density estimator on ``grid`` [G, 1] for sets ``x`` [S, N, 1] -> [S, G].

    ``estimator.log_prob(theta [G, S, 1], condition=x)`` embeds every set once per grid point (G x N x 64 floats per
    set: 25 GB for 50 sets), so the set is embedded once with the flow's own embedding net and the flow is evaluated
    on the embedded context; on a small case both give identical values.
    """
    from torch import nn

    flow = estimator.net
    g = grid.float()
    out = []
    for s in range(0, x.shape[0], sets_per_call):
        emb = flow._embedding_net(x[s : s + sets_per_call])  # the PermutationInvariantEmbedding
        num_g, num_s = g.shape[0], emb.shape[0]
        inputs = g[:, None, :].expand(num_g, num_s, 1).reshape(num_g * num_s, 1)
        context = emb[None].expand(num_g, num_s, emb.shape[-1]).reshape(num_g * num_s, -1)
        embedding, flow._embedding_net = flow._embedding_net, nn.Identity()
        try:
            out.append(flow.log_prob(inputs, context).reshape(num_g, num_s).T.double())
        finally:
            flow._embedding_net = embedding
    return torch.cat(out)


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))


def scored(log_q: torch.Tensor, log_p: torch.Tensor, sim: GaussianSharedLocation, grid: torch.Tensor,
           theta: torch.Tensor, x: torch.Tensor) -> dict[str, float]:
    """All metrics of :func:`score`, plus the median over sets of KL(exact ‖ q) (the mean is outlier-sensitive)."""
    out = score(log_q, sim, grid, theta, x)
    out["kl_median"] = float(kl_on_grid(log_p, log_q).median())
    return out


def _run_measured(fn: Callable[..., Any], args: tuple, kwargs: dict) -> tuple[Any, float, float, float]:
    """Inside a fresh process: run ``fn`` and return (result, wall s, CPU s, peak RSS increase in MiB)."""
    torch.set_num_threads(1)
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset the high-water mark VmHWM (Linux)
    rss0 = _status_kib("VmRSS")
    t0, c0 = time.perf_counter(), time.process_time()
    out = fn(*args, **kwargs)
    dt, dc = time.perf_counter() - t0, time.process_time() - c0
    return out, dt, dc, (_status_kib("VmHWM") - rss0) / 1024


def measured(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> tuple[Any, float, float, float]:
    """Run ``fn(*args, **kwargs)`` in a freshly spawned process; return its result (pickled back), wall seconds,
    CPU seconds (``time.process_time``, one torch thread: less sensitive than wall time to other jobs on a
    shared machine) and the peak resident-memory increase over the process's state before the call (VmHWM after
    a reset through /proc/self/clear_refs, minus VmRSS at the start). A fresh process per call keeps one method's
    cached allocations out of the next one's peak. Process start-up is not counted."""
    with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(_run_measured, fn, args, kwargs).result()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small budgets (smoke run)")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/pairs.json")
    ap.add_argument("--figures", type=Path, default=ROOT / "docs/figures")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(1)
    cfg = QUICK if args.quick else FULL
    sim = GaussianSharedLocation()
    grid = sim.grid(cfg["grid"])
    t_start = time.perf_counter()

    # ------------------------------------------------------------------------------------------------ training
    compute: dict[str, dict[str, float]] = {}
    models: dict[str, tuple] = {}

    def record(name: str, parts: list[tuple[float, float, float]], elements: dict[str, float]) -> None:
        compute[name] = {
            "wall_s": sum(p[0] for p in parts),
            "cpu_s": sum(p[1] for p in parts),
            "peak_rss_mib": max(p[2] for p in parts),
            **elements,
        }
        c = compute[name]
        print(f"  trained {name}: {c['wall_s']:.1f} s wall, {c['cpu_s']:.1f} s CPU, peak +{c['peak_rss_mib']:.0f} MiB")

    s1_steps, s1_batch, s1_lr = cfg["stage1_steps"], cfg["stage1_batch"], cfg["stage1_lr"]
    stage1_elems = s1_steps * s1_batch * 1.5  # N alternates between 1 and 2
    (enc, head1), t1, c1, m1 = measured(fit_joint, sim, [1, 2], s1_steps, s1_batch, lr=s1_lr, seed=args.seed)
    record("PAIRS, no stage 2", [(t1, c1, m1)], {"grad_elements": stage1_elems, "nograd_elements": 0})
    models["PAIRS, no stage 2"] = (enc, head1)

    bank_n = cfg["bank_sets_per_n"]
    bank_elems = bank_n * sum(SET_SIZES)
    hs, hopt = cfg["head_steps"], {"optimizer": cfg["head_optimizer"]}  # L-BFGS: full bank, no batch size
    n_bank = bank_n * len(SET_SIZES)
    head2, t2, c2, m2 = measured(refit_head, enc, head1, sim, SET_SIZES, n_bank, hs, seed=1 + args.seed, **hopt)
    record("PAIRS", [(t1, c1, m1), (t2, c2, m2)], {"grad_elements": stage1_elems, "nograd_elements": bank_elems})
    models["PAIRS"] = (enc, head2)

    nd = cfg["bank_sets_deploy"]
    head3, t3, c3, m3 = measured(refit_head, enc, head1, sim, [DEPLOY_N], nd, hs, seed=2 + args.seed, **hopt)
    record("PAIRS@1000", [(t1, c1, m1), (t3, c3, m3)],
           {"grad_elements": stage1_elems, "nograd_elements": nd * DEPLOY_N})  # fmt: skip
    models["PAIRS@1000"] = (enc, head3)

    (enc1, h1), t4, c4, m4 = measured(fit_joint, sim, [1], s1_steps, s1_batch, lr=s1_lr, seed=args.seed)
    h1r, t5, c5, m5 = measured(refit_head, enc1, h1, sim, SET_SIZES, n_bank, hs, seed=1 + args.seed, **hopt)
    record("N=1 encoder + refit", [(t4, c4, m4), (t5, c5, m5)],
           {"grad_elements": s1_steps * s1_batch, "nograd_elements": bank_elems})  # fmt: skip
    models["N=1 encoder + refit"] = (enc1, h1r)

    es, eb = cfg["e2e_steps"], cfg["e2e_batch"]
    (enc_e, head_e), t6, c6, m6 = measured(fit_joint, sim, [DEPLOY_N], es, eb, seed=args.seed)
    record("end-to-end @1000", [(t6, c6, m6)], {"grad_elements": es * eb * DEPLOY_N, "nograd_elements": 0})
    models["end-to-end @1000"] = (enc_e, head_e)

    sbi_estimator = None
    try:
        import sbi  # noqa: F401 (optional peer)
    except ImportError:
        print("  sbi is not installed: no sbi row (pip install sbi)")
    else:
        (sbi_estimator, epochs), t7, c7, m7 = measured(train_sbi_npe, sim, cfg["sbi_sims"], cfg["sbi_batch"],
                                                       cfg["sbi_max_epochs"], args.seed)  # fmt: skip
        train_sets = cfg["sbi_sims"] - int(0.1 * cfg["sbi_sims"])  # sbi holds out 10% for validation
        record("sbi NPE @1000", [(t7, c7, m7)], {"grad_elements": epochs * train_sets * DEPLOY_N,
                                                  "nograd_elements": epochs * (cfg["sbi_sims"] - train_sets) * DEPLOY_N,
                                                  "epochs": epochs})  # fmt: skip

    # ---------------------------------------------------------------------------------------------- evaluation
    names = ["exact", *models, "naive factorised"] + (["sbi NPE @1000"] if sbi_estimator is not None else [])
    results: dict[str, dict[int, dict[str, float]]] = {m: {} for m in names}
    plot_cache: dict[int, tuple] = {}
    gen = torch.Generator().manual_seed(10_000 + args.seed)
    for i, n in enumerate(SET_SIZES):
        theta, x = simulate(sim, cfg["eval_sets"], n, gen)
        log_p = sim.log_posterior(grid, x)
        results["exact"][n] = scored(log_p, log_p, sim, grid, theta, x)
        naive = naive_factorized_log_posterior(sim, grid, x)
        results["naive factorised"][n] = scored(naive, log_p, sim, grid, theta, x)
        for name, (e, h) in models.items():
            if name == "PAIRS@1000" and n != DEPLOY_N:
                continue  # its head only ever saw N = 1000
            e.eval()
            h.eval()
            results[name][n] = scored(head_log_q_grid(e, h, grid, x), log_p, sim, grid, theta, x)
        if sbi_estimator is not None:
            results["sbi NPE @1000"][n] = scored(sbi_log_q_grid(sbi_estimator, grid, x), log_p, sim, grid, theta, x)
        log_q = head_log_q_grid(*models["PAIRS"], grid, x[:3])
        plot_cache[i] = (log_q, theta[:3], log_p[:3])
        print(f"  evaluated N = {n}")

    # ----------------------------------------------------------------------------------------------- report
    print(f"\n{'method':22s} {'N':>5s} {'cov50':>6s} {'cov90':>6s} {'KL mean':>9s} {'KL med':>8s} "
          f"{'mean err/sd':>11s} {'SBC dev':>8s}")  # fmt: skip
    for name, res in results.items():
        for n, r in res.items():
            print(f"{name:22s} {n:5d} {r['coverage50']:6.3f} {r['coverage90']:6.3f} {r['kl']:9.4g} "
                  f"{r['kl_median']:8.4f} {r['mean_err_sd']:11.3f} {r['sbc_max_dev']:8.3f}")  # fmt: skip
    print(f"\n{'method':22s} {'wall s':>7s} {'CPU s':>7s} {'peak MiB':>9s} {'grad elems':>11s} {'no-grad elems':>13s}")
    for name, c in compute.items():
        print(f"{name:22s} {c['wall_s']:7.1f} {c['cpu_s']:7.1f} {c['peak_rss_mib']:9.0f} {c['grad_elements']:11.3g} "
              f"{c['nograd_elements']:13.3g}")  # fmt: skip

    e2e, pairs = results["end-to-end @1000"][DEPLOY_N], results["PAIRS@1000"][DEPLOY_N]
    pairs_range = results["PAIRS"][DEPLOY_N]
    targets = {
        "pairs_at_1000_coverage90": pairs["coverage90"],
        "pairs_range_at_1000_coverage90": pairs_range["coverage90"],
        "coverage90_in_[0.85,0.95]": 0.85 <= pairs["coverage90"] <= 0.95,
        "kl_ratio_pairs_at_1000_vs_e2e": pairs["kl"] / max(e2e["kl"], 1e-12),
        "kl_ratio_pairs_range_vs_e2e": pairs_range["kl"] / max(e2e["kl"], 1e-12),
        "kl_within_1.5x": pairs["kl"] <= 1.5 * e2e["kl"],
        "kl_median_ratio_pairs_at_1000_vs_e2e": pairs["kl_median"] / max(e2e["kl_median"], 1e-12),
        "wall_ratio_e2e_vs_pairs_at_1000": compute["end-to-end @1000"]["wall_s"] / compute["PAIRS@1000"]["wall_s"],
        "wall_ratio_e2e_vs_pairs_range": compute["end-to-end @1000"]["wall_s"] / compute["PAIRS"]["wall_s"],
        "cpu_ratio_e2e_vs_pairs_at_1000": compute["end-to-end @1000"]["cpu_s"] / compute["PAIRS@1000"]["cpu_s"],
        "encoder_work_ratio_e2e_vs_pairs_at_1000": (3 * compute["end-to-end @1000"]["grad_elements"])
        / (3 * compute["PAIRS@1000"]["grad_elements"] + compute["PAIRS@1000"]["nograd_elements"]),
        "n1_encoder_coverage90_at_1000": results["N=1 encoder + refit"][DEPLOY_N]["coverage90"],
        "naive_coverage90_at_1000": results["naive factorised"][DEPLOY_N]["coverage90"],
    }
    if sbi_estimator is not None:
        peer = results["sbi NPE @1000"][DEPLOY_N]
        targets["sbi_at_1000_coverage90"] = peer["coverage90"]
        targets["kl_ratio_pairs_at_1000_vs_sbi"] = pairs["kl"] / max(peer["kl"], 1e-12)
        targets["cpu_ratio_sbi_vs_pairs_at_1000"] = compute["sbi NPE @1000"]["cpu_s"] / compute["PAIRS@1000"]["cpu_s"]
    targets["compute_10x_less"] = targets["cpu_ratio_e2e_vs_pairs_at_1000"] >= 10
    print("\ntargets:", json.dumps(targets, indent=1))

    out = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "hardware": f"{platform.machine()} CPU, torch threads = 1 ({os.cpu_count()} cores visible, shared)",
        "torch": torch.__version__,
        "sbi": None if sbi_estimator is None else __import__("sbi").__version__,
        "command": "OMP_NUM_THREADS=1 .venv/bin/python benchmarks/pairs.py" + (" --quick" if args.quick else "")
        + (f" --seed {args.seed}" if args.seed else ""),
        "config": cfg,
        "set_sizes": SET_SIZES,
        "results": {m: {str(n): r for n, r in res.items()} for m, res in results.items()},
        "compute": compute,
        "targets": targets,
        "total_wall_s": time.perf_counter() - t_start,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=1))
    print(f"wrote {args.out} (total {out['total_wall_s']:.0f} s)")
    figures(results, compute, grid, plot_cache, args.figures)


def figures(results: dict, compute: dict, grid: torch.Tensor, cache: dict, folder: Path) -> None:
    """docs/figures/pairs_coverage_kl.png, pairs_posteriors.png, pairs_compute.png."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from lightning_papers.methods.pairs.plots import coverage_kl_figure, posterior_figure

    folder.mkdir(parents=True, exist_ok=True)
    curves = {m: r for m, r in results.items() if m != "PAIRS@1000"}
    fig = coverage_kl_figure(curves)
    fig.axes[1].plot([DEPLOY_N], [max(results["PAIRS@1000"][DEPLOY_N]["kl"], 1e-4)], "k*", ms=10, label="PAIRS@1000")
    fig.axes[1].legend(fontsize=7)
    fig.savefig(folder / "pairs_coverage_kl.png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    fig = posterior_figure(grid, SET_SIZES, cache, "θ = log variance")
    fig.suptitle("PAIRS vs exact posterior, three evaluation sets per N", y=1.08)
    fig.savefig(folder / "pairs_posteriors.png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(6, 2.8))
    names = list(compute)
    ax.barh(names, [compute[m]["cpu_s"] for m in names])
    ax.set(xscale="log", xlabel="training CPU time, s (1 torch thread)", title="training compute per method")
    fig.tight_layout()
    fig.savefig(folder / "pairs_compute.png", dpi=110, bbox_inches="tight")
    plt.close(fig)


if __name__ == "__main__":
    main()
