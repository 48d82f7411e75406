"""SourceTargetDataModule: simulator ground truth, source-only standardisation, user tables and their errors."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch

from lightning_papers.datamodules.source_target import SourceTargetDataModule

ROOT = Path(__file__).resolve().parents[2]


def test_simulator_standardises_on_source_and_knows_its_truth() -> None:
    dm = SourceTargetDataModule(n_source=20_000, n_target=20_000, n_eval=500, dim_a=2)
    dm.setup()
    assert dm.source_x.shape == (20_000, 5) and dm.source_a.shape == (20_000, 2) and dm.target_x.shape == (20_000, 5)
    assert torch.allclose(dm.source_x.mean(0), torch.zeros(5), atol=1e-4)
    assert torch.allclose(dm.source_x.std(0), torch.ones(5), atol=1e-3)
    assert float(dm.target_x[:, 0].mean()) == pytest.approx(0.5 / float(dm.x_std[0]), abs=0.03)  # target shift
    w = dm.true_density_ratio(dm.source_x)
    assert float(w.mean()) == pytest.approx(1.0, abs=0.03)  # E_S[w] = 1
    assert float((w * dm.source_x[:, 0]).mean()) == pytest.approx(float(dm.target_x[:, 0].mean()), abs=0.05)
    resid = dm.source_y - dm.true_mu(dm.source_x, dm.source_a)
    assert float(resid.var()) == pytest.approx(dm.noise_var, rel=0.05)
    m, s = dm.true_source_a(dm.source_x)
    z = (dm.source_a - m) / s
    assert float(z.mean()) == pytest.approx(0.0, abs=0.02) and float(z.std()) == pytest.approx(1.0, abs=0.02)
    assert len(dm.eval_sets) == 15  # the symmetric grid


def _write(path: Path, header: list[str], rows: list[list[object]]) -> str:
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(header)
        w.writerows(rows)
    return str(path)


def _tables(tmp_path: Path, target_header: list[str] | None = None, bad: tuple[str, object] | None = None,
            y_values: tuple[int, int] = (0, 1)) -> dict:
    rows = [[i, i % 3, i % 5 * 0.1, y_values[i % 2]] for i in range(20)]
    src = _write(tmp_path / "s.csv", ["x1", "x2", "a", "y"], rows)
    th = target_header or ["x1", "x2"]
    trows = [[i + 0.5 for _ in th] for i in range(12)]
    if bad is not None:
        trows[3][th.index(bad[0])] = bad[1]
    tgt = _write(tmp_path / "t.csv", th, trows)
    return dict(source=src, target=tgt, x_columns=["x1", "x2"], a_columns=["a"], y_column="y", outcome="binary")


def test_example_tables_load(tmp_path: Path) -> None:
    dm = SourceTargetDataModule(
        source=str(ROOT / "examples/drum/source.csv"), target=str(ROOT / "examples/drum/target.csv"),
        x_columns=["age", "bmi", "sbp"], a_columns=["biomarker"], y_column="event", target_y_column="event",
        id_column="patient_id", outcome="binary")
    dm.setup()
    assert dm.source_x.shape == (1500, 3) and dm.target_x.shape == (1000, 3) and dm.target_ids[0] == "T0000"
    assert torch.allclose(dm.source_x.mean(0), torch.zeros(3), atol=1e-4)  # standardised with source statistics
    assert float(dm.target_x[:, 0].mean()) > 0.4  # the target is older: its mean is not re-centred
    assert set(dm.eval_sets) == {"target"}


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"target_header": ["x1", "x2", "a"]}, "source-only column\\(s\\) \\['a'\\]"),
        ({"target_header": ["x1"]}, "target table has no column 'x2'"),
        ({"target_header": ["x1", "x2", "site"]}, "columns \\['site'\\] with no role"),
        ({"bad": ("x2", "nan")}, "column 'x2' row 4: value 'nan' is NaN"),
        ({"bad": ("x1", "abc")}, "column 'x1' row 4: value 'abc' is not a number"),
        ({"y_values": (0, 2)}, "binary outcome but holds 2"),
    ],
)
def test_bad_tables_fail_with_the_column(tmp_path: Path, kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        SourceTargetDataModule(**_tables(tmp_path, **kwargs)).setup()


def test_target_a_can_be_dropped_explicitly(tmp_path: Path) -> None:
    dm = SourceTargetDataModule(**_tables(tmp_path, target_header=["x1", "x2", "a"]), drop_target_a=True)
    dm.setup()
    assert dm.target_x.shape == (12, 2)


def test_bad_arguments_fail_early(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="needs a target table"):
        SourceTargetDataModule(source="s.csv", x_columns=["x"], a_columns=["a"], y_column="y")
    with pytest.raises(ValueError, match="more than one role"):
        SourceTargetDataModule(source="s.csv", target="t.csv", x_columns=["x", "a"], a_columns=["a"], y_column="y")
    with pytest.raises(ValueError, match="dim_x >= 2"):
        SourceTargetDataModule(dim_x=1)
    with pytest.raises(ValueError, match="simulator"):
        SourceTargetDataModule(**_tables(tmp_path)).true_mu(torch.zeros(1, 2), torch.zeros(1, 1))


def test_parquet_needs_pyarrow_and_other_suffixes_are_refused(tmp_path: Path) -> None:
    from lightning_papers.datamodules.source_target import read_table

    (tmp_path / "t.parquet").write_bytes(b"PAR1")
    (tmp_path / "t.xlsx").write_bytes(b"")
    try:
        import pyarrow  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match="pyarrow"):
            read_table(tmp_path / "t.parquet")
    with pytest.raises(ValueError, match="expected .csv or .parquet"):
        read_table(tmp_path / "t.xlsx")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_table(tmp_path / "missing.csv")
