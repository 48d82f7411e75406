"""Decoder losses: feature matching, hinge GAN, DiffAug and the adaptive weight, against closed forms."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn
from torch.nn import functional as F

from lightning_papers.methods.rae.losses import (
    Discriminator,
    FeatureMatchingLoss,
    ReconstructionLoss,
    ReconstructionLossConfig,
    adaptive_gan_weight,
    diff_augment,
    discriminator_loss,
    generator_loss,
    hinge_d_loss,
    hinge_g_loss,
)


class ConvFeatures(nn.Module):
    """Stand-in encoder: frozen random conv blocks; ``features`` keeps autograd w.r.t. the images."""

    block_ids = [1]

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.blocks = nn.ModuleList([nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.Conv2d(8, 16, 3, stride=2, padding=1)])
        self.requires_grad_(False)

    def features(self, images: Tensor, block_ids: list[int]) -> list[Tensor]:
        out, x = {}, images
        for i, block in enumerate(self.blocks):
            x = F.gelu(block(x))
            out[i] = x
        return [out[b] for b in block_ids]


class Identity:
    """Stand-in whose only 'block' is the image itself."""

    def features(self, images: Tensor, block_ids: list[int]) -> list[Tensor]:
        return [images for _ in block_ids]


def test_feature_matching_is_zero_on_identical_images_and_reaches_recon() -> None:
    enc = ConvFeatures()
    loss = FeatureMatchingLoss(enc, [0, 1])
    x = torch.rand(2, 3, 16, 16)
    assert loss(x, x.clone()).item() == 0.0
    recon = (x + 0.2 * torch.randn_like(x)).requires_grad_(True)
    value = loss(recon, x)
    assert value.item() > 0
    value.backward()
    assert recon.grad is not None and recon.grad.abs().sum() > 0
    assert all(p.grad is None for p in enc.parameters())  # the encoder stays frozen


def test_feature_matching_closed_form() -> None:
    """With the image as its own feature map: l2 = mean over pixels of |u(x) - u(y)|^2 = 2 - 2 cos(x, y)."""
    x, y = torch.rand(3, 3, 5, 5) + 0.1, torch.rand(3, 3, 5, 5) + 0.1
    cos = F.cosine_similarity(x, y, dim=1)
    torch.testing.assert_close(FeatureMatchingLoss(Identity(), [0])(x, y), (2 - 2 * cos).mean())
    torch.testing.assert_close(FeatureMatchingLoss(Identity(), [0, 0])(x, y), 2 * (2 - 2 * cos).mean())
    u = x / x.norm(dim=1, keepdim=True) - y / y.norm(dim=1, keepdim=True)
    torch.testing.assert_close(FeatureMatchingLoss(Identity(), [0], "l1")(x, y), u.abs().sum(1).mean())
    with pytest.raises(ValueError, match="empty"):
        FeatureMatchingLoss(Identity(), [])


def test_hinge_losses_closed_forms() -> None:
    real, fake = torch.tensor([2.0, 0.5, -1.0]), torch.tensor([-2.0, 0.0, 1.0])
    # relu(1 - real) = [0, .5, 2] (mean 5/6); relu(1 + fake) = [0, 1, 2] (mean 1)
    torch.testing.assert_close(hinge_d_loss(real, fake), torch.tensor(0.5 * (5 / 6 + 1)))
    torch.testing.assert_close(hinge_g_loss(fake), torch.tensor(1 / 3))
    assert hinge_d_loss(torch.full((4,), 3.0), torch.full((4,), -3.0)).item() == 0.0  # confident and right


@pytest.mark.parametrize("policy", [("color",), ("translation",), ("cutout",), ("color", "translation", "cutout")])
def test_diffaug_keeps_shapes_and_is_differentiable(policy: tuple[str, ...]) -> None:
    x = torch.rand(4, 3, 16, 16, requires_grad=True)
    out = diff_augment(x, policy, torch.Generator().manual_seed(0))
    assert out.shape == x.shape
    (out * torch.randn_like(out)).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    again = diff_augment(x.detach(), policy, torch.Generator().manual_seed(0))
    torch.testing.assert_close(again, out.detach())  # a function of the generator


def test_translation_is_an_integer_shift_within_one_eighth() -> None:
    x = torch.rand(8, 3, 16, 16) + 0.5  # no zeros inside the image
    out = diff_augment(x, ("translation",), torch.Generator().manual_seed(1))
    pad = F.pad(x, [2, 2, 2, 2])
    for i in range(8):
        hits = [(dy, dx) for dy in range(-2, 3) for dx in range(-2, 3)
                if torch.equal(out[i], pad[i, :, 2 + dy:18 + dy, 2 + dx:18 + dx])]  # fmt: skip
        assert len(hits) == 1


def test_cutout_zeroes_one_square_of_at_most_half_the_side() -> None:
    x = torch.rand(8, 3, 16, 16) + 0.5
    out = diff_augment(x, ("cutout",), torch.Generator().manual_seed(2))
    for i in range(8):
        zero = (out[i] == 0).all(dim=0)
        assert torch.equal(out[i][:, ~zero], x[i][:, ~zero])
        rows, cols = zero.any(1).nonzero().flatten(), zero.any(0).nonzero().flatten()
        assert 0 < len(rows) <= 8 and 0 < len(cols) <= 8
        assert zero.sum() == len(rows) * len(cols)  # a (clipped) rectangle
        assert bool(zero[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1].all())


def test_adaptive_weight_is_the_ratio_of_gradient_norms() -> None:
    torch.manual_seed(0)
    w = torch.randn(4, 3, requires_grad=True)
    a, t, c = torch.randn(3), torch.randn(4), torch.randn(4)
    out = w @ a
    rec, gan = (out - t).square().sum(), (c * out).sum()
    # by hand: d rec / dW = 2 (W a - t) a^T, d gan / dW = c a^T
    g_rec, g_gan = torch.outer(2 * (w.detach() @ a - t), a), torch.outer(c, a)
    expected = g_rec.norm() / (g_gan.norm() + 1e-4)
    got = adaptive_gan_weight(rec, gan, w)
    torch.testing.assert_close(got, expected)
    assert not got.requires_grad
    (rec + got * gan).backward()  # the graph is kept for the real backward pass
    out = w @ a
    tiny = adaptive_gan_weight((out - t).square().sum(), 1e-12 * (c * out).sum(), w, max_weight=7.0)
    assert tiny.item() == 7.0


def test_schedule_and_config_validation() -> None:
    cfg = ReconstructionLossConfig(gan_start_epoch=8, disc_start_epoch=6)
    assert [cfg.disc_active(e) for e in (5, 6, 8)] == [False, True, True]
    assert [cfg.gan_active(e) for e in (6, 7, 8)] == [False, False, True]
    off = ReconstructionLossConfig()
    assert not off.gan_active(100) and not off.disc_active(100)
    assert ReconstructionLossConfig(gan_start_epoch=3).disc_active(3)  # disc starts with the GAN by default
    with pytest.raises(ValueError, match="disc_start_epoch = 2"):
        ReconstructionLossConfig(disc_start_epoch=2)
    with pytest.raises(ValueError, match="l1_weight"):
        ReconstructionLossConfig(l1_weight=-1.0)


def test_generator_loss_sums_its_terms() -> None:
    enc = ConvFeatures()
    target = torch.rand(2, 3, 16, 16)
    head = nn.Linear(4, 3 * 16 * 16)
    recon = head(torch.randn(2, 4)).view(2, 3, 16, 16)
    fm = FeatureMatchingLoss(enc, [1])
    cfg = ReconstructionLossConfig(l1_weight=2.0, feature_weight=0.5, gan_start_epoch=1, diffaug=False)
    disc = Discriminator(3, 8, 2)
    total, logs = generator_loss(recon, target, cfg, epoch=0, feature_loss=fm, discriminator=disc)
    l1, feat = (recon - target).abs().mean(), fm(recon, target)
    torch.testing.assert_close(total, 2.0 * l1 + 0.5 * feat)
    assert "gan" not in logs
    total, logs = generator_loss(recon, target, cfg, epoch=1, feature_loss=fm, discriminator=disc,
                                 last_layer=head.weight)  # fmt: skip
    gan = hinge_g_loss(disc(recon))
    w = adaptive_gan_weight(2.0 * l1 + 0.5 * feat, gan, head.weight)
    torch.testing.assert_close(total, 2.0 * l1 + 0.5 * feat + 0.75 * w * gan)
    torch.testing.assert_close(logs["gan_weight"], w)
    with pytest.raises(ValueError, match="discriminator"):
        generator_loss(recon, target, cfg, epoch=1)


def test_discriminator_loss_trains_only_the_discriminator() -> None:
    disc = Discriminator(3, 8, 3)
    assert disc(torch.rand(5, 3, 32, 32)).shape == (5, 1, 4, 4)
    recon = torch.rand(2, 3, 32, 32, requires_grad=True)
    cfg = ReconstructionLossConfig(gan_start_epoch=0)
    loss, logs = discriminator_loss(recon, torch.rand(2, 3, 32, 32), disc, cfg, torch.Generator().manual_seed(0))
    loss.backward()
    assert recon.grad is None
    assert all(p.grad is not None for p in disc.parameters())
    assert set(logs) == {"d_loss", "logits_real", "logits_fake"}


def test_reconstruction_loss_module() -> None:
    enc = ConvFeatures()
    plain = ReconstructionLoss(ReconstructionLossConfig(), enc)
    assert not plain.uses_gan and plain.discriminator is None
    assert plain.feature_loss is not None and plain.feature_loss.block_ids == [1]  # the encoder's blocks
    assert len(plain.state_dict()) == 0  # the encoder is referenced, not owned
    with pytest.raises(ValueError, match="no discriminator"):
        plain.discriminator_loss(torch.rand(1, 3, 16, 16), torch.rand(1, 3, 16, 16))
    gan = ReconstructionLoss(ReconstructionLossConfig(gan_start_epoch=2, feature_blocks=[0, 1]), enc)
    assert gan.uses_gan and gan.feature_loss.block_ids == [0, 1]  # type: ignore[union-attr]
    assert all(k.startswith("discriminator.") for k in gan.state_dict())
    head = nn.Linear(4, 3 * 16 * 16)
    recon = head(torch.randn(2, 4)).view(2, 3, 16, 16)
    out = gan.generator_loss(recon, torch.rand(2, 3, 16, 16), epoch=2, last_layer=head.weight,
                             generator=torch.Generator().manual_seed(0))  # fmt: skip
    assert {"loss", "l1", "feature", "rec", "gan", "gan_weight"} <= set(out) and out["loss"].requires_grad
    out["loss"].backward()
    assert head.weight.grad is not None
    assert gan.discriminator_loss(recon, torch.rand(2, 3, 16, 16)).requires_grad
