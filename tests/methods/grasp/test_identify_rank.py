"""Choosing how many directions to remove: by the spectrum's energy, and by a held-out score (identify.py)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from lightning_papers.methods.grasp.identify import choose_rank, energy_rank, identify, main, top_directions
from lightning_papers.methods.grasp.subspace import orthonormalize

D_MODEL, D_IN, D_Q = 12, 10, 9


@pytest.mark.parametrize(("energy", "k"), [(0.5, 1), (0.6, 1), (0.61, 2), (0.8, 2), (0.9, 3), (0.95, 4), (1.0, 4)])
def test_energy_rank_on_a_hand_made_spectrum(energy: float, k: int) -> None:
    """σ = (3, 2, 1, 1): σ² = 9, 4, 1, 1 of 15, cumulative shares 0.6, 0.867, 0.933, 1."""
    assert energy_rank(torch.tensor([3.0, 2.0, 1.0, 1.0]), energy) == k
    assert energy_rank([1.0, 3.0, 1.0, 2.0], energy) == k  # the order given does not matter


def test_energy_rank_edge_cases_and_bad_input() -> None:
    assert energy_rank([2.0, 0.0, 0.0], 1.0) == 1  # zero singular values add no energy
    assert energy_rank([1.0] * 5, 1.0) == 5  # rounding of the cumulative sum must not push k past the end
    for bad in (0.0, 1.5, -0.1, math.nan, True):
        with pytest.raises(ValueError, match="energy must be a fraction in"):
            energy_rank([1.0], bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="not all zero"):
        energy_rank([0.0, 0.0], 0.5)
    with pytest.raises(ValueError, match="finite"):
        energy_rank([1.0, math.inf], 0.5)


def planted(sigmas: list[float], modules: int, role: str, seed: int) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """``modules`` LoRA pairs whose stacked update has singular values ``sqrt(modules) · sigmas`` along shared
    orthonormal directions (output side for writers, input side for readers); A / B orthonormal elsewhere."""
    g = torch.Generator().manual_seed(seed)
    r = len(sigmas)
    shared = orthonormalize(torch.randn(D_MODEL, r, generator=g))
    sd = {}
    for m in range(modules):
        other = orthonormalize(torch.randn(D_IN if role == "o_proj" else D_Q, r, generator=g))
        if role == "o_proj":  # ΔW = shared · diag(σ) · otherᵀ  [D_MODEL, D_IN]
            b, a = shared * torch.tensor(sigmas), other.T
        else:  # ΔW = other · diag(σ) · sharedᵀ  [D_Q, D_MODEL]
            b, a = other * torch.tensor(sigmas), shared.T
        sd[f"l.{m}.{role}.lora_A.default.weight"] = a
        sd[f"l.{m}.{role}.lora_B.default.weight"] = b
    return sd, shared


def test_identify_with_energy_chooses_k_per_side_and_reports_it() -> None:
    writers, p = planted([3.0, 2.0, 1.0, 1.0], modules=3, role="o_proj", seed=0)  # shares .6 .867 .933 1
    readers, v = planted([5.0, 1.0], modules=2, role="q_proj", seed=1)  # shares 25/26 = .962, 1
    sub = identify({**writers, **readers}, scaling=1.0, energy=0.8)
    w, r = sub.report["writers"], sub.report["readers"]
    assert (w["rank"], r["rank"], sub.report["rank"], sub.report["energy"]) == (2, 1, 2, 0.8)
    assert w["energy_captured"] == pytest.approx(13 / 15) and r["energy_captured"] == pytest.approx(25 / 26)
    assert w["energy_target"] == 0.8 and w["cumulative_energy"][:4] == pytest.approx([9 / 15, 13 / 15, 14 / 15, 1])
    assert w["stacked_singular_values"][:4] == pytest.approx([math.sqrt(3) * s for s in (3, 2, 1, 1)], rel=1e-5)
    assert w["gap_at_rank"] == pytest.approx(2.0, rel=1e-5)  # σ2/σ3 at the chosen k
    assert sub.direction.shape == (D_MODEL, 2)
    assert torch.linalg.svdvals(p[:, :2].T @ sub.direction).min() > 0.999  # the two strongest planted directions
    basis = sub.input["l.0.q_proj.lora_A.default"]
    assert basis.shape == (D_MODEL, 1) and float((basis[:, 0] @ v[:, 0]).abs()) > 0.999
    # an explicit rank still works and reports the share it captures
    sub1 = identify(writers, scaling=1.0, rank=3)
    assert sub1.report["writers"]["energy_captured"] == pytest.approx(14 / 15)
    assert sub1.report["writers"]["energy_target"] is None and sub1.report["rank"] == 3


def test_identify_rank_and_energy_are_exclusive() -> None:
    sd, _ = planted([2.0, 1.0], modules=1, role="o_proj", seed=2)
    with pytest.raises(ValueError, match=r"either rank \(2\) or energy \(0.5\)"):
        identify(sd, scaling=1.0, rank=2, energy=0.5)
    with pytest.raises(ValueError, match="energy must be a fraction"):
        identify(sd, scaling=1.0, energy=1.2)
    assert identify(sd, scaling=1.0).direction.shape == (D_MODEL, 1)  # neither: rank 1, as before


def test_cli_energy_flag_writes_k_and_share(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    sd, _ = planted([3.0, 2.0, 1.0, 1.0], modules=2, role="o_proj", seed=3)
    torch.save({"state_dict": sd, "hyper_parameters": {"lora_alpha": 4.0, "lora_rank": 4}}, tmp_path / "n.ckpt")
    sub = main(["--ckpt", str(tmp_path / "n.ckpt"), "--out", str(tmp_path / "s.pt"), "--energy", "0.9"])
    assert sub.direction.shape == (D_MODEL, 3)
    report = json.loads((tmp_path / "s.report.json").read_text())
    assert report["writers"]["rank"] == 3 and report["writers"]["energy_captured"] == pytest.approx(14 / 15)
    text = (tmp_path / "s.report.txt").read_text()
    assert "writers rank k = 3 (energy >= 0.9) captures 0.933" in text
    assert "rank k = 3" in capsys.readouterr().out
    with pytest.raises(SystemExit):  # argparse: not allowed with argument --rank
        main(["--ckpt", str(tmp_path / "n.ckpt"), "--out", str(tmp_path / "t.pt"), "--rank", "2", "--energy", "0.5"])
    assert "not allowed with" in capsys.readouterr().err


def test_top_directions_excludes_a_subspace() -> None:
    e = torch.eye(4, dtype=torch.float64)
    factors = [e[:, :1] * 3.0, e[:, 1:2] * 2.0 + e[:, :1] * 0.5, e[:, 2:3] * 1.0]
    basis, sv = top_directions(factors, 2)
    assert torch.linalg.svdvals(e[:, :2].T @ basis).min() > 0.999
    basis, sv = top_directions(factors, 2, exclude=e[:, :1])  # remove e1 from every column first
    assert torch.allclose(basis.abs(), e[:, 1:3], atol=1e-12)  # e2 (σ 2), then e3 (σ 1)
    assert sv[:3].tolist() == pytest.approx([2.0, 1.0, 0.0], abs=1e-12)


def test_choose_rank_picks_the_best_held_out_score() -> None:
    calls: list[int] = []

    def drift(k: int) -> float:  # toy held-out score: removing too few or too many directions is worse
        calls.append(k)
        return {1: 0.9, 2: 0.4, 3: 0.2, 4: 0.25, 8: 0.6}[k]

    k, scores = choose_rank([8, 1, 4, 2, 3], drift)
    assert k == 3 and scores == {1: 0.9, 2: 0.4, 3: 0.2, 4: 0.25, 8: 0.6} and calls == [1, 2, 3, 4, 8]
    assert choose_rank([1, 2, 3, 4], lambda k: -drift(k), lower_is_better=False)[0] == 3
    assert choose_rank([1, 2, 3, 4], drift, tolerance=0.25)[0] == 2  # smallest k within 0.25 of the best
    assert choose_rank([1, 2, 3], lambda k: 1.0)[0] == 1  # ties go to the fewest directions removed
    assert choose_rank([2], lambda k: torch.tensor(0.5))[1] == {2: 0.5}  # a 0-d tensor score is accepted


@pytest.mark.parametrize(
    ("candidates", "score", "kwargs", "message"),
    [
        ([], lambda k: 0.0, {}, "candidates must be distinct integers >= 1"),
        ([0, 1], lambda k: 0.0, {}, r"got \[0, 1\]"),
        ([1, 1], lambda k: 0.0, {}, "distinct"),
        ([1, 2], lambda k: math.nan if k == 2 else 0.0, {}, r"score_fn\(2\) must return a finite number, got nan"),
        ([1], lambda k: "low", {}, r"score_fn\(1\) must return a finite number"),
        ([1], lambda k: 0.0, {"tolerance": -1.0}, "tolerance must be a finite number >= 0"),
    ],
)
def test_choose_rank_bad_input(candidates: list, score: object, kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        choose_rank(candidates, score, **kwargs)  # type: ignore[arg-type]
