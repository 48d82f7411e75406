"""Source/target pairs with structurally missing covariates: a simulator with ground truth and user tables.

The source records shared covariates X, source-only covariates A and an outcome Y; the target records X only.
A datamodule here holds float32 tensors ``source_x (n, d_x)``, ``source_a (n, d_a)``, ``source_y (n,)`` and
``target_x (m, d_x)``, all standardised with statistics fitted **on the source only** (Y is left in its units),
plus optional labelled target sets used only for evaluation (``eval_sets``: name -> (x, y)). The method draws its
own minibatches, so the train loader is a clock of ``steps_per_epoch`` dummy batches.

Simulator (DRUM reconstruction, arXiv 2605.24212, shift experiment): X ~ N(0, I_dx) in the source and
N(0.5 e_1, I_dx) in the target; A_j | X ~ N(0.8 x_j, 1) in the source (j = 1..d_a); mu(x, a) = x_1 + 0.5 x_2 +
sum_j (a_j + 0.5 a_j^2) (convex in a, so a variance shift moves E[Y|X]); Y = mu + N(0, 0.5^2) (continuous) or
Y ~ Bernoulli(sigmoid(mu - 1.5)) (binary). Target scenarios: A_j | X ~ N(0.8 x_j + s, tau^2) over a grid,
``symmetric`` (s in {0, +-0.5, +-1}, tau in {0.5, 1, 1.5}) or ``variance`` (s in {0, +-0.5}, tau in {1, 1.5, 2}).
"""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from lightning.pytorch import LightningDataModule
from torch.utils.data import DataLoader

from lightning_papers.datamodules.step_clock import StepClock, single_step_loader

GRIDS: dict[str, list[tuple[float, float]]] = {
    "symmetric": [(s, t) for s in (-1.0, -0.5, 0.0, 0.5, 1.0) for t in (0.5, 1.0, 1.5)],
    "variance": [(s, t) for s in (-0.5, 0.0, 0.5) for t in (1.0, 1.5, 2.0)],
}
NOISE_SD = 0.5
BINARY_OFFSET = 1.5
TARGET_SHIFT = 0.5


