"""Linear probe on planted class structure, and E-sup pretraining of a small ViT (learns, freezes, is seeded)."""

from __future__ import annotations

import pytest
import torch

from lightning_papers.methods.rae.encoder import RepresentationEncoder
from lightning_papers.methods.rae.encoder_pretrain import pretrain_classifier, random_shift
from lightning_papers.methods.rae.probe import linear_probe_accuracy, pool_latents

SMALL = {"depth": 2, "embed_dim": 48, "num_heads": 2}


def planted_latents(n: int, seed: int, signal: float) -> tuple[torch.Tensor, torch.Tensor]:
    """[n, 8, 3, 3] latents whose token mean in channel ``label`` is raised by ``signal`` (4 classes)."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 4, (n,), generator=g)
    z = torch.randn(n, 8, 3, 3, generator=g)
    z[torch.arange(n), y] += signal
    return z, y


def test_probe_reads_planted_classes_and_nothing_else() -> None:
    ztr, ytr = planted_latents(300, 0, 1.5)
    zte, yte = planted_latents(300, 1, 1.5)
    acc = linear_probe_accuracy(ztr, ytr, zte, yte, num_classes=4)
    assert acc > 0.95  # token-mean pooling averages 9 tokens: the class channel stands 4.5 sd above the others
    assert acc == linear_probe_accuracy(ztr, ytr, zte, yte, num_classes=4)  # deterministic
    shuffled = ytr[torch.randperm(300, generator=torch.Generator().manual_seed(2))]
    assert linear_probe_accuracy(ztr, shuffled, zte, yte, num_classes=4) < 0.45  # chance is 0.25
    assert pool_latents(ztr, "flatten").shape == (300, 72) and pool_latents(ztr).shape == (300, 8)


def test_probe_bad_input() -> None:
    z, y = planted_latents(20, 0, 1.0)
    with pytest.raises(ValueError, match="num_classes=3"):
        linear_probe_accuracy(z, y, z, y, num_classes=3)
    with pytest.raises(ValueError, match="'sum'"):
        linear_probe_accuracy(z, y, z, y, num_classes=4, pooling="sum")  # type: ignore[arg-type]


def coloured_squares(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """32 px noise images with a 12 px square at a random place, coloured red, green, blue or grey by the label."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 4, (n,), generator=g)
    x = 0.3 * torch.rand(n, 3, 32, 32, generator=g)
    colours = torch.tensor([[0.9, 0.1, 0.1], [0.1, 0.9, 0.1], [0.1, 0.1, 0.9], [0.6, 0.6, 0.6]])
    pos = torch.randint(0, 20, (n, 2), generator=g).tolist()
    for i, (c, (r, q)) in enumerate(zip(y.tolist(), pos)):
        x[i, :, r : r + 12, q : q + 12] = colours[c].view(3, 1, 1)
    return x, y


def test_pretrain_classifier_learns_then_freezes() -> None:
    x, y = coloured_squares(96, 0)
    enc = RepresentationEncoder("rae_vit_tiny", layers=1, model_kwargs=SMALL)
    before = {k: v.clone() for k, v in enc.backbone.state_dict().items()}
    acc = pretrain_classifier(enc, x, y, num_classes=4, steps=40, lr=2e-3, batch_size=32, seed=0)
    assert acc >= 0.9
    assert not enc.training and not enc.backbone.training
    assert not any(p.requires_grad for p in enc.parameters())
    assert any(not torch.equal(before[k], v) for k, v in enc.backbone.state_dict().items())
    twin = RepresentationEncoder("rae_vit_tiny", layers=1, model_kwargs=SMALL)
    twin.backbone.load_state_dict(before)
    assert pretrain_classifier(twin, x, y, num_classes=4, steps=40, lr=2e-3, batch_size=32, seed=0) == acc
    for k, v in twin.backbone.state_dict().items():  # same seed, same start: the same weights
        torch.testing.assert_close(v, enc.backbone.state_dict()[k], rtol=0, atol=0)


def test_random_shift_translates_and_pretrain_rejects_bad_labels() -> None:
    x = torch.arange(2 * 3 * 8 * 8, dtype=torch.float32).view(2, 3, 8, 8)
    shifted = random_shift(x, 2, torch.Generator().manual_seed(0))
    assert shifted.shape == x.shape and torch.equal(random_shift(x, 0, torch.Generator()), x)
    enc = RepresentationEncoder("rae_vit_tiny", model_kwargs=SMALL)
    with pytest.raises(ValueError, match=r"\[0, 7\]"):
        pretrain_classifier(enc, torch.rand(4, 3, 32, 32), torch.tensor([0, 1, 2, 7]), num_classes=4, steps=1)
