"""The PAIRS algorithm in plain torch (no Trainer): NPE loss, stage-1 and end-to-end training, stage-2 head refit.

* Stage 1 (PAIRS §2): train encoder + head with −log q(θ | z, log N) on sets with N cycling through {1, 2}.
* Stage 2: freeze the encoder, :func:`~lightning_papers.methods.pairs.data.pre_aggregate` a bank of
  (θ, z, log N) once, then train only the head on the bank (:func:`train_head`): its cost per step does not
  depend on N, and the encoder is never called inside the loop.
* The end-to-end baseline is :func:`train_npe` with the deployment N as the only set size.
"""

from __future__ import annotations

import copy
import math
from typing import Literal

import torch

from lightning_papers.methods.pairs.data import EmbeddingBank, SimulatedSetStream, pre_aggregate
from lightning_papers.methods.pairs.encoder import DeepSetEncoder
from lightning_papers.methods.pairs.heads import HeadKind, PosteriorHead, build_head
from lightning_papers.methods.pairs.simulators import SetSimulator


def npe_loss(encoder: DeepSetEncoder, head: PosteriorHead, theta: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Mean of −log q(θ | mean-pooled φ(x), log N) over a batch of sets ``x`` [S, N, d] with parameters [S, p]."""
    return -head.log_prob(theta, encoder(x), math.log(x.shape[1])).mean()


def cosine_lr(step: int, total: int, lr: float, warmup: int = 0) -> float:
    """Linear warm-up for ``warmup`` steps, then cosine decay from ``lr`` to ``lr / 100`` at ``total`` steps."""
    if step < warmup:
        return lr * (step + 1) / warmup
    t = (step - warmup) / max(1, total - warmup)
    return lr * (0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * min(1.0, t))))


@torch.no_grad()
def init_head_normalization(encoder: DeepSetEncoder, head: PosteriorHead, stream: SimulatedSetStream) -> None:
    """Set the head's context standardisation from one batch per set size of ``stream`` through ``encoder``."""
    gen = torch.Generator().manual_seed(stream.seed + 12345)
    zs, log_ns = [], []
    for n in stream.set_sizes:
        _, x = stream.simulator.sample(stream.batch_size, n, gen)
        zs.append(encoder(x.float().to(next(encoder.parameters()).device)))
        log_ns.append(torch.full((stream.batch_size, 1), math.log(n), device=zs[-1].device))
    head.set_normalization(torch.cat(zs), torch.cat(log_ns))


def train_npe(
    encoder: DeepSetEncoder, head: PosteriorHead, stream: SimulatedSetStream, lr: float = 1e-3, epochs: int = 1
) -> list[float]:
    """Train encoder and head jointly (stage 1, or end to end) for ``epochs`` passes over ``stream``.

    Adam with cosine decay. Returns the loss of every step.
    """
    device = next(encoder.parameters()).device
    init_head_normalization(encoder, head, stream)
    params = [*encoder.parameters(), *head.parameters()]
    opt = torch.optim.Adam(params, lr=lr)
    total, step, losses = epochs * len(stream), 0, []
    encoder.train()
    head.train()
    for _ in range(epochs):
        for batch in stream:
            for g in opt.param_groups:
                g["lr"] = cosine_lr(step, total, lr, warmup=min(100, total // 10))
            loss = npe_loss(encoder, head, batch["theta"].to(device), batch["x"].to(device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 10.0)
            opt.step()
            losses.append(loss.item())
            step += 1
    return losses


def reset_parameters(module: torch.nn.Module) -> None:
    """Re-initialise every sub-module that has ``reset_parameters`` (buffers are kept)."""
    for m in module.modules():
        if m is not module and hasattr(m, "reset_parameters"):
            m.reset_parameters()


def train_head(
    head: PosteriorHead,
    bank: EmbeddingBank,
    steps: int,
    batch_size: int = 256,
    lr: float = 1e-3,
    reset: bool = True,
    generator: torch.Generator | None = None,
    optimizer: Literal["adam", "lbfgs"] = "adam",
) -> list[float]:
    """Stage 2: fit the head alone on the stored (θ, z, log N) triples; no encoder anywhere in this loop.

    Args:
        head: The head to fit (its context standardisation is reset from the bank).
        bank: Output of ``pre_aggregate``.
        steps: Adam steps, or the maximum number of L-BFGS iterations.
        batch_size: Triples per Adam step (L-BFGS always uses the whole bank).
        lr: Peak Adam learning rate (cosine decay); unused by L-BFGS (strong-Wolfe line search).
        reset: Re-initialise the head's weights first ("retrain"); ``False`` finetunes the stage-1 head.
        generator: Random source of the minibatch indices.
        optimizer: ``"adam"``: minibatch Adam with cosine decay. ``"lbfgs"``: full-batch L-BFGS on the bank. The
            bank is a fixed, small table (thousands of rows of dimension embed_dim + 1), so its exact loss and
            gradient are cheap, and a quasi-Newton method needs far fewer steps than minibatch Adam (measured in
            docs/pairs.md, "compute target").

    Returns:
        The loss of every Adam step, or of every L-BFGS function evaluation.
    """
    if steps < 1 or batch_size < 1:
        raise ValueError(f"steps and batch_size must be >= 1, got {steps} and {batch_size}")
    if optimizer not in ("adam", "lbfgs"):
        raise ValueError(f"optimizer must be 'adam' or 'lbfgs', got {optimizer!r}")
    device = next(head.parameters()).device
    theta, z, log_n = bank.theta.to(device), bank.z.to(device), bank.log_n.to(device)
    head.set_normalization(z, log_n)
    if reset:
        reset_parameters(head)
    head.train()
    if optimizer == "lbfgs":
        return _train_head_lbfgs(head, theta, z, log_n, steps)
    opt = torch.optim.Adam(head.parameters(), lr=lr)
    losses = []
    for step in range(steps):
        idx = torch.randint(len(bank), (min(batch_size, len(bank)),), generator=generator).to(device)
        for g in opt.param_groups:
            g["lr"] = cosine_lr(step, steps, lr, warmup=min(100, steps // 10))
        loss = -head.log_prob(theta[idx], z[idx], log_n[idx]).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


def _train_head_lbfgs(
    head: PosteriorHead, theta: torch.Tensor, z: torch.Tensor, log_n: torch.Tensor, max_iter: int
) -> list[float]:
    """Full-batch L-BFGS (history 20, strong-Wolfe line search) on −mean log q over the whole bank."""
    opt = torch.optim.LBFGS(
        head.parameters(),
        lr=1.0,
        max_iter=max_iter,
        history_size=20,
        line_search_fn="strong_wolfe",
        tolerance_grad=1e-9,
        tolerance_change=1e-12,
    )
    losses: list[float] = []

    def closure() -> torch.Tensor:
        opt.zero_grad(set_to_none=True)
        loss = -head.log_prob(theta, z, log_n).mean()
        loss.backward()
        losses.append(loss.item())
        return loss

    opt.step(closure)
    return losses


def fit_joint(
    simulator: SetSimulator,
    set_sizes: list[int],
    steps: int,
    batch_size: int = 256,
    head: HeadKind = "gaussian",
    embed_dim: int = 16,
    lr: float = 1e-3,
    seed: int = 0,
) -> tuple[DeepSetEncoder, PosteriorHead]:
    """A fresh encoder + head trained jointly for ``steps`` steps on sets with N cycling through ``set_sizes``.

    Stage 1 of PAIRS with ``set_sizes=[1, 2]`` (PAIRS §2), the N = 1-only baseline with ``[1]``, the end-to-end
    Deep Set with ``[N_deploy]``. Sizes follow the research note §2 (encoder 1→64→64→16, head 64-64).
    """
    torch.manual_seed(seed)
    encoder = DeepSetEncoder(simulator.x_dim, embed_dim)
    net = build_head(head, simulator.theta_dim, embed_dim)
    train_npe(encoder, net, SimulatedSetStream(simulator, set_sizes, batch_size, steps, seed), lr=lr)
    return encoder, net


def refit_head(
    encoder: DeepSetEncoder,
    head: PosteriorHead,
    simulator: SetSimulator,
    set_sizes: list[int],
    num_sets: int,
    steps: int,
    batch_size: int = 256,
    lr: float = 1e-3,
    reset: bool = True,
    seed: int = 0,
    chunk_elements: int = 2**17,
    optimizer: Literal["adam", "lbfgs"] = "adam",
) -> PosteriorHead:
    """Stage 2 of PAIRS: pre-aggregate ``num_sets`` sets at ``set_sizes`` with the frozen encoder, then fit a copy
    of ``head`` on the bank alone (:func:`train_head`, with ``optimizer``). ``head`` itself is left unchanged.
    ``seed`` fixes the simulations, the head's re-initialisation and the minibatches."""
    torch.manual_seed(seed)  # the head's re-initialisation
    gen = torch.Generator().manual_seed(seed)
    bank = pre_aggregate(encoder, simulator, num_sets, set_sizes, gen, chunk_elements)
    new = copy.deepcopy(head)
    train_head(new, bank, steps, batch_size, lr, reset=reset, generator=gen, optimizer=optimizer)
    return new
