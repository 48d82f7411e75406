"""The RAE ViT decoder and the latent noise augmentation, against closed forms and a small fit."""

from __future__ import annotations

import math

import pytest
import torch
from scipy import stats

from lightning_papers.datamodules.images import ImageDataModule
from lightning_papers.methods.rae.decoder import (
    DecoderConfig,
    ViTDecoder,
    add_latent_noise,
    build_decoder_config,
    sample_noise_sigma,
    sincos_position_embedding,
)

TINY = DecoderConfig(width=32, depth=2, heads=2, mlp_ratio=2.0)


def test_registered_sizes_match_the_paper() -> None:
    xl = build_decoder_config("xl")
    assert (xl.depth, xl.width, xl.heads, xl.mlp_dim) == (28, 1152, 16, 4096)
    b, large = build_decoder_config("b"), build_decoder_config("l")
    assert (b.depth, b.width, b.heads, b.mlp_dim) == (12, 768, 12, 3072)  # ViT-B
    assert (large.depth, large.width, large.heads, large.mlp_dim) == (24, 1024, 16, 4096)  # ViT-L
    assert build_decoder_config("XL") == xl and build_decoder_config("xl") is not build_decoder_config("xl")
    with pytest.raises(ValueError, match="'xxl'"):
        build_decoder_config("xxl")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="heads = 5"):
        DecoderConfig(width=32, depth=1, heads=5)


@pytest.mark.parametrize("name", ["b", "l", "xl"])
def test_large_sizes_build_and_run_on_the_meta_device(name: str) -> None:
    with torch.device("meta"):
        dec = ViTDecoder(768, 16, 256, build_decoder_config(name))
        out = dec(torch.empty(2, 768, 16, 16))
    assert out.shape == (2, 3, 256, 256)
    c = dec.config
    per_block = 4 * c.width**2 + 4 * c.width + 2 * c.width * c.mlp_dim + c.mlp_dim + c.width + 4 * c.width
    expected = (768 * c.width + c.width) + c.width + c.depth * per_block + 2 * c.width + (c.width + 1) * 16 * 16 * 3
    assert sum(p.numel() for p in dec.parameters()) == expected


@pytest.mark.parametrize(("name", "channels", "grid", "size"), [("xs", 192, 8, 32), ("s", 64, 4, 16), ("xs", 8, 2, 8)])
def test_output_shape(name: str, channels: int, grid: int, size: int) -> None:
    dec = ViTDecoder(channels, grid, size, build_decoder_config(name))
    assert dec.patch_size == size // grid
    assert dec(torch.randn(3, channels, grid, grid)).shape == (3, 3, size, size)


def test_bad_shapes_fail_naming_the_values() -> None:
    with pytest.raises(ValueError, match=r"image_size = 32 .*latent_grid = 5"):
        ViTDecoder(16, 5, 32, TINY)
    dec = ViTDecoder(16, 4, 16, TINY)
    with pytest.raises(ValueError, match=r"\[B, 16, 4, 4\]"):
        dec(torch.randn(2, 16, 8, 8))


def test_sincos_positions_closed_form() -> None:
    width, grid = 16, 4
    pe = sincos_position_embedding(width, grid)
    omega = [10000 ** (-k / 4) for k in range(4)]
    for row in range(grid):
        for col in range(grid):
            expected = [math.sin(col * w) for w in omega] + [math.cos(col * w) for w in omega]
            expected += [math.sin(row * w) for w in omega] + [math.cos(row * w) for w in omega]
            torch.testing.assert_close(pe[row * grid + col], torch.tensor(expected), atol=1e-6, rtol=0)


def test_positions_are_fixed_and_cls_is_trained() -> None:
    dec = ViTDecoder(16, 4, 16, TINY)
    names = {n for n, _ in dec.named_parameters()}
    assert "cls_token" in names and not any("pos" in n for n in names)
    assert "pos_embed" not in dec.state_dict()  # recomputed, not saved
    pos0, cls0 = dec.pos_embed.clone(), dec.cls_token.detach().clone()
    torch.testing.assert_close(pos0[0, 0], torch.zeros(32))
    torch.testing.assert_close(pos0[0, 1:], sincos_position_embedding(32, 4))
    opt = torch.optim.SGD(dec.parameters(), lr=0.1)
    dec(torch.randn(4, 16, 4, 4)).square().mean().backward()
    opt.step()
    assert torch.equal(dec.pos_embed, pos0)
    assert not torch.equal(dec.cls_token.detach(), cls0)


