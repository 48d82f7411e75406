"""The PAIRS algorithm in plain torch (no Trainer): the step functions of both stages and the loops built on them.

* Stage 1 (arXiv 2605.07972 §2): encoder + head trained with −log q(θ | z, log N) on sets with N cycling through
  {1, 2}; one optimizer step is :func:`stage1_step` (Adam, cosine schedule from :func:`cosine_lr`, gradient norm
  clipped at 10).
* Stage 2: the encoder is frozen, a bank of (θ, z, log N) is pre-aggregated once
  (:func:`~lightning_papers.methods.pairs.bank.pre_aggregate`), and only the head is fitted on the bank; one
  optimizer step is :func:`head_step`: minibatch Adam (cosine schedule, minibatch drawn from a generator seeded by
  the step) or one full-batch L-BFGS iteration with a strong-Wolfe line search. The encoder is never called there.
* The end-to-end baseline is :func:`train_npe` with the deployment N as the only set size.

:class:`~lightning_papers.methods.pairs.module.PairsNPE` calls the same :func:`stage1_step`, :func:`prepare_head`,
:func:`make_head_optimizer` and :func:`head_step`, so a Lightning run and these loops take the same steps.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from typing import Literal

import torch

from lightning_papers.datamodules.set_simulators import SetSimulator, derived_seed, simulate_in_chunks
from lightning_papers.datamodules.simulated_sets import SimulatedSetStream
from lightning_papers.methods.pairs.bank import EmbeddingBank, pre_aggregate
from lightning_papers.methods.pairs.encoder import DeepSetEncoder
from lightning_papers.methods.pairs.heads import HeadKind, PosteriorHead, build_head

HeadOptimizer = Literal["adam", "lbfgs"]
CLIP_NORM = 10.0  # stage-1 gradient-norm clip


def npe_loss(encoder: DeepSetEncoder, head: PosteriorHead, theta: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Mean of −log q(θ | mean-pooled φ(x), log N) over a batch of sets ``x`` [S, N, d] with parameters [S, p]."""
    return -head.log_prob(theta, encoder(x), math.log(x.shape[1])).mean()


def cosine_lr(step: int, total: int, lr: float, warmup: int = 0) -> float:
    """Linear warm-up for ``warmup`` steps, then cosine decay from ``lr`` to ``lr / 100`` at ``total`` steps."""
    if step < warmup:
        return lr * (step + 1) / warmup
    t = (step - warmup) / max(1, total - warmup)
    return lr * (0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * min(1.0, t))))


