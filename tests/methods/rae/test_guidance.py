"""Guidance: REPA-head (internal) guidance, CFG with the null class, AutoGuidance, NFE counts, and a trained toy."""

from __future__ import annotations

import pytest
import torch

from lightning_papers.methods.rae.dit import DiTDH, DiTOutput, build_dit_config
from lightning_papers.methods.rae.guidance import (
    GuidanceConfig,
    build_velocity_fn,
    forward_with_ig_and_cfg,
    sample,
)
from lightning_papers.methods.rae.transport import TransportConfig, shifted_grid, to_velocity, training_loss

SHAPE = (4, 2, 2)


def _model(num_classes: int = 3, seed: int = 0, **overrides: object) -> DiTDH:
    torch.manual_seed(seed)
    model = DiTDH(SHAPE, num_classes, build_dit_config("xs", **overrides))
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():  # leave the zero initialisation so that both heads and the guidance terms are non-trivial
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    return model.eval()


def _batch(b: int = 5, num_classes: int = 3) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(7)
    t = torch.tensor([0.05, 0.2, 0.5, 0.8, 1.0])[:b]
    return torch.randn(b, *SHAPE, generator=g), t, torch.randint(0, num_classes, (b,), generator=g)


@torch.no_grad()
def test_repa_guidance_closed_form() -> None:
    model = _model()
    x_t, t, y = _batch()
    full, base = model(x_t, t, y)
    v_full = to_velocity(full, x_t, t, "x", 0.05)
    # s = 1 is the full model's prediction, exactly
    v1 = build_velocity_fn(model, GuidanceConfig(mode="repa", repa_scale=1.0), y)(x_t, t)
    assert torch.equal(v1, v_full)
    # s = 1.78 on [0.1, 1]: x_g = x_base + s (x_full - x_base) converted to v; the full prediction outside
    fn = build_velocity_fn(model, GuidanceConfig(mode="repa", repa_scale=1.78, repa_interval=(0.1, 1.0)), y)
    v = fn(x_t, t)
    x_g = base + 1.78 * (full - base)
    torch.testing.assert_close(v[1:], to_velocity(x_g, x_t, t, "x", 0.05)[1:])
    torch.testing.assert_close(v[:1], v_full[:1])
    assert not torch.allclose(v[1:], v_full[1:])
    assert fn.nfe.tolist() == [1] * 5  # one forward pass per step


class _SameHeads(torch.nn.Module):
    """A model whose base head equals its full head: REPA guidance must leave it unchanged for any scale."""

    def __init__(self, inner: DiTDH) -> None:
        super().__init__()
        self.inner = inner
        self.latent_shape, self.num_classes, self.null_class = inner.latent_shape, inner.num_classes, inner.null_class
        self.prediction, self.has_ig_head, self.check_labels = inner.prediction, True, inner.check_labels

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> DiTOutput:
        full = self.inner(x_t, t, y).full
        return DiTOutput(full, full.clone())


@torch.no_grad()
def test_repa_guidance_with_equal_heads_is_identity() -> None:
    inner = _model()
    x_t, t, y = _batch()
    expected = to_velocity(inner(x_t, t, y).full, x_t, t, "x", 0.05)
    for scale in (0.0, 1.78, 3.0):
        v = build_velocity_fn(_SameHeads(inner), GuidanceConfig(mode="repa", repa_scale=scale), y)(x_t, t)
        torch.testing.assert_close(v, expected, rtol=0, atol=1e-5)


@torch.no_grad()
def test_ig_and_cfg_compose() -> None:
    model = _model()
    x_t, t, y = _batch()
    null = torch.full_like(y, model.null_class)
    fc, bc = model(x_t, t, y)
    fu, bu = model(x_t, t, null)
    ig_c, ig_u = bc + 1.5 * (fc - bc), bu + 1.5 * (fu - bu)
    expected = to_velocity(ig_u + 2.0 * (ig_c - ig_u), x_t, t, "x", 0.05)
    v, nfe = forward_with_ig_and_cfg(model, x_t, t, y, 1.5, 2.0, (0.0, 1.0), (0.0, 1.0))
    torch.testing.assert_close(v, expected, rtol=1e-4, atol=1e-4)
    assert nfe.tolist() == [2] * 5
    # ig_scale = 1 is plain CFG; cfg_scale = 1 is plain IG
    v_cfg = build_velocity_fn(model, GuidanceConfig(mode="cfg", scale=2.0), y)(x_t, t)
    torch.testing.assert_close(forward_with_ig_and_cfg(model, x_t, t, y, 1.0, 2.0, (0, 1), (0, 1))[0], v_cfg)
    v_ig = build_velocity_fn(model, GuidanceConfig(mode="repa", repa_scale=1.5, repa_interval=(0.0, 1.0)), y)(x_t, t)
    torch.testing.assert_close(forward_with_ig_and_cfg(model, x_t, t, y, 1.5, 1.0, (0, 1), (0, 1))[0], v_ig)