def test_every_parameter_gets_a_gradient() -> None:
    dec = ViTDecoder(16, 4, 16, TINY)
    target = torch.rand(4, 3, 16, 16)
    (dec(torch.randn(4, 16, 4, 4)) - target).abs().mean().backward()
    for name, p in dec.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert dec.last_layer is dec.head.weight


def test_unpatchify_puts_each_token_in_its_patch() -> None:
    dec = ViTDecoder(8, 2, 8, TINY)  # patch 4
    # token t, pixel (p, q), channel c holds 1000 t + 100 c + 10 p + q
    t, p, q, c = torch.meshgrid(torch.arange(4), torch.arange(4), torch.arange(4), torch.arange(3), indexing="ij")
    img = dec.unpatchify((1000 * t + 100 * c + 10 * p + q).reshape(1, 4, 48).float())[0]
    for ch in range(3):
        for y in range(8):
            for x in range(8):
                token = (y // 4) * 2 + x // 4
                assert img[ch, y, x] == 1000 * token + 100 * ch + 10 * (y % 4) + x % 4


def test_noise_tau_zero_is_identity() -> None:
    z = torch.randn(5, 4, 2, 2)
    assert add_latent_noise(z, 0.0) is z
    assert add_latent_noise(z, 0.0, "half_normal") is z
    with pytest.raises(ValueError, match="-0.1"):
        add_latent_noise(z, -0.1)
    with pytest.raises(ValueError, match="'gaussian'"):
        add_latent_noise(z, 0.5, "gaussian")  # type: ignore[arg-type]


@pytest.mark.parametrize("distribution", ["uniform", "half_normal"])
def test_noise_sigma_distribution(distribution: str) -> None:
    tau, n = 0.8, 4000
    sigma = sample_noise_sigma(n, tau, distribution, torch.Generator().manual_seed(0)).double().numpy()  # type: ignore[arg-type]
    assert sigma.min() >= 0
    if distribution == "uniform":
        assert sigma.max() <= tau
        fit = stats.kstest(sigma, "uniform", args=(0, tau))
        wrong = stats.kstest(sigma, "halfnorm", args=(0, tau))
    else:
        fit = stats.kstest(sigma, "halfnorm", args=(0, tau))
        wrong = stats.kstest(sigma, "uniform", args=(0, tau))
    assert fit.pvalue > 0.01 and wrong.pvalue < 1e-6


@pytest.mark.parametrize("distribution", ["uniform", "half_normal"])
def test_noise_is_per_sample_gaussian_with_that_sigma(distribution: str) -> None:
    tau = 0.8
    z = torch.randn(64, 16, 16, 16)
    noisy = add_latent_noise(z, tau, distribution, torch.Generator().manual_seed(3))  # type: ignore[arg-type]
    sigma = sample_noise_sigma(64, tau, distribution, torch.Generator().manual_seed(3))  # type: ignore[arg-type]
    eps = (noisy - z).flatten(1)
    # 4096 N(0, sigma^2) draws per sample: std within ~6 standard errors (1.1 %) of sigma
    torch.testing.assert_close(eps.std(dim=1), sigma, rtol=0.07, atol=1e-6)
    assert eps.mean(dim=1).abs().max() < 0.07 * tau


def test_short_fit_decodes_digits() -> None:
    """An XS decoder learns to invert a fixed orthogonal patch code of 16 digit images (16 px, 4x4 latent grid).

    A decoder that ignored its input could at best output the mean image; 100 Adam steps must beat that by 8 dB
    (measured: 13.4 dB for the mean image, 25.3 dB after the fit).
    """
    dm = ImageDataModule("digits", image_size=16)
    dm.setup()
    x, _ = dm.labelled_subset("train", 16)
    q, _ = torch.linalg.qr(torch.randn(48, 48, generator=torch.Generator().manual_seed(1)))
    patches = x.unfold(2, 4, 4).unfold(3, 4, 4).permute(0, 2, 3, 1, 4, 5).reshape(16, 4, 4, 48)
    z = (patches @ q).permute(0, 3, 1, 2)
    torch.manual_seed(0)
    dec = ViTDecoder(48, 4, 16, build_decoder_config("xs"))
    opt = torch.optim.Adam(dec.parameters(), lr=1e-3)
    for _ in range(100):
        loss = (dec(z) - x).abs().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()

    def psnr(pred: torch.Tensor) -> float:
        return float(-10 * torch.log10((pred.clamp(0, 1) - x).square().mean()))

    with torch.no_grad():
        baseline, fitted = psnr(x.mean(0, keepdim=True).expand_as(x)), psnr(dec(z))
    assert fitted > baseline + 8.0, (baseline, fitted)
