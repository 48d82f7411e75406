"""E-sup: pretrain a representation encoder's backbone as a classifier in-process, then freeze it.

No pretrained ViT weights are available offline, so a small-scale RAE stands in a *supervised* ViT for DINO: the
backbone plus a linear head on its token-mean-pooled final features (after the non-affine final LayerNorm; a
CNN's globally pooled features) is trained with cross-entropy and AdamW (linear warm-up over the first 10 % of
the steps, then cosine decay), on random translations of up to ``max_shift`` pixels, then the head is dropped
and the backbone frozen again. Everything random (head initialisation, batches, shifts) is drawn from ``seed``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_papers.methods.rae.encoder import RepresentationEncoder


def pooled_features(encoder: RepresentationEncoder, x: Tensor) -> Tensor:
    """``[B, C]``: the backbone's final features on preprocessed images ``x``, mean over tokens / positions."""
    feats = encoder.backbone.forward_features(x)
    if encoder.kind == "vit":
        return feats[:, encoder.backbone.num_prefix_tokens :].mean(1)
    return feats.mean(dim=(2, 3))


def random_shift(images: Tensor, max_shift: int, generator: torch.Generator) -> Tensor:
    """Translate every image by its own integer offset in ``[-max_shift, max_shift]`` (edge pixels repeated)."""
    if max_shift == 0:
        return images
    b, _, h, w = images.shape
    padded = F.pad(images, (max_shift,) * 4, mode="replicate")
    off = torch.randint(0, 2 * max_shift + 1, (b, 2), generator=generator).tolist()
    return torch.stack([padded[i, :, dy : dy + h, dx : dx + w] for i, (dy, dx) in enumerate(off)])


def pretrain_classifier(
    encoder: RepresentationEncoder,
    images: Tensor,
    labels: Tensor,
    num_classes: int,
    steps: int = 300,
    lr: float = 1e-3,
    batch_size: int = 128,
    seed: int = 0,
    max_shift: int = 2,
    weight_decay: float = 0.05,
) -> float:
    """Train ``encoder.backbone`` (+ a temporary linear head) to classify ``images``; return the final train accuracy.

    Args:
        encoder: Trained in place on its current device; left frozen (no grad) and in eval mode.
        images: ``[N, 3, S, S]`` training images in [0, 1] (moved to the encoder's device batch by batch).
        labels: ``[N]`` int labels in ``[0, num_classes)``.
        num_classes: Number of classes of the head.
        steps: Optimizer steps.
        lr: Peak AdamW learning rate.
        batch_size: Images per step.
        seed: Seed of the head, the batches and the shifts.
        max_shift: Largest random translation in pixels (0: none).
        weight_decay: AdamW weight decay.
    """
    if steps < 1 or batch_size < 1 or lr <= 0:
        raise ValueError(f"steps={steps}, batch_size={batch_size} and lr={lr} must be positive")
    if len(images) != len(labels) or len(images) == 0:
        raise ValueError(f"images ({len(images)}) and labels ({len(labels)}) must be equally many, at least one")
    if labels.min() < 0 or labels.max() >= num_classes:
        raise ValueError(f"labels range [{int(labels.min())}, {int(labels.max())}] is outside [0, {num_classes})")
    device = encoder.pixel_mean.device
    gen = torch.Generator().manual_seed(seed)
    backbone = encoder.backbone
    with torch.no_grad():
        width = pooled_features(encoder, encoder.preprocess(images[:1].to(device))).shape[1]
    head = nn.Linear(width, num_classes).to(device)
    with torch.no_grad():  # seeded initialisation, independent of the global RNG
        bound = 1.0 / math.sqrt(width)
        head.weight.copy_(torch.rand(head.weight.shape, generator=gen) * 2 * bound - bound)
        head.bias.zero_()
    params = [*backbone.parameters(), *head.parameters()]
    backbone.requires_grad_(True).train()
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, betas=(0.9, 0.95))
    warm = max(1, steps // 10)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: (s + 1) / warm if s < warm else 0.5 * (1 + math.cos(math.pi * (s - warm) / max(1, steps - warm)))
    )
    order, pos = torch.randperm(len(images), generator=gen), 0
    try:
        for _ in range(steps):
            if pos + batch_size > len(order):
                order, pos = torch.randperm(len(images), generator=gen), 0
            idx = order[pos : pos + batch_size]
            pos += batch_size
            x = random_shift(images[idx], max_shift, gen).to(device)
            loss = F.cross_entropy(head(pooled_features(encoder, encoder.preprocess(x))), labels[idx].to(device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            sched.step()
    finally:
        backbone.requires_grad_(False).eval()
        encoder.eval()
    correct = 0
    with torch.no_grad():
        for a in range(0, len(images), 256):
            x = encoder.preprocess(images[a : a + 256].to(device))
            correct += int((head(pooled_features(encoder, x)).argmax(1).cpu() == labels[a : a + 256]).sum())
    return correct / len(images)