def true_mu(x: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    """mu(x, a) = x_1 + 0.5 x_2 + sum_j (a_j + 0.5 a_j^2) in raw (unstandardised) units."""
    lin = x[..., 0] + (0.5 * x[..., 1] if x.shape[-1] > 1 else 0.0)
    return lin + (a + 0.5 * a**2).sum(-1)


def simulate(
    n: int, dim_x: int, dim_a: int, outcome: str, target: bool, shift: float, tau: float, g: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(x, a, y)`` of the simulator in raw units; ``target`` shifts X, (shift, tau) is the A|X scenario."""
    x = torch.randn(n, dim_x, generator=g, dtype=torch.float64)
    if target:
        x[:, 0] += TARGET_SHIFT
    a = 0.8 * x[:, :dim_a] + shift + tau * torch.randn(n, dim_a, generator=g, dtype=torch.float64)
    mu = true_mu(x, a)
    if outcome == "continuous":
        y = mu + NOISE_SD * torch.randn(n, generator=g, dtype=torch.float64)
    else:
        y = torch.bernoulli(torch.sigmoid(mu - BINARY_OFFSET), generator=g)
    return x, a, y


def read_table(path: str | Path) -> dict[str, list[str]]:
    """Columns of a CSV (header row) or Parquet file as lists of strings/numbers, keyed by column name."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"table {str(p)!r} does not exist")
    if p.suffix == ".parquet":
        try:
            import pyarrow.parquet as pq
        except ImportError as err:  # optional dependency
            raise ImportError(f"reading {p.name} needs pyarrow (pip install pyarrow), or save it as .csv") from err
        return {k: list(v) for k, v in pq.read_table(p).to_pydict().items()}
    if p.suffix != ".csv":
        raise ValueError(f"unsupported table {str(p)!r}: expected .csv or .parquet")
    with p.open(newline="") as fh:
        rows = list(csv.reader(fh))
    if not rows:
        raise ValueError(f"{p} is empty; expected a header row naming the columns")
    header = [h.strip() for h in rows[0]]
    for i, row in enumerate(rows[1:], start=2):
        if len(row) != len(header):
            raise ValueError(f"{p} line {i} has {len(row)} fields, the header has {len(header)}")
    return {h: [r[j] for r in rows[1:]] for j, h in enumerate(header)}


def numeric_column(table: dict[str, list], name: str, where: str) -> np.ndarray:
    """Column ``name`` as float64, failing with the column, row and value on a non-numeric, NaN or inf cell."""
    if name not in table:
        raise ValueError(f"{where} has no column {name!r}; its columns are {sorted(table)}")
    out = np.empty(len(table[name]))
    for i, v in enumerate(table[name]):
        try:
            out[i] = float(v)
        except (TypeError, ValueError):
            raise ValueError(f"{where} column {name!r} row {i + 1}: value {v!r} is not a number") from None
        if not math.isfinite(out[i]):
            raise ValueError(f"{where} column {name!r} row {i + 1}: value {v!r} is NaN or infinite")
    return out


class SourceTargetDataModule(LightningDataModule):
    """Labelled source (X, A, Y) and unlabelled target (X): the simulator, or the user's CSV/Parquet tables.

    Args:
        source: ``simulated`` or a path to the source table (``.csv`` with a header row, or ``.parquet``).
        target: Path to the target table (needed with a source table; ignored by the simulator).
        x_columns: Shared covariates, present in both tables (tables only).
        a_columns: Source-only covariates (tables only). The target table must not contain them: they are
            structurally missing there, and a target that records them is refused unless ``drop_target_a``.
        y_column: Outcome column of the source table.
        target_y_column: Optional outcome column of the target table, used only for evaluation, never in training.
        id_column: Optional row identifier of the target table, copied into the prediction file.
        ignore_columns: Other columns allowed in either table and ignored; any column not named is an error.
        drop_target_a: Drop A columns found in the target table instead of refusing the table.
        outcome: ``continuous`` (squared loss) or ``binary`` (0/1 values, log-loss).
        dim_x: Simulator: dimension of X (>= 2).
        dim_a: Simulator: dimension of A (1 to dim_x).
        n_source: Simulator: source rows.
        n_target: Simulator: unlabelled target rows.
        n_eval: Simulator: labelled rows per target scenario (evaluation only).
        grid: Simulator: scenario grid of target A|X, ``symmetric`` or ``variance``.
        steps_per_epoch: Training steps per epoch.
        seed: Seed of the simulator.
    """

    def __init__(
        self,
        source: str = "simulated",
        target: str | None = None,
        x_columns: list[str] | None = None,
        a_columns: list[str] | None = None,
        y_column: str | None = None,
        target_y_column: str | None = None,
        id_column: str | None = None,
        ignore_columns: list[str] | None = None,
        drop_target_a: bool = False,
        outcome: Literal["continuous", "binary"] = "continuous",
        dim_x: int = 5,
        dim_a: int = 1,
        n_source: int = 5000,
        n_target: int = 5000,
        n_eval: int = 4000,
        grid: Literal["symmetric", "variance"] = "symmetric",
        steps_per_epoch: int = 100,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if outcome not in ("continuous", "binary"):
            raise ValueError(f"outcome must be 'continuous' or 'binary', got {outcome!r}")
        if grid not in GRIDS:
            raise ValueError(f"grid must be one of {sorted(GRIDS)}, got {grid!r}")
        if steps_per_epoch < 1:
            raise ValueError(f"steps_per_epoch must be >= 1, got {steps_per_epoch}")
        if source == "simulated":
            if dim_x < 2 or not 1 <= dim_a <= dim_x:
                raise ValueError(f"need dim_x >= 2 and 1 <= dim_a <= dim_x, got dim_x={dim_x}, dim_a={dim_a}")
            if min(n_source, n_target, n_eval) < 10:
                raise ValueError(f"n_source, n_target, n_eval must be >= 10, got {n_source}, {n_target}, {n_eval}")
        else:
            if target is None:
                raise ValueError(f"source table {source!r} needs a target table: set target=...")
            if not x_columns or not a_columns or not y_column:
                raise ValueError(
                    f"tables need x_columns, a_columns and y_column; got {x_columns!r}, {a_columns!r}, {y_column!r}"
                )
            roles = [*x_columns, *a_columns, y_column]
            dup = sorted({c for c in roles if roles.count(c) > 1})
            if dup:
                raise ValueError(f"columns {dup} are given more than one role (x_columns/a_columns/y_column)")
        self.save_hyperparameters()
        self.outcome = outcome
        self.source_x: torch.Tensor | None = None
        self.eval_sets: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self.target_ids: list[str] = []
        self.x_names: list[str] = []
        self.a_names: list[str] = []

    # ----------------------------------------------------------------- loading
    def setup(self, stage: str | None = None) -> None:
        if self.source_x is not None:
            return
        if self.hparams.source == "simulated":
            xs, as_, ys, xt, evals = self._simulate()
            self.target_ids = [str(i) for i in range(xt.shape[0])]
            self.x_names = [f"x{j + 1}" for j in range(xs.shape[1])]
            self.a_names = [f"a{j + 1}" for j in range(as_.shape[1])]
        else:
            xs, as_, ys, xt, evals = self._load_tables()
        self.x_mean, self.x_std = xs.mean(0), xs.std(0).clamp_min(1e-8)
        self.a_mean, self.a_std = as_.mean(0), as_.std(0).clamp_min(1e-8)
        self.source_x, self.source_a = self.std_x(xs), ((as_ - self.a_mean) / self.a_std).float()
        self.source_y, self.target_x = ys.float(), self.std_x(xt)
        self.eval_sets = {k: (self.std_x(x), y.float()) for k, (x, y) in evals.items()}

    def std_x(self, x: torch.Tensor) -> torch.Tensor:
        """Standardise raw X with the source statistics."""
        return ((x - self.x_mean) / self.x_std).float()

    def _simulate(self) -> tuple:
        h = self.hparams
        g = torch.Generator().manual_seed(h.seed)
        xs, as_, ys = simulate(h.n_source, h.dim_x, h.dim_a, h.outcome, False, 0.0, 1.0, g)
        xt, _, _ = simulate(h.n_target, h.dim_x, h.dim_a, h.outcome, True, 0.0, 1.0, g)
        evals = {}
        for s, tau in GRIDS[h.grid]:
            x, _, y = simulate(h.n_eval, h.dim_x, h.dim_a, h.outcome, True, s, tau, g)
            evals[f"s={s:+g},tau={tau:g}"] = (x, y)
        return xs, as_, ys, xt, evals

    def _load_tables(self) -> tuple:
        h = self.hparams
        xc, ac, yc = list(h.x_columns), list(h.a_columns), h.y_column
        ignore = set(h.ignore_columns or [])
        src, tgt = read_table(h.source), read_table(h.target)
        extra = sorted(set(src) - set(xc) - set(ac) - {yc} - ignore)
        if extra:
            raise ValueError(f"source table has columns {extra} with no role; name them in ignore_columns")
        in_target = [c for c in ac if c in tgt]
        if in_target and not h.drop_target_a:
            raise ValueError(
                f"target table contains source-only column(s) {in_target}; A is structurally missing in the "
                "target and is refused there (set drop_target_a: true to drop them)"
            )
        allowed = set(xc) | set(in_target) | {h.target_y_column, h.id_column} | ignore
        extra = sorted(set(tgt) - allowed)
        if extra:
            raise ValueError(f"target table has columns {extra} with no role; name them in ignore_columns")
        for c in xc:
            if c not in tgt:
                raise ValueError(f"target table has no column {c!r} (an x_column); its columns are {sorted(tgt)}")
        xs = torch.tensor(np.stack([numeric_column(src, c, "source table") for c in xc], 1))
        as_ = torch.tensor(np.stack([numeric_column(src, c, "source table") for c in ac], 1))
        ys = torch.tensor(numeric_column(src, yc, "source table"))
        xt = torch.tensor(np.stack([numeric_column(tgt, c, "target table") for c in xc], 1))
        evals = {}
        if h.target_y_column is not None:
            evals["target"] = (xt, torch.tensor(numeric_column(tgt, h.target_y_column, "target table")))
        if h.outcome == "binary":
            checks = [("source", ys, yc)]
            if evals:
                checks.append(("target", evals["target"][1], h.target_y_column))
            for where, y, col in checks:
                bad = y[(y != 0) & (y != 1)]
                if bad.numel():
                    raise ValueError(f"{where} column {col!r} is a binary outcome but holds {bad[0].item():g}; use 0/1")
        for name, t in (("source", xs), ("target", xt)):
            if t.shape[0] < 10:
                raise ValueError(f"{name} table has {t.shape[0]} rows; need at least 10")
        self.target_ids = [str(v) for v in tgt[h.id_column]] if h.id_column else [str(i) for i in range(len(xt))]
        self.x_names, self.a_names = xc, ac
        return xs, as_, ys, xt, evals

    # ----------------------------------------------------------------- ground truth (simulator only)
    def _raw(self, x: torch.Tensor, a: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        xr = x.double() * self.x_std + self.x_mean
        return xr, (None if a is None else a.double() * self.a_std + self.a_mean)

    def true_mu(self, x: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        """E[Y | x, a] for standardised (x, a) (a probability for a binary outcome); simulator only."""
        self._need_simulator("true_mu")
        xr, ar = self._raw(x, a)
        mu = true_mu(xr, ar)
        return (mu if self.outcome == "continuous" else torch.sigmoid(mu - BINARY_OFFSET)).float()

    def true_source_a(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and sd of the standardised A | x in the source; simulator only."""
        self._need_simulator("true_source_a")
        xr, _ = self._raw(x)
        mean = (0.8 * xr[:, : self.a_mean.shape[0]] - self.a_mean) / self.a_std
        return mean.float(), (1.0 / self.a_std).expand_as(mean).float()

    def true_density_ratio(self, x: torch.Tensor) -> torch.Tensor:
        """p_T(x) / p_S(x) for standardised x; simulator only."""
        self._need_simulator("true_density_ratio")
        x1 = self._raw(x)[0][:, 0]
        return torch.exp(TARGET_SHIFT * x1 - TARGET_SHIFT**2 / 2).float()

    @property
    def noise_var(self) -> float:
        """Var(Y | x, a) of the continuous simulator."""
        return NOISE_SD**2

    def _need_simulator(self, what: str) -> None:
        if self.hparams.source != "simulated":
            raise ValueError(f"{what} is ground truth of the simulator; source={self.hparams.source!r} has none")
        self.setup()

    # ----------------------------------------------------------------- loaders
    @property
    def dim_x(self) -> int:
        self.setup()
        return int(self.source_x.shape[1])  # type: ignore[union-attr]

    @property
    def dim_a(self) -> int:
        self.setup()
        return int(self.source_a.shape[1])

    def train_dataloader(self) -> DataLoader:
        return StepClock.of(self.hparams.steps_per_epoch)

    def val_dataloader(self) -> DataLoader:
        return single_step_loader()

    def test_dataloader(self) -> DataLoader:
        return single_step_loader()

    def predict_dataloader(self) -> DataLoader:
        return single_step_loader()
