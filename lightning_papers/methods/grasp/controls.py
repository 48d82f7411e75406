"""Controls for GRASP: a random subspace shaped like an identified one, and orienting a direction's sign.

The random-direction control runs the very same ``GradientProjection`` with bases drawn uniformly at random (QR of
a Gaussian matrix) instead of the identified ones, so any drift reduction it shows is what projection costs or
gives by itself. Command line::

    python -m lightning_papers.methods.grasp.controls random --like runs/grasp/debug/subspace.pt \\
        --out runs/grasp/debug/random_subspace.pt --seed 0
    python -m lightning_papers.methods.grasp.controls orient --ckpt runs/grasp/debug/ckpt/naive.ckpt \\
        --subspace runs/grasp/debug/subspace.pt --data runs/grasp/debug/train.jsonl \\
        --tokenizer runs/grasp/debug/tokenizer --out runs/grasp/debug/oriented.pt
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from lightning_papers.methods.grasp.subspace import SpuriousSubspace, orthonormalize


def random_basis(shape: tuple[int, ...], generator: torch.Generator) -> torch.Tensor:
    """A uniformly random orthonormal basis [features, r] (Haar, via QR of a Gaussian matrix with sign fix)."""
    if len(shape) != 2 or shape[1] > shape[0]:
        raise ValueError(f"basis shape must be [features, r] with r <= features, got {tuple(shape)}")
    q, r = torch.linalg.qr(torch.randn(*shape, generator=generator))
    return q * torch.sign(r.diagonal())[None, :]


def random_like(subspace: SpuriousSubspace, seed: int = 0) -> SpuriousSubspace:
    """A ``SpuriousSubspace`` whose every basis (and ``direction``) is replaced by a random one of the same shape.

    ``direction`` is one random residual direction shared by all writers (the identified subspace of a
    rank-1 global identification also has one shared direction), so the control differs only in *which* direction.
    """
    g = torch.Generator().manual_seed(seed)
    direction = None
    if subspace.direction is not None:
        direction = random_basis(tuple(subspace.direction.shape), g)
    output = {}
    for name, basis in subspace.output.items():
        if (
            direction is not None
            and basis.shape == direction.shape
            and subspace.direction is not None
            and torch.allclose(basis.abs(), subspace.direction.abs(), atol=1e-5)
        ):
            output[name] = direction.clone()  # writers sharing the identified direction share the random one
        else:
            output[name] = random_basis(tuple(basis.shape), g)
    inputs = {name: random_basis(tuple(b.shape), g) for name, b in subspace.input.items()}
    return SpuriousSubspace(
        output=output,
        input=inputs,
        singular_values=dict(subspace.singular_values),
        direction=direction,
        report={"control": f"random bases (seed {seed}) shaped like the identified subspace"},
    )


def load_lora_module(ckpt: str | Path):  # noqa: ANN201 - a LoRACausalLM (imported lazily)
    """A ``LoRACausalLM`` rebuilt from a Lightning checkpoint, in eval mode, with no intervention hooks installed.

    LightningCLI adds ``_class_path``/``_instantiator`` entries to the saved hyper-parameters; only the constructor's
    own arguments are passed back, and a baseline's intervention is switched off (the bare fine-tuned model).
    """
    import inspect

    from lightning_papers.methods.grasp.module import LoRACausalLM

    if not Path(ckpt).is_file():
        raise FileNotFoundError(
            f"checkpoint {str(ckpt)!r} does not exist; run `lightning-papers fit --config configs/grasp/naive.yaml`"
        )
    state = torch.load(ckpt, map_location="cpu", weights_only=False)
    names = set(inspect.signature(LoRACausalLM.__init__).parameters) - {"self"}
    hp = {k: v for k, v in state["hyper_parameters"].items() if k in names}
    hp["intervention"], hp["steer_direction"] = "none", None
    module = LoRACausalLM(**hp)
    module.configure_model()
    module.on_load_checkpoint(state)  # frozen base weights a checkpoint left out come from model_path
    module.load_state_dict(state["state_dict"])
    return module.eval()


def orient(
    ckpt: str | Path, direction: torch.Tensor, data: str | Path, tokenizer: str | Path, layer: int | None = None
) -> torch.Tensor:
    """``direction`` [d, r] with its first column's sign set along the naive adapter's mean residual write.

    Loads the naive ``LoRACausalLM`` checkpoint, compares the residual stream after ``layer`` (default: the last
    adapted / steered layer) with and without the adapter on the completion tokens of ``data`` (the training
    JSONL), and flips the direction so the mean change along it is positive. Unsupervised: it uses only the
    fine-tune data and the two models.
    """
    from lightning_papers.datamodules.jsonl_text import encode_row, load_tokenizer, pad_collate, read_jsonl
    from lightning_papers.methods.grasp.steering import mean_write_sign

    module = load_lora_module(ckpt)
    tok = load_tokenizer(tokenizer)
    rows = read_jsonl(data)
    enc = [encode_row(tok, r["prompt"], r["completion"], 512, True, False) for r in rows]
    batches = [pad_collate(enc[i : i + 32], tok.pad_token_id) for i in range(0, len(enc), 32)]
    layer = module.steer_layers[-1] if layer is None else layer
    basis = orthonormalize(direction, "direction")
    sign = mean_write_sign(module.model, None, batches, basis, layer)
    return basis * torch.tensor([sign] + [1.0] * (basis.shape[1] - 1))


def main(argv: list[str] | None = None) -> None:
    from lightning_papers.methods.grasp.steering import load_direction

    ap = argparse.ArgumentParser(description="GRASP controls: random subspaces and direction orientation.")
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("random", help="write a random-direction control subspace shaped like a given one")
    r.add_argument("--like", required=True, help="subspace file written by identify")
    r.add_argument("--out", required=True, help="where to write the random subspace")
    r.add_argument("--seed", type=int, default=0)
    o = sub.add_parser("orient", help="sign the identified direction along the naive adapter's mean write")
    o.add_argument("--ckpt", required=True, help="naive LoRACausalLM checkpoint")
    o.add_argument("--subspace", required=True, help="subspace file written by identify")
    o.add_argument("--data", required=True, help="training JSONL")
    o.add_argument("--tokenizer", required=True, help="tokenizer directory")
    o.add_argument("--out", required=True, help="where to write {'direction': tensor}")
    o.add_argument("--layer", type=int, default=None)
    args = ap.parse_args(argv)
    like = args.like if args.cmd == "random" else args.subspace
    if not Path(like).is_file():
        raise SystemExit(
            f"{like!r} does not exist; run `python -m lightning_papers.methods.grasp.identify --ckpt <naive.ckpt> "
            f"--out {like}` first"
        )
    if args.cmd == "random":
        random_like(SpuriousSubspace.load(args.like), seed=args.seed).save(args.out)
    else:
        torch.save(
            {"direction": orient(args.ckpt, load_direction(args.subspace), args.data, args.tokenizer, args.layer)},
            args.out,
        )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
