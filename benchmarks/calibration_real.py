"""AdaptiveCalibration on a real image classifier whose deployment stream shifts, against standard recalibrators.

A small CNN is trained on clean Fashion-MNIST (``ShiftingImageDataModule``; scikit-learn digits if the Debian
package is absent), then its top-label confidence is recalibrated online on three ordered streams: ``piecewise``
(clean, rotation, blur, noise, contrast segments), ``drift`` (rotation severity rising from 0) and ``clean``
(stationary). Methods: raw; temperature scaling fitted once on clean validation data; temperature refitted on a
sliding window; online Platt scaling; online histogram binning; ``AdaptiveCalibration`` with ``mapping="group"`` and
``"interpolate"``, run through ``Trainer.validate`` (the callback's own code path). Metrics per segment and overall:
ECE (15 equal-width bins, torchmetrics; 15 equal-mass bins), Brier, NLL, AUROC of confidence for correctness, exact
online ℓ1/T and ℓ2/T. Also the digits example: a CNN on 8×8 digits, 400 validation rows × 4 epochs, then test.

    flock /tmp/bench.lock .venv/bin/python benchmarks/calibration_real.py --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import json
import platform
import time
import warnings
from datetime import date
from pathlib import Path

import numpy as np
import torch
from lightning.pytorch import LightningModule, Trainer, seed_everything
from torch import nn
from torchmetrics.functional.classification import binary_auroc, binary_calibration_error

from lightning_papers.callbacks import AdaptiveCalibration
from lightning_papers.datamodules.shifting_images import ShiftingImageDataModule
from lightning_papers.methods.adaptive_calibration.recalibration_baselines import (
    fit_temperature,
    online_histogram_binning,
    online_platt,
    sliding_temperature,
    temperature_confidence,
)
from lightning_papers.metrics.calibration import l1_calibration_error, l2_calibration_error

ROOT = Path(__file__).resolve().parents[1]
METHODS = ("raw", "ts_fixed", "ts_window", "online_platt", "hist_binning", "adaptive_group", "adaptive_interp")
SETTLE = 400  # rounds after a shift excluded from the "settled" per-segment ECE


class CNNClassifier(LightningModule):
    """A small CNN; validation/test steps return logits and labels, as AdaptiveCalibration(task="multiclass") reads."""

    def __init__(self, n_classes: int = 10) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(),
            nn.AdaptiveAvgPool2d(4), nn.Flatten(), nn.Linear(512, n_classes),
        )  # fmt: skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch, batch_idx):
        return nn.functional.cross_entropy(self(batch[0]), batch[1])

    def validation_step(self, batch, batch_idx):
        return {"probs": self(batch[0]), "target": batch[1]}

    test_step = validation_step

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=3e-3)


def quiet_trainer(callbacks: list | None = None, **kw) -> Trainer:
    return Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                   accelerator="cpu", devices=1, callbacks=callbacks or [], **kw)  # fmt: skip


def equal_mass_ece(p: np.ndarray, y: np.ndarray, n_bins: int = 15) -> float:
    order = np.argsort(p, kind="stable")
    return float(sum(abs(p[b].sum() - y[b].sum()) for b in np.array_split(order, n_bins)) / len(p))


def metrics(p: np.ndarray, y: np.ndarray) -> dict[str, float]:
    pt, yt = torch.from_numpy(p).float(), torch.from_numpy(y).long()
    q = np.clip(p, 1e-7, 1 - 1e-7)
    return {
        "ece": float(binary_calibration_error(pt, yt, n_bins=15)),
        "ece_mass": equal_mass_ece(p, y),
        "brier": float(np.mean((p - y) ** 2)),
        "nll": float(-np.mean(y * np.log(q) + (1 - y) * np.log1p(-q))),
        "auroc": float(binary_auroc(pt, yt)) if 0 < y.mean() < 1 else float("nan"),
        "l1_per_T": l1_calibration_error(p, y) / len(p),
        "l2_per_T": l2_calibration_error(p, y) / len(p),
        "accuracy": float(y.mean()),
    }


def logits_of(model: CNNClassifier, x: torch.Tensor) -> np.ndarray:
    with torch.no_grad():
        return torch.cat([model(x[i : i + 1000]) for i in range(0, len(x), 1000)]).double().numpy()


def adaptive_run(model: CNNClassifier, dm: ShiftingImageDataModule, mapping: str) -> tuple[np.ndarray, float, float]:
    """The callback on the ordered stream through Trainer.validate; its calibrated confidences, and the validation
    time with and without it."""
    cb = AdaptiveCalibration(task="multiclass", scores="logits", mapping=mapping, n_groups=10, log_figures=False)
    tic = time.perf_counter()
    quiet_trainer().validate(model, dm.val_dataloader(), verbose=False)
    plain = time.perf_counter() - tic
    tic = time.perf_counter()
    with warnings.catch_warnings(record=True):
        quiet_trainer([cb]).validate(model, dm.val_dataloader(), verbose=False)
    return cb.last_stream["validate"]["cal"], time.perf_counter() - tic, plain


def stream_methods(model, dm, t0: float) -> tuple[dict[str, np.ndarray], np.ndarray, dict[str, float]]:
    x, labels = dm.stream_set.tensors
    z, labels = logits_of(model, x), labels.numpy()
    conf = temperature_confidence(z, 1.0)
    correct = (z.argmax(1) == labels).astype(float)
    out = {
        "raw": conf,
        "ts_fixed": temperature_confidence(z, t0),
        "ts_window": sliding_temperature(z, labels, start=t0, window=1000, every=dm.batch_size),
        "online_platt": online_platt(conf, correct),
        "hist_binning": online_histogram_binning(conf, correct),
    }
    timing = {}
    for mapping in ("group", "interpolate"):
        cal, with_cb, plain = adaptive_run(model, dm, mapping)
        out[f"adaptive_{mapping[:6] if mapping == 'interpolate' else mapping}"] = cal
        timing[mapping] = {"with_callback_s": with_cb, "without_s": plain}
    return out, correct, timing


def evaluate(out: dict[str, np.ndarray], correct: np.ndarray, segment: np.ndarray) -> dict:
    res = {}
    for name, p in out.items():
        per_seg = {}
        for k in np.unique(segment).tolist():
            at = np.flatnonzero(segment == k)
            per_seg[str(k)] = {
                **metrics(p[at], correct[at]),
                "ece_settled": metrics(p[at[SETTLE:]], correct[at[SETTLE:]])["ece"],
            }
        res[name] = {"overall": metrics(p, correct), "segments": per_seg}
    return res


def run_seed(seed: int, args: argparse.Namespace) -> dict:
    seed_everything(seed)
    common = dict(source=args.source, n_train=args.n_train, n_clean=args.n_clean, n_stream=args.n_stream, seed=seed)
    base = ShiftingImageDataModule(**common, batch_size=128)
    base.setup()
    model = CNNClassifier()
    quiet_trainer(max_epochs=args.epochs, limit_val_batches=0).fit(model, base.train_dataloader())
    model.eval()
    base.batch_size = args.stream_batch  # the deployment stream arrives in small batches
    cx, cy = base.clean_set.tensors
    half = len(cy) // 2
    t0 = fit_temperature(logits_of(model, cx[:half]), cy[:half].numpy())
    result = {"temperature_clean": t0, "dataset": base.dataset_name, "streams": {}}
    streams = {
        "piecewise": base,
        "drift": ShiftingImageDataModule(**common, schedule="drift", severity=1.0, batch_size=args.stream_batch),
        "clean": ShiftingImageDataModule(**common, corruptions=("none",), batch_size=args.stream_batch),
    }
    for name, dm in streams.items():
        dm.setup()
        if name == "clean":  # the stationary check: the clean half not used to fit the temperature
            dm.stream_set = torch.utils.data.TensorDataset(cx[half:], cy[half:])
            dm.segment = np.zeros(len(cy) - half, dtype=np.int64)
        out, correct, timing = stream_methods(model, dm, t0)
        segment = dm.segment if name != "drift" else np.arange(len(correct)) * 4 // len(correct)  # drift: quarters
        result["streams"][name] = {"metrics": evaluate(out, correct, segment), "timing": timing,
                                   "segment_names": dm.segment_names if name == "piecewise" else None}  # fmt: skip
        if args.figures and seed == args.seeds[0] and name == "piecewise":
            figures(out, correct, dm)
        print(f"seed {seed} {name}: " + ", ".join(f"{m} {result['streams'][name]['metrics'][m]['overall']['ece']:.4f}"
                                                  for m in out), flush=True)  # fmt: skip
    return result


def figures(out: dict[str, np.ndarray], correct: np.ndarray, dm: ShiftingImageDataModule) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 3.6))
    win, stride = 800, 100
    starts = range(0, len(correct) - win + 1, stride)
    for name, p in out.items():
        pt, yt = torch.from_numpy(p).float(), torch.from_numpy(correct).long()
        ece = [float(binary_calibration_error(pt[s : s + win], yt[s : s + win], n_bins=15)) for s in starts]
        ax.plot([s + win for s in starts], ece, label=name, lw=1.8 if name.startswith("adaptive") else 1)
    for k in range(1, len(dm.segment_names)):
        ax.axvline(np.flatnonzero(dm.segment == k)[0], color="grey", ls=":")
    ax.set_xlabel("round (end of an 800-round window); segments: " + ", ".join(dm.segment_names))
    ax.set_ylabel("windowed ECE (15 bins)")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(ROOT / "docs/figures/calibration_real_over_time.png", dpi=110)
    shown = ("raw", "ts_fixed", "online_platt", "adaptive_interp")
    fig, axes = plt.subplots(1, len(dm.segment_names), figsize=(3 * len(dm.segment_names), 3.2), sharey=True)
    edges = np.linspace(0, 1, 11)
    for k, (ax, seg) in enumerate(zip(axes, dm.segment_names)):
        at = dm.segment == k
        ax.plot([0, 1], [0, 1], "k:", lw=1)
        for name in shown:
            p, y = out[name][at], correct[at]
            b = np.clip(np.digitize(p, edges) - 1, 0, 9)
            cnt = np.bincount(b, minlength=10)
            m = cnt >= 10
            ax.plot((np.bincount(b, p, 10)[m] / cnt[m]), (np.bincount(b, y, 10)[m] / cnt[m]), "o-", ms=3, label=name)
        ax.set_title(f"segment {k}: {seg}")
        ax.set_xlabel("confidence (bins with >= 10 rounds)")
    axes[0].set_ylabel("accuracy")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(ROOT / "docs/figures/calibration_real_reliability.png", dpi=110)


def digits_example(seed: int = 0) -> dict:
    """A CNN on scikit-learn digits, AdaptiveCalibration on 400 clean validation rows × 4 epochs, then test."""
    out = {}
    for mapping in ("group", "interpolate"):
        seed_everything(seed)
        dm = ShiftingImageDataModule(source="digits", n_train=1000, n_stream=400, n_clean=397,
                                     corruptions=("none",), batch_size=50, seed=seed)  # fmt: skip
        cb = AdaptiveCalibration(task="multiclass", scores="logits", mapping=mapping, log_figures=False)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            tr = quiet_trainer([cb], max_epochs=4)
            tr.fit(CNNClassifier(), datamodule=dm)
            tr.test(tr.lightning_module, datamodule=dm, verbose=False)
        said = [str(w.message) for w in caught if "AdaptiveCalibration" in str(w.message)]
        out[mapping] = {"validate": cb.last_results["validate"], "test": cb.last_results["test"], "warnings": said}
        print(f"digits {mapping}: test ECE raw {cb.last_results['test']['test_cal/raw_ece']:.4f} -> "
              f"{cb.last_results['test']['test_cal/ece']:.4f}; warnings: {said}", flush=True)  # fmt: skip
    return out


def mean_std(values: list[float]) -> str:
    return f"{np.mean(values):.4f} ± {np.std(values):.4f}" if len(values) > 1 else f"{values[0]:.4f}"


def tables(result: dict) -> str:
    """Markdown tables (mean ± std over seeds) of the JSON result."""
    runs = list(result["runs"].values())
    lines = []
    keys = ("ece", "ece_mass", "brier", "nll", "auroc", "l1_per_T", "l2_per_T")
    for stream in ("piecewise", "drift", "clean"):
        lines += [
            f"\n**{stream}** (overall)\n",
            "| method | " + " | ".join(keys) + " |",
            "|---" * (len(keys) + 1) + "|",
        ]
        for m in METHODS:
            cells = [mean_std([r["streams"][stream]["metrics"][m]["overall"][k] for r in runs]) for k in keys]
            lines.append(f"| {m} | " + " | ".join(cells) + " |")
        segs = list(runs[0]["streams"][stream]["metrics"]["raw"]["segments"])
        if len(segs) > 1:
            names = runs[0]["streams"][stream]["segment_names"] or [f"quarter {int(k) + 1}" for k in segs]
            for key in ("ece", "ece_settled"):
                lines += [f"\n**{stream}**, per segment: {key}\n", "| method | " + " | ".join(names) + " |",
                          "|---" * (len(names) + 1) + "|"]  # fmt: skip
                for m in METHODS:
                    cells = [
                        mean_std([r["streams"][stream]["metrics"][m]["segments"][k][key] for r in runs]) for k in segs
                    ]
                    lines.append(f"| {m} | " + " | ".join(cells) + " |")
    lines += ["\n**validation time** (s, with / without the callback)\n", "| stream | mapping | with | without |",
              "|---|---|---|---|"]  # fmt: skip
    for stream in ("piecewise", "drift", "clean"):
        for mapping in ("group", "interpolate"):
            t = [r["streams"][stream]["timing"][mapping] for r in runs]
            w, wo = (mean_std([x[k] for x in t]) for k in ("with_callback_s", "without_s"))
            lines.append(f"| {stream} | {mapping} | {w} | {wo} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--source", default="auto")
    ap.add_argument("--n_train", type=int, default=12000)
    ap.add_argument("--n_clean", type=int, default=4000)
    ap.add_argument("--n_stream", type=int, default=8000)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--stream_batch", type=int, default=50, help="batch size of the streams (the map is per batch)")
    ap.add_argument("--no_figures", dest="figures", action="store_false", help="do not rewrite docs/figures")
    ap.add_argument("--out", default=str(ROOT / "benchmarks/results/calibration_real.json"))
    args = ap.parse_args()
    torch.set_num_threads(1)
    tic = time.perf_counter()
    runs = {str(s): run_seed(s, args) for s in args.seeds}
    result = {"date": str(date.today()), "hardware": f"{platform.machine()} CPU, 1 torch thread", "args": vars(args),
              "runs": runs, "digits_example": digits_example()}  # fmt: skip
    result["wall_s"] = time.perf_counter() - tic
    Path(args.out).write_text(json.dumps(result, indent=1))
    Path(args.out).with_suffix(".md").write_text(tables(result))
    print(f"wrote {args.out} in {result['wall_s']:.0f} s")


if __name__ == "__main__":
    main()
