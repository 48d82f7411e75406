"""A small CNN classifier trained in-process, whose penultimate features stand in for Inception / DINOv2 features.

RAE (arXiv 2510.11690) and RAEv2 (arXiv 2605.18324) score generators with gFID (FD in Inception pool3 features)
and FD_DINOv2 (FD in DINOv2 CLS features). Neither network's weights exist offline, so at small scale the
feature space is the penultimate layer of this classifier, trained on the real images of the data set in use. It is
a convolutional network, so its architecture is independent of a ViT encoder being evaluated, and it is seeded on
its own (``seed`` of :func:`train_feature_classifier`).

Architecture (:class:`FeatureClassifierConfig`): ``len(widths)`` blocks of [conv3x3 → GroupNorm → SiLU] × 2 then
2×2 average pooling, a global average pool, a linear layer to ``feature_dim`` with SiLU (the *features*), and a
linear head to the class logits. GroupNorm (not BatchNorm) makes every image's features independent of the batch it
is in, so features, accuracy and FD do not depend on the evaluation batch size.

Images are float ``[B, 3, H, W]`` in [0, 1] (or uint8 in [0, 255]); any H, W (the pool is global).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn


@dataclass
class FeatureClassifierConfig:
    """Architecture of :class:`FeatureClassifier`.

    Args:
        num_classes: Number of classes of the head.
        in_channels: Image channels.
        widths: Channels of the convolutional blocks (each block halves the resolution).
        feature_dim: Width of the penultimate layer, i.e. the dimension D of the features.
    """

    num_classes: int
    in_channels: int = 3
    widths: tuple[int, ...] = (32, 64, 128)
    feature_dim: int = 128

    def __post_init__(self) -> None:
        self.widths = tuple(int(w) for w in self.widths)
        if self.num_classes < 2:
            raise ValueError(f"num_classes must be >= 2, got {self.num_classes}")
        if self.in_channels < 1 or self.feature_dim < 1:
            raise ValueError(f"in_channels and feature_dim must be >= 1, got {self.in_channels}, {self.feature_dim}")
        if not self.widths or min(self.widths) < 1:
            raise ValueError(f"widths must be a non-empty tuple of positive ints, got {self.widths}")


def as_unit_images(images: torch.Tensor, in_channels: int | None = None) -> torch.Tensor:
    """Float32 images in [0, 1] from uint8 ``[0, 255]`` or float ``[0, 1]`` tensors of shape ``[B, C, H, W]``."""
    if images.ndim != 4:
        raise ValueError(f"images must have shape [B, C, H, W], got {tuple(images.shape)}")
    if in_channels is not None and images.shape[1] != in_channels:
        raise ValueError(f"images must have {in_channels} channels, got shape {tuple(images.shape)}")
    if images.dtype == torch.uint8:
        return images.float() / 255.0
    if not images.is_floating_point():
        raise ValueError(f"images must be uint8 or floating point, got dtype {images.dtype}")
    return images.float()


class FeatureClassifier(nn.Module):
    """CNN classifier; :meth:`features` are its penultimate activations ``[B, feature_dim]``."""

    def __init__(self, config: FeatureClassifierConfig) -> None:
        super().__init__()
        self.config = config
        layers: list[nn.Module] = []
        c = config.in_channels
        for w in config.widths:
            for c_in in (c, w):
                layers += [nn.Conv2d(c_in, w, 3, padding=1), nn.GroupNorm(min(8, w), w), nn.SiLU()]
            layers.append(nn.AvgPool2d(2, ceil_mode=True))
            c = w
        self.trunk = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.penultimate = nn.Sequential(nn.Linear(c, config.feature_dim), nn.SiLU())
        self.head = nn.Linear(config.feature_dim, config.num_classes)

    @property
    def num_features(self) -> int:
        """Feature dimension D."""
        return self.config.feature_dim

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """Penultimate features ``[B, D]`` (differentiable; see :meth:`embed` for batched, gradient-free use)."""
        x = as_unit_images(images, self.config.in_channels)
        return self.penultimate(self.trunk((x - 0.5) / 0.5))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Class logits ``[B, num_classes]``."""
        return self.head(self.features(images))

    @torch.no_grad()
    def embed(self, images: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
        """Features of many images in eval mode, ``batch_size`` at a time, as a float64 CPU tensor ``[N, D]``."""
        return self._batched(self.features, images, batch_size)

    @torch.no_grad()
    def predict(self, images: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
        """Predicted classes ``[N]`` (int64, CPU) in eval mode."""
        return self._batched(self.forward, images, batch_size).argmax(1)

    def _batched(self, fn, images: torch.Tensor, batch_size: int) -> torch.Tensor:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        was_training = self.training
        self.eval()
        device = next(self.parameters()).device
        try:
            out = [fn(images[i : i + batch_size].to(device)).double().cpu() for i in range(0, len(images), batch_size)]
        finally:
            self.train(was_training)
        return torch.cat(out) if out else torch.zeros(0, self.config.feature_dim, dtype=torch.float64)

    def save(self, path: str | Path) -> None:
        """Write the config and weights to ``path`` (a ``torch.save`` file readable with ``weights_only=True``)."""
        config = asdict(self.config)
        config["widths"] = list(config["widths"])
        state = {k: v.detach().cpu() for k, v in self.state_dict().items()}
        torch.save({"config": config, "state_dict": state}, Path(path))

    @classmethod
    def load(cls, path: str | Path, map_location: str | torch.device = "cpu") -> FeatureClassifier:
        """Rebuild a classifier written by :meth:`save`, frozen and in eval mode."""
        blob = torch.load(Path(path), map_location=map_location, weights_only=True)
        model = cls(FeatureClassifierConfig(**blob["config"]))
        model.load_state_dict(blob["state_dict"])
        return freeze(model)


class ClassifierFeatures(nn.Module):
    """The classifier's features as a module ``images -> float64 [B, D]``, the form torchmetrics' FID expects.

    It has ``num_features``, so ``FrechetInceptionDistance(feature=...)`` does not probe it with a 299² dummy image.
    """

    def __init__(self, classifier: FeatureClassifier) -> None:
        super().__init__()
        self.classifier = classifier
        self.num_features = classifier.num_features

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        self.classifier.eval()
        with torch.no_grad():
            return self.classifier.features(images).double()


def freeze(model: FeatureClassifier) -> FeatureClassifier:
    """Eval mode and ``requires_grad=False`` on every parameter; returns the same module."""
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def train_feature_classifier(
    images: torch.Tensor,
    labels: torch.Tensor,
    num_classes: int,
    steps: int = 1000,
    seed: int = 0,
    batch_size: int = 128,
    lr: float = 2e-3,
    weight_decay: float = 1e-4,
    held_out_fraction: float = 0.2,
    widths: tuple[int, ...] = (32, 64, 128),
    feature_dim: int = 128,
) -> tuple[FeatureClassifier, float]:
    """Train a :class:`FeatureClassifier` with AdamW and cross-entropy; deterministic on CPU for a given ``seed``
    (and a given ``torch.get_num_threads()``, which sets the floating-point summation order).

    A ``held_out_fraction`` of the images (chosen by ``seed``) is kept out of training and scores the result. The
    global RNG is left untouched (initialisation runs under ``torch.random.fork_rng``; the split and the batches
    use their own ``torch.Generator``).

    Args:
        images: ``[N, C, H, W]`` float in [0, 1] or uint8.
        labels: ``[N]`` integer classes in ``[0, num_classes)``.
        num_classes: Number of classes.
        steps: Optimizer steps.
        seed: Seed of the initialisation, the split and the batch order.
        batch_size: Images per step (sampled without replacement within an epoch).
        lr: AdamW learning rate.
        weight_decay: AdamW weight decay.
        held_out_fraction: Fraction of images held out for the accuracy, in (0, 1).
        widths: Convolutional block widths (:class:`FeatureClassifierConfig`).
        feature_dim: Penultimate width D.

    Returns:
        The frozen classifier (eval mode, on the images' device) and its accuracy on the held-out images.
    """
    x = as_unit_images(images)
    y = torch.as_tensor(labels).reshape(-1).long().to(x.device)
    if y.numel() != x.shape[0]:
        raise ValueError(f"labels must have one entry per image, got {y.numel()} labels for {x.shape[0]} images")
    if y.numel() and (int(y.min()) < 0 or int(y.max()) >= num_classes):
        raise ValueError(f"labels must lie in [0, {num_classes}), got range [{int(y.min())}, {int(y.max())}]")
    if steps < 1 or batch_size < 1:
        raise ValueError(f"steps and batch_size must be >= 1, got {steps}, {batch_size}")
    if not 0.0 < held_out_fraction < 1.0:
        raise ValueError(f"held_out_fraction must be in (0, 1), got {held_out_fraction}")
    n_held = int(round(held_out_fraction * x.shape[0]))
    if n_held < 1 or n_held >= x.shape[0]:
        raise ValueError(f"{x.shape[0]} images with held_out_fraction={held_out_fraction} leave an empty split")
    config = FeatureClassifierConfig(num_classes, x.shape[1], tuple(widths), feature_dim)
    gen = torch.Generator().manual_seed(seed)
    perm = torch.randperm(x.shape[0], generator=gen).to(x.device)
    held, train = perm[:n_held], perm[n_held:]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = FeatureClassifier(config).to(x.device)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    model.train()
    order = torch.zeros(0, dtype=torch.long)
    for _ in range(steps):
        if order.numel() < min(batch_size, train.numel()):
            order = torch.cat([order, torch.randperm(train.numel(), generator=gen)])
        idx, order = train[order[:batch_size].to(x.device)], order[batch_size:]
        loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    freeze(model)
    accuracy = float((model.predict(x[held]) == y[held].cpu()).double().mean())
    return model, accuracy
