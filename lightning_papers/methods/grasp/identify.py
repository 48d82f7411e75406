"""Unsupervised identification of the spurious direction from a naive LoRA fine-tune's weights (GRASP step 2).

Procedure (arXiv 2605.27676 describes identification from the fine-tune's LoRA weights without labels; only its
abstract is public, so the choices here are ours and are listed in ``docs/grasp.md``):

1. Every LoRA pair ``<X>.lora_A.<adapter>.weight`` ``[r, in]`` / ``<X>.lora_B.<adapter>.weight`` ``[out, r]`` gives
   the scaled update ``ΔW_X = s·B·A`` (``s = alpha / r``; ``alpha / sqrt(r)`` for rsLoRA). Its singular values are
   those of the ``r × r`` core ``s·R_B R_Aᵀ`` (QR of ``B`` and ``Aᵀ``), so no ``[out, in]`` matrix is formed.
2. **Writers** (``o_proj``, ``down_proj``: their outputs are added to the residual stream) are stacked across layers,
   ``M = [ΔW_1 | … | ΔW_K]`` (``d_model × Σ in``); the top-``rank`` left singular vectors of ``M`` are the direction
   ``v̂``. ``M Mᵀ = C Cᵀ`` with ``C = [s·B_k R_{A_k}ᵀ]_k`` (``d_model × K·r``), whose SVD is exact and cheap.
3. **Readers** (``q/k/v_proj``, ``gate_proj``, ``up_proj``: they read the normalised residual stream) are stacked
   along rows, ``N = [ΔW_1; …; ΔW_K]``; its top-``rank`` right singular vectors are the reader direction.
4. The premise of the method (one dominant, isolated spurious direction; the task spread over many smaller ones) is
   checked by the spectral gap ``σ1/σ2`` of ``M`` (and ``σ_rank/σ_(rank+1)``), saved in ``report`` next to
   per-module rows (top singular values, per-module gap, ``|cos|`` of each module's top output direction with
   ``v̂``).
5. The number of directions is ``rank`` (default 1), or, with ``energy=f``, the smallest ``k`` whose top-``k``
   singular values hold a share ``≥ f`` of ``Σσ²`` (:func:`energy_rank`, per side). With a weak gap the optimiser
   can re-route the factor through the next directions once the first is removed, so a rank that captures the
   factor's energy, or one picked by a held-out score (:func:`choose_rank`), may be needed (our extension).

The subspace puts ``v̂`` on the **output side of each writer's** ``<X>.lora_B.<adapter>`` and the reader direction on
the **input side of each reader's** ``<X>.lora_A.<adapter>``. Keys are state-dict prefixes, hence the
``named_modules()`` names of the module that produced the checkpoint. The sign of ``v̂`` is not identifiable from
weights alone (``vvᵀ`` does not depend on it); we fix it so that its largest-magnitude entry is positive.

Command line::

    python -m lightning_papers.methods.grasp.identify --ckpt runs/grasp/naive/last.ckpt --out runs/grasp/subspace.pt
    python -m lightning_papers.methods.grasp.identify --adapter path/to/peft_adapter_dir --out subspace.pt --rank 2
    python -m lightning_papers.methods.grasp.identify --ckpt runs/grasp/naive/last.ckpt --out sub.pt --energy 0.5
"""

from __future__ import annotations

import argparse
import json
import math
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import torch

from lightning_papers.methods.grasp.premise import expectation
from lightning_papers.methods.grasp.subspace import SpuriousSubspace

_LORA_KEY = re.compile(r"^(?P<module>.+)\.lora_(?P<which>[AB])\.(?P<adapter>[^.]+)\.weight$")
WRITERS = ("o_proj", "down_proj")
READERS = ("q_proj", "k_proj", "v_proj", "gate_proj", "up_proj")


def lora_pairs(state_dict: Mapping[str, torch.Tensor]) -> dict[tuple[str, str], tuple[torch.Tensor, torch.Tensor]]:
    """``{(module, adapter): (A [r, in], B [out, r])}`` for every complete LoRA pair in ``state_dict``."""
    a: dict[tuple[str, str], torch.Tensor] = {}
    b: dict[tuple[str, str], torch.Tensor] = {}
    for key, value in state_dict.items():
        m = _LORA_KEY.match(key)
        if m is None or not isinstance(value, torch.Tensor) or value.ndim != 2:
            continue
        (a if m["which"] == "A" else b)[(m["module"], m["adapter"])] = value
    pairs = {}
    for k in sorted(set(a) & set(b)):
        if a[k].shape[0] != b[k].shape[1]:
            raise ValueError(f"{k[0]}: lora_A {tuple(a[k].shape)} and lora_B {tuple(b[k].shape)} ranks differ")
        pairs[k] = (a[k].detach().to("cpu", torch.float64), b[k].detach().to("cpu", torch.float64))
    return pairs