@pytest.mark.parametrize("num_classes", [3, 10])
def test_cfg_with_null_class(num_classes: int) -> None:
    model = _model(num_classes)
    tc = TransportConfig(sample_steps=6)
    labels = torch.tensor([0, num_classes - 1, num_classes])  # the null id itself samples unconditionally

    def run(mode: str, scale: float, lab: torch.Tensor = labels) -> torch.Tensor:
        gen = torch.Generator().manual_seed(11)
        return sample(model, lab, SHAPE, tc, GuidanceConfig(mode=mode, scale=scale), gen)[0]

    plain = run("none", 1.0)
    assert torch.isfinite(run("cfg", 4.0)).all()
    torch.testing.assert_close(run("cfg", 1.0), plain, rtol=1e-4, atol=1e-4)  # scale 1: conditional model
    unconditional = run("none", 1.0, torch.full_like(labels, num_classes))
    torch.testing.assert_close(run("cfg", 0.0), unconditional, rtol=1e-4, atol=1e-4)  # scale 0: the null class
    assert not torch.allclose(run("cfg", 4.0), plain)
    with pytest.raises(ValueError, match=f"class id {num_classes + 1}"):
        run("cfg", 2.0, torch.tensor([num_classes + 1]))


@pytest.mark.parametrize(
    ("mode", "interval", "expected"),
    [
        ("none", (0.0, 1.0), 10),
        ("repa", (0.0, 1.0), 10),
        ("cfg", (0.0, 1.0), 20),
        ("repa_cfg", (0.0, 1.0), 20),
        ("autoguidance", (0.0, 1.0), 20),
        ("cfg", (0.5, 1.0), None),
        ("autoguidance", (0.3, 0.7), None),
    ],
)
def test_nfe_counts(mode: str, interval: tuple[float, float], expected: int | None) -> None:
    model, guide = _model(), _model(seed=5, depth=1, ig_head=False)
    tc = TransportConfig(sample_steps=10, shift="fixed", alpha=2.0)
    gc = GuidanceConfig(mode=mode, scale=1.5, interval=interval)
    labels = torch.tensor([0, 1, 2, 3])
    _, nfe = sample(model, labels, SHAPE, tc, gc, torch.Generator().manual_seed(0), guide_model=guide)
    if expected is None:  # the second pass runs only at grid times inside the interval
        times = shifted_grid(10, 2.0)[:-1]
        expected = 10 + int(((times >= interval[0]) & (times <= interval[1])).sum())
        assert 10 < expected < 20
    assert nfe == expected


@torch.no_grad()
def test_autoguidance_mixes_with_the_guide() -> None:
    model, guide = _model(), _model(seed=5, depth=1, ig_head=False, prediction="v")
    x_t, t, y = _batch()
    v_main = to_velocity(model(x_t, t, y).full, x_t, t, "x", 0.05)
    v_guide = guide(x_t, t, y).full  # a v-prediction guide is mixed in velocity space
    fn = build_velocity_fn(model, GuidanceConfig(mode="autoguidance", scale=1.42), y, guide_model=guide)
    torch.testing.assert_close(fn(x_t, t), v_guide + 1.42 * (v_main - v_guide), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="needs guide_model"):
        build_velocity_fn(model, GuidanceConfig(mode="autoguidance", scale=1.42), y)


def test_validation_names_the_value() -> None:
    with pytest.raises(ValueError, match="scale must be >= 0, got -0.5"):
        GuidanceConfig(mode="cfg", scale=-0.5)
    with pytest.raises(ValueError, match=r"got \(0.2, 1.5\)"):
        GuidanceConfig(mode="repa", repa_interval=(0.2, 1.5))
    with pytest.raises(ValueError, match=r"got \(0.6, 0.4\)"):
        GuidanceConfig(mode="cfg", interval=(0.6, 0.4))
    with pytest.raises(ValueError, match="'bogus'"):
        GuidanceConfig(mode="bogus")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="needs a model with an IG head"):
        build_velocity_fn(_model(ig_head=False), GuidanceConfig(mode="repa"), torch.tensor([0]))
    with pytest.raises(ValueError, match="class id 7"):
        build_velocity_fn(_model(), GuidanceConfig(mode="none"), torch.tensor([0, 7]))


@pytest.fixture(scope="module")
def toy() -> tuple[DiTDH, torch.Tensor]:
    """DiT-DH-XS (x-prediction, in-context, IG head) trained on two Gaussian blobs at +1 and -1 in [4, 2, 2]."""
    torch.manual_seed(0)
    model = DiTDH(SHAPE, 2, build_dit_config("xs"))
    means = torch.stack([torch.ones(SHAPE), -torch.ones(SHAPE)])
    cfg = TransportConfig()
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    g = torch.Generator().manual_seed(0)
    for _ in range(250):
        y = torch.randint(0, 2, (64,), generator=g)
        x = means[y] + 0.3 * torch.randn(64, *SHAPE, generator=g)
        loss = training_loss(model, x, y, cfg, g)["loss"]
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
    return model.eval(), means


@pytest.mark.parametrize("mode", ["none", "repa", "cfg", "repa_cfg"])
def test_trained_toy_samples_land_on_class_means(toy: tuple[DiTDH, torch.Tensor], mode: str) -> None:
    model, means = toy
    labels = torch.tensor([0] * 64 + [1] * 64)
    gc = GuidanceConfig(mode=mode, scale=1.5, repa_scale=1.5)
    z, _ = sample(model, labels, SHAPE, TransportConfig(sample_steps=10), gc, torch.Generator().manual_seed(1))
    assert torch.isfinite(z).all()
    for c in (0, 1):
        zc = z[labels == c]
        assert (zc.mean(0) - means[c]).abs().max() < 0.5, (mode, c)  # the class means are 2 apart per entry
        own = (zc - means[c]).flatten(1).norm(dim=1)
        other = (zc - means[1 - c]).flatten(1).norm(dim=1)
        assert (own < other).float().mean() > 0.95, (mode, c)
