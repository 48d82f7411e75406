"""DiT-DH: shapes, the width rule, zero-initialised heads, gradients to every parameter, RoPE and sizes."""

from __future__ import annotations

import pytest
import torch

from lightning_papers.methods.rae.dit import DiTConfig, DiTDH, build_dit_config
from lightning_papers.methods.rae.dit_blocks import RoPE2D
from lightning_papers.methods.rae.transport import TransportConfig, training_loss

SHAPE = (4, 2, 3)  # non-square grid on purpose


def _inputs(b: int = 6, num_classes: int = 3) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    x, t = torch.randn(b, *SHAPE, generator=g), torch.rand(b, generator=g)
    return x, t, torch.randint(0, num_classes, (b,), generator=g)


@pytest.mark.parametrize("conditioning", ["in_context", "adaln"])
def test_forward_shapes_and_zero_init_heads(conditioning: str) -> None:
    model = DiTDH(SHAPE, 3, build_dit_config("xs", conditioning=conditioning))
    x, t, y = _inputs()
    full, base = model(x, t, y)
    assert full.shape == x.shape and base is not None and base.shape == x.shape
    assert torch.count_nonzero(base) == 0  # the IG head's output layer starts at zero
    assert torch.count_nonzero(full) == 0  # so does the DDT head's (adaLN-Zero / DiT init)
    no_ig = DiTDH(SHAPE, 3, build_dit_config("xs", conditioning=conditioning, ig_head=False))
    assert no_ig(x, t, y).base is None and not no_ig.has_ig_head


def test_null_class_row_for_any_number_of_classes() -> None:
    for n in (1, 3, 10):
        model = DiTDH(SHAPE, n)
        assert model.class_embed.num_embeddings == n + 1 and model.null_class == n
        x, t, _ = _inputs(2)
        model(x, t, torch.tensor([n, 0]))  # the null id is a valid input
        with pytest.raises(ValueError, match=f"class id {n + 1} .* null id {n}"):
            model.check_labels(torch.tensor([0, n + 1]))
        with pytest.raises(ValueError, match="class id -1"):
            model.check_labels(torch.tensor([-1]))


def test_width_rule_names_both_numbers() -> None:
    with pytest.raises(ValueError, match="head width 128 is smaller than the latent token dimension 192"):
        DiTDH((192, 2, 2), 3, build_dit_config("xs"))
    DiTDH((128, 2, 2), 3, build_dit_config("xs"))  # equal is allowed


def _perturb(model: torch.nn.Module) -> None:
    """Move every parameter off its (partly zero) initialisation so that gradients reach every layer."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))


@pytest.mark.parametrize("conditioning", ["in_context", "adaln"])
@pytest.mark.parametrize("prediction", ["x", "v"])
def test_every_parameter_gets_a_gradient(conditioning: str, prediction: str) -> None:
    model = DiTDH(SHAPE, 3, build_dit_config("xs", conditioning=conditioning, prediction=prediction))
    _perturb(model)
    x, _, y = _inputs(16)
    y[:4] = model.null_class  # the null row is trained too (as label dropout would)
    cfg = TransportConfig(prediction=prediction, label_dropout=0.0)
    out = training_loss(model, x, y, cfg, torch.Generator().manual_seed(0))
    assert set(out) == {"loss", "loss_full", "loss_base", "t"}
    out["loss"].backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


def test_ig_head_reads_the_configured_block() -> None:
    model = DiTDH(SHAPE, 3, build_dit_config("xs", depth=6, ig_depth=2))
    _perturb(model)
    x, t, y = _inputs()
    base = model(x, t, y).base
    with torch.no_grad():
        for p in model.trunk[2:].parameters():  # blocks after the IG depth
            p.add_(1.0)
    torch.testing.assert_close(model(x, t, y).base, base)
    assert DiTConfig(depth=9).resolved_ig_depth == 3 and build_dit_config("xl").resolved_ig_depth == 8


def test_rope_is_relative_and_leaves_extra_tokens_alone() -> None:
    rope = RoPE2D(8, (3, 4), num_extra=2)
    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(1, 1, 14, 8, generator=g), torch.randn(1, 1, 14, 8, generator=g)
    # same vectors at every position: scores depend only on the (row, col) offset
    q, k = q[:, :, :1].expand(1, 1, 14, 8), k[:, :, :1].expand(1, 1, 14, 8)
    scores = (rope(q) @ rope(k).transpose(-1, -2))[0, 0]
    pos = [(r, c) for r in range(3) for c in range(4)]
    i, j = pos.index((0, 0)), pos.index((1, 2))
    i2, j2 = pos.index((1, 1)), pos.index((2, 3))
    torch.testing.assert_close(scores[i, j], scores[i2, j2])
    torch.testing.assert_close(rope(q)[..., 12:, :], q[..., 12:, :])  # the appended tokens are not rotated


def test_paper_sizes() -> None:
    with torch.device("meta"):  # shapes only, no memory
        v1_xl = DiTDH((768, 16, 16), 1000, build_dit_config("xl_v1"))
    # RAE v1 reports about 839M parameters for DiT-DH-XL on DINOv2-B latents (768 x 16 x 16)
    assert sum(p.numel() for p in v1_xl.parameters()) == pytest.approx(839e6, rel=0.005)
    xl = build_dit_config("xl")
    assert (xl.depth, xl.width, xl.heads, xl.head_depth, xl.head_width, xl.conditioning) == (
        28,
        1440,
        20,
        2,
        2048,
        "in_context",
    )
    assert (xl.num_time_tokens, xl.num_class_tokens, xl.prediction, xl.ig_depth) == (4, 8, "x", 8)
    v1 = build_dit_config("xl_v1")
    assert (v1.depth, v1.width, v1.heads, v1.head_width, v1.conditioning, v1.ig_head) == (
        28,
        1152,
        16,
        2048,
        "adaln",
        False,
    )
    assert (build_dit_config("s").depth, build_dit_config("s").width) == (12, 384)
    with pytest.raises(ValueError, match="'xxl'"):
        build_dit_config("xxl")
    with pytest.raises(ValueError, match="ig_depth must lie in \\[1, depth=3\\], got 5"):
        DiTConfig(ig_depth=5)
