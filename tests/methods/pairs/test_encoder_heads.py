"""Deep Set encoder (permutation invariance, any N, chunking, masks) and posterior heads (Gaussian, zuko flow)."""

from __future__ import annotations

import math

import pytest
import torch

from lightning_papers.methods.pairs.encoder import DeepSetEncoder, embed_sets
from lightning_papers.methods.pairs.heads import FlowHead, GaussianHead, build_head


@pytest.mark.parametrize("n", [1, 2, 17, 300])
def test_encoder_is_permutation_invariant(n: int) -> None:
    enc = DeepSetEncoder(x_dim=3, embed_dim=8)
    x = torch.randn(5, n, 3)
    perm = torch.randperm(n)
    z, z_perm = enc(x), enc(x[:, perm])
    assert z.shape == (5, 8)
    torch.testing.assert_close(z, z_perm, atol=1e-6, rtol=1e-5)
    # ... and it is not a constant: different sets give different embeddings
    assert (enc(torch.randn(5, n, 3)) - z).abs().max() > 1e-3


def test_mean_pool_of_repeated_set_is_unchanged() -> None:
    """Mean pooling: a set and the same set repeated k times have the same embedding (so any N is in range)."""
    enc = DeepSetEncoder(x_dim=1)
    x = torch.randn(4, 3, 1)
    torch.testing.assert_close(enc(x), enc(x.repeat(1, 50, 1)), atol=1e-6, rtol=1e-5)


def test_chunked_embedding_equals_one_pass() -> None:
    enc = DeepSetEncoder(x_dim=2)
    x = torch.randn(7, 1000, 2)
    with torch.no_grad():
        full = enc(x)
    for chunk in [1, 37, 999, 5000, 10**6]:
        torch.testing.assert_close(embed_sets(enc, x, chunk_elements=chunk), full, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="chunk_elements"):
        embed_sets(enc, x, chunk_elements=0)


def test_mask_ignores_padding() -> None:
    enc = DeepSetEncoder(x_dim=1)
    x = torch.randn(2, 6, 1)
    mask = torch.tensor([[1, 1, 1, 0, 0, 0], [1, 1, 1, 1, 1, 1]], dtype=torch.bool)
    padded = x.clone()
    padded[0, 3:] = 1e3  # garbage in the padding must not matter
    z = enc(padded, mask)
    torch.testing.assert_close(z[0], enc(x[:1, :3])[0])
    torch.testing.assert_close(z[1], enc(x[1:])[0])


def test_encoder_rejects_bad_shapes() -> None:
    enc = DeepSetEncoder(x_dim=2)
    with pytest.raises(ValueError, match=r"expected sets of shape \[S, N, 2\], got \(4, 2\)"):
        enc(torch.randn(4, 2))
    with pytest.raises(ValueError, match="x_dim and embed_dim"):
        DeepSetEncoder(x_dim=0)


def test_gaussian_head_grid_density_and_cdf_agree_with_log_prob() -> None:
    head = GaussianHead(theta_dim=1, embed_dim=4)
    z = torch.randn(3, 4)
    grid = torch.linspace(-8, 8, 2001)[:, None]
    on_grid = head.log_prob_grid(grid, z, math.log(10))
    pointwise = torch.stack([head.log_prob(grid, zi.expand(2001, 4), math.log(10)) for zi in z])
    torch.testing.assert_close(on_grid, pointwise, atol=1e-5, rtol=1e-5)
    mass = torch.trapezoid(on_grid.exp(), grid[:, 0], dim=-1)
    torch.testing.assert_close(mass, torch.ones(3), atol=1e-3, rtol=0)
    mu, sd = head.mean_sd(z, math.log(10))
    cdf = head.marginal_cdf(mu + sd, z, math.log(10))
    torch.testing.assert_close(cdf, torch.full_like(cdf, 0.8413447), atol=1e-5, rtol=0)


def test_head_depends_on_log_n() -> None:
    head = GaussianHead(theta_dim=1, embed_dim=4)
    z, theta = torch.randn(5, 4), torch.randn(5, 1)
    assert (head.log_prob(theta, z, 0.0) - head.log_prob(theta, z, math.log(1000))).abs().max() > 1e-4


@pytest.mark.parametrize("theta_dim", [1, 2])
def test_flow_head_is_a_normalised_density(theta_dim: int) -> None:
    head = build_head("flow", theta_dim, embed_dim=3)
    assert isinstance(head, FlowHead)
    z = torch.randn(2, 3)
    pts = 401 if theta_dim == 1 else 161
    axis = torch.linspace(-7, 7, pts)
    grid = torch.cartesian_prod(*[axis] * theta_dim).reshape(-1, theta_dim)
    with torch.no_grad():
        dens = head.log_prob_grid(grid, z, math.log(2)).exp()
    cell = float(axis[1] - axis[0]) ** theta_dim
    torch.testing.assert_close(dens.sum(-1) * cell, torch.ones(2), atol=2e-2, rtol=0)
    samples = head.sample(7, z, math.log(2))
    assert samples.shape == (7, 2, theta_dim)


def test_flow_head_learns_a_conditional_gaussian() -> None:
    """A few hundred steps of NPE on θ | c ~ N(c, 0.3²) bring the flow's mean and sd close to the truth."""
    torch.manual_seed(0)
    head = build_head("flow", 1, embed_dim=1, hidden=(32, 32))
    c = torch.randn(4096, 1)
    theta = c + 0.3 * torch.randn_like(c)
    head.set_normalization(c, 0.0)
    opt = torch.optim.Adam(head.parameters(), lr=3e-3)
    for _ in range(300):
        idx = torch.randint(0, 4096, (256,))
        loss = -head.log_prob(theta[idx], c[idx], 0.0).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        s = head.sample(2000, torch.tensor([[1.0]]), 0.0)[:, 0, 0]
    assert abs(float(s.mean()) - 1.0) < 0.1 and abs(float(s.std()) - 0.3) < 0.08


def test_build_head_rejects_unknown_kind() -> None:
    with pytest.raises(ValueError, match="'mixture'"):
        build_head("mixture", 1, 4)  # type: ignore[arg-type]