def scheduled_lr(step: int, total: int, lr: float) -> float:
    """The learning rate of both stages' Adam at ``step`` of ``total``: :func:`cosine_lr` with min(100, total/10)
    warm-up steps."""
    return cosine_lr(step, total, lr, warmup=min(100, total // 10))


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


def stage1_step(
    encoder: DeepSetEncoder,
    head: PosteriorHead,
    optimizer: torch.optim.Optimizer,
    batch: dict[str, torch.Tensor],
    lr: float,
    backward: Callable[[torch.Tensor], None] = torch.Tensor.backward,
) -> torch.Tensor:
    """One joint step on ``batch`` ``{"theta", "x"}`` at learning rate ``lr``: NPE loss, ``backward`` (Lightning
    passes ``manual_backward``), gradient norm clipped at :data:`CLIP_NORM`, ``optimizer.step()``. Returns the loss."""
    device = next(encoder.parameters()).device
    for g in optimizer.param_groups:
        g["lr"] = lr
    loss = npe_loss(encoder, head, batch["theta"].to(device), batch["x"].to(device))
    optimizer.zero_grad(set_to_none=True)
    backward(loss)
    torch.nn.utils.clip_grad_norm_([*encoder.parameters(), *head.parameters()], CLIP_NORM)
    optimizer.step()
    return loss.detach()


def train_npe(
    encoder: DeepSetEncoder, head: PosteriorHead, stream: SimulatedSetStream, lr: float = 1e-3, epochs: int = 1
) -> list[float]:
    """Train encoder and head jointly (stage 1, or end to end) for ``epochs`` passes over ``stream`` with
    :func:`stage1_step` (Adam, :func:`scheduled_lr`). Returns the loss of every step."""
    init_head_normalization(encoder, head, stream)
    opt = torch.optim.Adam([*encoder.parameters(), *head.parameters()], lr=lr)
    total, step, losses = epochs * len(stream), 0, []
    encoder.train()
    head.train()
    for _ in range(epochs):
        for batch in stream:
            losses.append(stage1_step(encoder, head, opt, batch, scheduled_lr(step, total, lr)).item())
            step += 1
    return losses


def reset_parameters(module: torch.nn.Module, seed: int) -> None:
    """Re-initialise every sub-module that has ``reset_parameters`` (buffers are kept) from ``seed``, leaving the
    global random state as it was."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for m in module.modules():
            if m is not module and hasattr(m, "reset_parameters"):
                m.reset_parameters()


def prepare_head(head: PosteriorHead, bank: EmbeddingBank, reset: bool, seed: int) -> None:
    """Before stage 2: standardise the head's context on the bank and, if ``reset``, re-initialise it from ``seed``."""
    head.set_normalization(bank.z.to(head.ctx_loc.device), bank.log_n.to(head.ctx_loc.device))
    if reset:
        reset_parameters(head, seed)


def make_head_optimizer(head: PosteriorHead, kind: HeadOptimizer, lr: float) -> torch.optim.Optimizer:
    """Stage 2's optimizer over the head alone: ``"adam"`` (peak ``lr``; :func:`head_step` sets the schedule) or
    ``"lbfgs"`` (one iteration per step with at most 25 loss evaluations, history 20, strong-Wolfe line search;
    ``lr`` unused)."""
    if kind == "adam":
        return torch.optim.Adam(head.parameters(), lr=lr)
    if kind == "lbfgs":
        return torch.optim.LBFGS(
            head.parameters(), lr=1.0, max_iter=1, max_eval=25, history_size=20, line_search_fn="strong_wolfe",
            tolerance_grad=1e-9, tolerance_change=1e-12,
        )  # fmt: skip
    raise ValueError(f"stage-2 optimizer must be 'adam' or 'lbfgs', got {kind!r}")


def minibatch_indices(bank_size: int, batch_size: int, seed: int, step: int) -> torch.Tensor:
    """The bank rows of Adam step ``step``: ``min(batch_size, bank_size)`` draws with replacement from a generator
    seeded by ``(seed, step)``, so any step's minibatch is known without replaying the earlier ones."""
    gen = torch.Generator().manual_seed(derived_seed(seed, step))
    return torch.randint(bank_size, (min(batch_size, bank_size),), generator=gen)


def head_step(
    head: PosteriorHead,
    optimizer: torch.optim.Optimizer,
    bank: EmbeddingBank,
    step: int,
    total: int,
    lr: float,
    batch_size: int,
    seed: int,
) -> torch.Tensor:
    """Stage-2 step ``step`` of ``total`` on the bank (already on the head's device) with ``optimizer`` from
    :func:`make_head_optimizer`: Adam on the minibatch :func:`minibatch_indices` at :func:`scheduled_lr`, or one
    L-BFGS iteration on the whole bank. Returns the loss (at the start of the step).

    Gradients come from ``torch.autograd.grad``, not ``backward``: under DDP every rank holds the same bank and the
    same minibatch, so the ranks stay identical without a gradient all-reduce (and the frozen encoder's parameters
    are never waited for).
    """
    if isinstance(getattr(optimizer, "optimizer", optimizer), torch.optim.LBFGS):  # (Lightning wraps optimizers)
        theta, z, log_n = bank.theta, bank.z, bank.log_n
    else:
        idx = minibatch_indices(len(bank), batch_size, seed, step).to(bank.theta.device)
        theta, z, log_n = bank.theta[idx], bank.z[idx], bank.log_n[idx]
        for g in optimizer.param_groups:
            g["lr"] = scheduled_lr(step, total, lr)
    params = [p for p in head.parameters() if p.requires_grad]
    first: list[torch.Tensor] = []

    def closure() -> torch.Tensor:
        loss = -head.log_prob(theta, z, log_n).mean()
        grads = torch.autograd.grad(loss, params, allow_unused=True)
        for p, g in zip(params, grads):
            p.grad = torch.zeros_like(p) if g is None else g
        if not first:
            first.append(loss.detach())
        return loss.detach()

    optimizer.step(closure)
    return first[0]


def train_head(
    head: PosteriorHead,
    bank: EmbeddingBank,
    steps: int,
    batch_size: int = 256,
    lr: float = 1e-3,
    reset: bool = True,
    seed: int = 0,
    optimizer: HeadOptimizer = "adam",
) -> list[float]:
    """Stage 2: fit the head alone on the stored (θ, z, log N) triples with :func:`head_step`; no encoder anywhere.

    Args:
        head: The head to fit (its context standardisation is reset from the bank).
        bank: Output of ``pre_aggregate``.
        steps: Adam steps, or L-BFGS iterations.
        batch_size: Triples per Adam step (L-BFGS always uses the whole bank).
        lr: Peak Adam learning rate (cosine decay); unused by L-BFGS (strong-Wolfe line search).
        reset: Re-initialise the head's weights first ("retrain"); ``False`` finetunes the stage-1 head.
        seed: Seed of the re-initialisation and of the minibatches.
        optimizer: ``"adam"``: minibatch Adam with cosine decay. ``"lbfgs"``: full-batch L-BFGS on the bank. The
            bank is a fixed, small table (thousands of rows of dimension embed_dim + 1), so its exact loss and
            gradient are cheap, and a quasi-Newton method needs far fewer steps than minibatch Adam (measured in
            ``docs/pairs.md``, "Benchmark").

    Returns:
        The loss at the start of every step.
    """
    if steps < 1 or batch_size < 1:
        raise ValueError(f"steps and batch_size must be >= 1, got {steps} and {batch_size}")
    opt = make_head_optimizer(head, optimizer, lr)
    device = head.ctx_loc.device
    prepare_head(head, bank, reset, seed)
    bank = bank.to(device)
    head.train()
    return [head_step(head, opt, bank, t, steps, lr, batch_size, seed).item() for t in range(steps)]


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
    Deep Set with ``[N_deploy]``. Sizes: encoder 1→64→64→16, head 64-64 (``docs/pairs.md``).
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
    optimizer: HeadOptimizer = "adam",
) -> PosteriorHead:
    """Stage 2 of PAIRS: pre-aggregate ``num_sets`` sets at ``set_sizes`` with the frozen encoder, then fit a copy
    of ``head`` on the bank alone (:func:`train_head`, with ``optimizer``). ``head`` itself is left unchanged.
    ``seed`` fixes the simulations, the head's re-initialisation and the minibatches."""
    bank = pre_aggregate(encoder, simulate_in_chunks(simulator, num_sets, set_sizes, seed, chunk_elements),
                         chunk_elements)  # fmt: skip
    new = copy.deepcopy(head)
    train_head(new, bank, steps, batch_size, lr, reset=reset, seed=seed, optimizer=optimizer)
    return new