def _sign_fix(u: torch.Tensor) -> torch.Tensor:
    """Flip each column so that its largest-magnitude entry is positive (a deterministic sign convention)."""
    idx = u.abs().argmax(0)
    return u * torch.sign(u[idx, torch.arange(u.shape[1])])[None, :]


def _gap(sv: torch.Tensor, k: int) -> float:
    if sv.numel() <= k:
        return math.inf
    lo = float(sv[k])
    return math.inf if lo <= 1e-12 * max(float(sv[0]), 1e-300) else float(sv[k - 1]) / lo


def top_directions(
    factors: Sequence[torch.Tensor], rank: int, exclude: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-``rank`` left singular vectors (float64, sign-fixed) and all singular values of ``[F_1 | F_2 | …]``.

    With ``exclude`` (orthonormal ``[d, j]``), every column first loses its component along ``span(exclude)``: the
    result is the top of the part of the stacked update orthogonal to an already-found subspace (iterative GRASP).
    """
    f = torch.cat([x.to(torch.float64) for x in factors], dim=1)
    if exclude is not None:
        e = exclude.to(f)
        f = f - e @ (e.T @ f)
    u, s, _ = torch.linalg.svd(f, full_matrices=False)
    return _sign_fix(u[:, :rank]), s


def stacked_factors(
    pairs: Mapping[tuple[str, str], tuple[torch.Tensor, torch.Tensor]],
    scaling: float,
    writers: Sequence[str] = WRITERS,
    readers: Sequence[str] = READERS,
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """The thin factors whose stacking has the spectra of ``M`` and ``N`` (see the module docstring).

    Returns ``({"<X>.lora_B.<adapter>": s·B R_Aᵀ [out, r]}, {"<X>.lora_A.<adapter>": (s·R_B A)ᵀ [in, r]})`` for the
    writers and readers among ``pairs`` (from :func:`lora_pairs`): ``M Mᵀ = Σ (s B R_Aᵀ)(s B R_Aᵀ)ᵀ`` and
    ``Nᵀ N = Σ (s R_B A)ᵀ (s R_B A)``.
    """
    writer_cols: dict[str, torch.Tensor] = {}
    reader_rows: dict[str, torch.Tensor] = {}
    for (module, adapter), (a, b) in pairs.items():
        role = module.split(".")[-1]
        if role in writers:
            writer_cols[f"{module}.lora_B.{adapter}"] = scaling * b @ torch.linalg.qr(a.T)[1].T
        elif role in readers:
            reader_rows[f"{module}.lora_A.{adapter}"] = (scaling * torch.linalg.qr(b)[1] @ a).T
    return writer_cols, reader_rows


def energy_shares(singular_values: torch.Tensor) -> torch.Tensor:
    """Cumulative share of ``Σσ²`` held by the top-1, top-2, … singular values (sorted descending), float64."""
    sq = torch.as_tensor(singular_values, dtype=torch.float64).flatten().square().sort(descending=True).values
    return sq.cumsum(0) / sq.sum().clamp_min(1e-300)


def energy_rank(singular_values: torch.Tensor | Sequence[float], energy: float) -> int:
    """The smallest ``k`` with ``Σ_{i≤k} σ_i² ≥ energy · Σ_i σ_i²`` (rank chosen by the spectrum's energy).

    Example: ``σ = (3, 2, 1, 1)`` has shares ``9/15, 13/15, 14/15, 1``, so ``energy`` 0.5 gives 1, 0.8 gives 2, 0.9
    gives 3 and 1.0 gives 4. Unlike the gap ``σ_k/σ_(k+1)``, this does not need an isolated top direction.
    """
    if isinstance(energy, bool) or not isinstance(energy, (int, float)) or not 0.0 < energy <= 1.0:
        raise ValueError(f"energy must be a fraction in (0, 1], got {energy!r}")
    sv = torch.as_tensor(singular_values, dtype=torch.float64).flatten()
    if sv.numel() == 0 or not torch.isfinite(sv).all() or (sv < 0).any() or float(sv.abs().sum()) == 0.0:
        raise ValueError(f"singular values must be finite, >= 0 and not all zero, got {sv.tolist()[:8]}")
    k = int((energy_shares(sv) < energy - 1e-12).sum()) + 1  # tolerance: energy=1.0 must not miss by rounding
    return min(k, sv.numel())


def choose_rank(
    candidates: Sequence[int],
    score_fn: Callable[[int], float],
    lower_is_better: bool = True,
    tolerance: float = 0.0,
) -> tuple[int, dict[int, float]]:
    """Pick the number of removed directions by a held-out score: ``score_fn(k)`` for every candidate ``k``.

    Args:
        candidates: Ranks to try (distinct integers >= 1), evaluated in increasing order.
        score_fn: ``k -> score``, e.g. identify with ``rank=k``, fine-tune with the projection and measure the
            off-task drift on held-out prompts (include a task penalty if removing more directions can hurt it).
        lower_is_better: Whether a lower score is better (drift, loss); ``False`` for accuracies.
        tolerance: Take the smallest ``k`` whose score is within ``tolerance`` of the best one (removing fewer
            directions leaves the fine-tune more freedom); ``0`` takes the best, ties to the smaller ``k``.

    Returns:
        ``(best k, {k: score})``.
    """
    ks = list(candidates)
    if not ks or any(isinstance(k, bool) or not isinstance(k, int) or k < 1 for k in ks) or len(set(ks)) != len(ks):
        raise ValueError(f"candidates must be distinct integers >= 1, got {ks!r}")
    if not callable(score_fn):
        raise ValueError(f"score_fn must be callable k -> float, got {type(score_fn).__name__}")
    if isinstance(tolerance, bool) or not isinstance(tolerance, (int, float)) or not 0 <= tolerance < math.inf:
        raise ValueError(f"tolerance must be a finite number >= 0, got {tolerance!r}")
    scores: dict[int, float] = {}
    for k in sorted(ks):
        value = score_fn(k)
        if isinstance(value, torch.Tensor) and value.numel() == 1:
            value = value.item()
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ValueError(f"score_fn({k}) must return a finite number, got {value!r}")
        scores[k] = float(value)
    sign = 1.0 if lower_is_better else -1.0
    best = min(sign * v for v in scores.values())
    return next(k for k, v in scores.items() if sign * v <= best + tolerance), scores


def identify(
    state_dict: Mapping[str, torch.Tensor],
    scaling: float,
    rank: int | None = None,
    writers: Sequence[str] = WRITERS,
    readers: Sequence[str] = READERS,
    energy: float | None = None,
) -> SpuriousSubspace:
    """Find the spurious subspace of a naive LoRA fine-tune from its weights alone (no labels, no activations).

    Args:
        state_dict: Any mapping holding ``<X>.lora_A.<adapter>.weight`` / ``<X>.lora_B.<adapter>.weight`` pairs (a
            Lightning checkpoint's ``state_dict``, ``peft_model.state_dict()``, …); other keys are ignored.
        scaling: LoRA scale ``s`` (``lora_alpha / lora_rank``; ``lora_alpha / sqrt(lora_rank)`` for rsLoRA).
        rank: Number of directions ``k`` kept per side (default 1: one spurious direction). Not with ``energy``.
        writers: Last name components of modules that write into the residual stream (output side).
        readers: Last name components of modules that read the residual stream (input side).
        energy: Instead of ``rank``: per side, the smallest ``k`` whose singular values hold this share of the
            stacked spectrum's ``Σσ²`` (:func:`energy_rank`); the report states ``k`` and the share captured.

    Returns:
        A :class:`SpuriousSubspace` with output-side bases for ``<X>.lora_B.<adapter>`` of every writer, input-side
        bases for ``<X>.lora_A.<adapter>`` of every reader, per-module singular values, ``direction`` (the writer
        basis ``[d_model, rank]``) and a ``report`` with the spectral gaps.
    """
    if not (isinstance(scaling, (int, float)) and math.isfinite(scaling) and scaling > 0):
        raise ValueError(f"scaling must be a finite number > 0 (lora_alpha / lora_rank), got {scaling!r}")
    if rank is not None and energy is not None:
        raise ValueError(f"give either rank ({rank!r}) or energy ({energy!r}), not both")
    if energy is not None:
        energy_rank([1.0], energy)  # validates the fraction before any work
    elif rank is None:
        rank = 1
    if energy is None and (isinstance(rank, bool) or not isinstance(rank, int) or rank < 1):
        raise ValueError(f"rank must be an integer >= 1, got {rank!r}")
    overlap = set(writers) & set(readers)
    if overlap:
        raise ValueError(f"a module cannot be both a writer and a reader: {sorted(overlap)}")
    pairs = lora_pairs(state_dict)
    if not pairs:
        raise ValueError(
            "no LoRA pairs found: expected keys '<module>.lora_A.<adapter>.weight' and "
            "'<module>.lora_B.<adapter>.weight' (e.g. from a peft model's state_dict)"
        )
    s = float(scaling)
    singular_values: dict[str, torch.Tensor] = {}
    top_out: dict[str, torch.Tensor] = {}
    for (module, adapter), (a, b) in pairs.items():
        q_b, r_b = torch.linalg.qr(b)
        q_a, r_a = torch.linalg.qr(a.T)
        u_core, sv, _ = torch.linalg.svd(s * r_b @ r_a.T)
        name = module if sum(1 for m, _ in pairs if m == module) == 1 else f"{module}.{adapter}"
        singular_values[name] = sv.to(torch.float32)
        top_out[name] = q_b @ u_core[:, 0]
    writer_cols, reader_rows = stacked_factors(pairs, s, writers, readers)
    if not writer_cols and not reader_rows:
        roles = sorted({m.split(".")[-1] for m, _ in pairs})
        raise ValueError(f"none of the LoRA modules {roles} is a writer {list(writers)} or a reader {list(readers)}")
    if all(float(sv[0]) == 0.0 for sv in singular_values.values()):
        raise ValueError("every LoRA update B·A is zero: was the adapter trained? (peft initialises B = 0)")

    report: dict = {"scaling": s, "rank": rank, "energy": energy, "writers": None, "readers": None, "modules": []}
    output: dict[str, torch.Tensor] = {}
    inputs: dict[str, torch.Tensor] = {}
    direction = None
    for group, cols, dest in (("writers", writer_cols, output), ("readers", reader_rows, inputs)):
        if not cols:
            continue
        dims = {v.shape[0] for v in cols.values()}
        if len(dims) != 1:
            raise ValueError(
                f"{group} must share one residual-stream size, got feature sizes {sorted(dims)}: "
                f"pass the right `{group}` names"
            )
        d = dims.pop()
        if energy is None and rank > d:
            raise ValueError(f"rank={rank} exceeds the {group}' feature size {d}")
        basis, sv = top_directions(list(cols.values()), d)
        if float(sv[0]) == 0.0:
            raise ValueError(f"every {group[:-1]} update is zero: cannot identify a direction")
        k = energy_rank(sv, energy) if energy is not None else rank
        basis, shares = basis[:, :k], energy_shares(sv)
        dest.update({key: basis.to(torch.float32) for key in cols})
        report[group] = {
            "modules": list(cols),
            "rank": k,
            "stacked_singular_values": sv[: max(16, k + 1)].tolist(),
            "cumulative_energy": shares[: max(16, k + 1)].tolist(),
            "energy_target": energy,
            "energy_captured": float(shares[min(k, shares.numel()) - 1]),
            "gap": _gap(sv, 1),
            "gap_at_rank": _gap(sv, k),
        }
        if group == "writers":
            direction = basis.to(torch.float32)
    if energy is not None:  # the chosen k (writers' if any): what a single number "rank" means elsewhere
        report["rank"] = (report["writers"] or report["readers"])["rank"]
    writer_modules = {k.rsplit(".lora_B.", 1)[0] for k in writer_cols}
    for name, sv in singular_values.items():
        module = name if name in {m for m, _ in pairs} else name.rsplit(".", 1)[0]
        role = module.split(".")[-1]
        kind = "writer" if role in writers else "reader" if role in readers else "other"
        cos = None
        if direction is not None and module in writer_modules:
            cos = float((direction.double().T @ top_out[name]).norm() / top_out[name].norm().clamp_min(1e-300))
        report["modules"].append(
            {"module": name, "role": kind, "sv": sv[:8].tolist(), "gap": _gap(sv, 1), "cos_direction": cos}
        )
    return SpuriousSubspace(
        output=output, input=inputs, singular_values=singular_values, direction=direction, report=report
    )


# ---- command line ------------------------------------------------------------------------------------------
def _from_checkpoint(path: Path) -> tuple[dict[str, torch.Tensor], float]:
    try:
        ckpt = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001 - Lightning checkpoints may hold non-tensor hyper-parameters
        ckpt = torch.load(str(path), map_location="cpu", weights_only=False)
    hp = ckpt.get("hyper_parameters") or {}
    if "lora_alpha" not in hp or "lora_rank" not in hp:
        raise ValueError(
            f"{path}: hyper_parameters lack lora_alpha / lora_rank (the module must call "
            "save_hyperparameters() with those argument names); pass --scaling instead"
        )
    r = float(hp["lora_rank"])
    return ckpt["state_dict"], float(hp["lora_alpha"]) / (math.sqrt(r) if hp.get("use_rslora") else r)


def _from_adapter(path: Path, adapter_name: str) -> tuple[dict[str, torch.Tensor], float]:
    cfg = json.loads((path / "adapter_config.json").read_text())
    if cfg.get("rank_pattern") or cfg.get("alpha_pattern"):
        raise ValueError(f"{path}: per-module rank_pattern/alpha_pattern is not supported (one scaling for all)")
    if (path / "adapter_model.safetensors").is_file():
        from safetensors.torch import load_file

        raw = load_file(str(path / "adapter_model.safetensors"))
    else:
        raw = torch.load(str(path / "adapter_model.bin"), map_location="cpu", weights_only=True)
    # peft drops the adapter name from saved keys: put it back so keys equal the live model's module names.
    sd = {re.sub(r"\.lora_([AB])\.weight$", rf".lora_\1.{adapter_name}.weight", k): v for k, v in raw.items()}
    r = float(cfg["r"])
    return sd, float(cfg["lora_alpha"]) / (math.sqrt(r) if cfg.get("use_rslora") else r)


def _rank_text(report: Mapping) -> str:
    """Report lines on the chosen rank: ``k``, the share of ``Σσ²`` it captures, the cumulative shares."""
    lines = []
    for group in ("writers", "readers"):
        g = report.get(group)
        if g:
            how = f"energy >= {g['energy_target']:g}" if g.get("energy_target") is not None else "given"
            shares = ", ".join(f"{x:.3f}" for x in g["cumulative_energy"][:8])
            captured = g["energy_captured"]
            lines.append(
                f"\n  {group} rank k = {g['rank']} ({how}) captures {captured:.3f} of sum sigma^2; "
                f"cumulative shares: {shares}"
            )
    return "".join(lines)


def main(argv: Sequence[str] | None = None) -> SpuriousSubspace:
    """``python -m lightning_papers.methods.grasp.identify``: write a subspace file and its report."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--ckpt", type=Path, help="Lightning checkpoint of the naive LoRA fine-tune")
    src.add_argument("--adapter", type=Path, help="peft adapter directory (adapter_config.json + weights)")
    p.add_argument("--out", type=Path, required=True, help="where to write the subspace (torch.save file)")
    how_many = p.add_mutually_exclusive_group()
    how_many.add_argument("--rank", type=int, default=None, help="directions kept per side (default 1)")
    how_many.add_argument(
        "--energy",
        type=float,
        default=None,
        help="instead of --rank: per side, the smallest k holding this share of sum(sigma^2)",
    )
    p.add_argument("--scaling", type=float, default=None, help="override the LoRA scale alpha/r")
    p.add_argument("--adapter-name", default="default", help="peft adapter name used in module names")
    p.add_argument("--writers", nargs="+", default=list(WRITERS), help="residual-stream writer module names")
    p.add_argument("--readers", nargs="*", default=list(READERS), help="residual-stream reader module names")
    args = p.parse_args(argv)
    sd, scaling = _from_checkpoint(args.ckpt) if args.ckpt else _from_adapter(args.adapter, args.adapter_name)
    sub = identify(
        sd, args.scaling or scaling, rank=args.rank, writers=args.writers, readers=args.readers, energy=args.energy
    )
    sub.save(args.out)
    stem = args.out.with_suffix("")
    text = sub.report_text() + _rank_text(sub.report)
    if sub.report.get("writers"):  # what removing it should do, from the premise study
        sub.report["expectation"] = expectation(sub.report["writers"]["gap"])
        text += "\n  " + sub.report["expectation"]
    stem.with_name(stem.name + ".report.txt").write_text(text + "\n")
    stem.with_name(stem.name + ".report.json").write_text(json.dumps(sub.report, indent=1) + "\n")
    print(text)
    print(f"wrote {args.out} and {stem.name}.report.txt/.json")
    return sub


if __name__ == "__main__":
    main()
