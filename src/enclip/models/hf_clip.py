"""``hf-clip:PATH_OR_ID``: a Hugging Face ``transformers.CLIPModel`` as an enclip backbone.

FashionCLIP (``patrickjohncyh/fashion-clip``) and many other fine-tuned CLIPs are published in this format rather
than open_clip's. The folder (or hub id) holds the model, its tokenizer and its image processor config; all three
are read from the same place so the preprocessing always matches the weights. The model is frozen whole, so it is
fine-tuned with an adapter on top (``--trainable 0``) or unfrozen entirely (``--trainable all``).
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Callable, Sequence

import torch
from PIL import Image
from torch import nn

from enclip.errors import EnclipError
from enclip.models import towers
from enclip.models.registry import Backbone, BackboneCfg, register_prefix

log = logging.getLogger(__name__)

PREFIX = "hf-clip:"
_HUB_ID = re.compile(r"[A-Za-z0-9_-][\w.-]*(/[\w.-]+)?")  # "org/repo" or "repo"; paths start with / . or ~
_LEGACY_EOS_ID = 2  # CLIP configs saved before transformers#24773 say eos=2; the model then pools at the highest id
_PIL_RESAMPLE = {0: "NEAREST", 1: "LANCZOS", 2: "BILINEAR", 3: "BICUBIC", 4: "BOX", 5: "HAMMING"}


class HFClip(nn.Module):
    """``encode_image``/``encode_text`` over a ``CLIPModel``, returning unnormalised projected features."""

    def __init__(self, model: nn.Module, eos_token_id: int | None):
        super().__init__()
        self.model = model
        self.eos_token_id = eos_token_id  # the token the text tower pools at

    @property
    def logit_scale(self) -> torch.Tensor:
        return self.model.logit_scale

    def encode_image(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.model.get_image_features(pixel_values=pixels).pooler_output

    def encode_text(self, token_ids: torch.Tensor) -> torch.Tensor:
        mask = eos_attention_mask(token_ids, self.eos_token_id)
        return self.model.get_text_features(input_ids=token_ids, attention_mask=mask).pooler_output


def eos_attention_mask(token_ids: torch.Tensor, eos_token_id: int | None) -> torch.Tensor:
    """1 up to and including each row's first EOS, 0 after it.

    CLIP tokenizers often pad with the EOS id itself, so ``ids != pad`` would mask out the very token the text
    tower pools at. A row without an EOS (or an unknown EOS id) is attended to in full.
    """
    positions = torch.arange(token_ids.shape[1], device=token_ids.device)
    if eos_token_id is None:
        return torch.ones_like(token_ids)
    is_eos = token_ids == eos_token_id
    first = torch.where(is_eos.any(dim=1), is_eos.int().argmax(dim=1), token_ids.shape[1] - 1)
    return (positions[None, :] <= first[:, None]).long()


class HFTokenize:
    """Texts -> (B, T) token ids, padded (and truncated, keeping the EOS) to a fixed length."""

    def __init__(self, tokenizer, context_length: int):
        self.tokenizer = tokenizer
        self.context_length = context_length

    def __call__(self, texts: Sequence[str]) -> torch.Tensor:
        encoded = self.tokenizer(
            list(texts), padding="max_length", truncation=True, max_length=self.context_length, return_tensors="pt"
        )
        return encoded["input_ids"]


@register_prefix("hf-clip:")
def build_hf_clip(cfg: BackboneCfg) -> Backbone:
    """Load ``hf-clip:PATH_OR_ID`` with its tokenizer and image preprocessing; splits are frozen+adapter or all."""
    source = cfg.name[len(PREFIX):] if cfg.name.startswith(PREFIX) else cfg.name
    if not source:
        raise EnclipError(f"{cfg.name!r} names no model: use hf-clip:DIR or hf-clip:org/repo")
    clip, tokenizer, processor = _load_parts(source)
    clip.eval()
    text_config = clip.config.text_config
    if tokenizer.pad_token is None:  # padding to a fixed length needs one; CLIP's convention is the EOS token
        tokenizer.pad_token = tokenizer.eos_token
    eos_id = _pooled_token_id(text_config.eos_token_id, tokenizer.eos_token_id)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    length = min(cfg.context_length, text_config.max_position_embeddings)
    model = HFClip(clip, eos_id).eval()
    dim = clip.config.projection_dim
    # trailing padding can be trimmed only when it cannot be mistaken for the EOS the tower pools at
    backbone = Backbone(model, clip_preprocess(processor), HFTokenize(tokenizer, length), cfg,
                        pad_token_id=pad_id, trim_padding=pad_id != eos_id)
    backbone.split_image = lambda n: towers.split_generic(model, "encode_image", n, dim)
    backbone.split_text = lambda n: towers.split_generic(model, "encode_text", n, dim)
    log.info("loaded hf-clip %s: projection %d, %d tokens per text", source, dim, length)
    return backbone


def _pooled_token_id(config_eos: int | None, tokenizer_eos: int | None) -> int | None:
    """The id the text tower pools at: the config's EOS, or for legacy configs the tokenizer's (the highest id)."""
    if config_eos is None or config_eos == _LEGACY_EOS_ID:
        return tokenizer_eos
    return config_eos


def _load_parts(source: str):
    """Model, tokenizer and image processor from a folder, the hub cache, or (online) the hub."""
    path = Path(source).expanduser()
    if path.is_dir():
        return _attempt(str(path), local_only=True, where=f"folder {path}")
    if not _HUB_ID.fullmatch(source):
        raise EnclipError(
            f"hf-clip folder {path} does not exist. Pass a folder saved with CLIPModel.save_pretrained (config.json, "
            "weights, tokenizer files, preprocessor_config.json) or a Hugging Face hub id such as org/repo."
        )
    try:
        return _from_pretrained(source, local_only=True)  # the hub cache, without waiting on the network
    except Exception as error:  # not cached (OSError), or a partial cache: the download below may complete it
        if _offline():
            raise EnclipError(_not_on_disk(source, error)) from error
    return _attempt(source, local_only=False, where=f"hub id {source}")


def _attempt(source: str, local_only: bool, where: str):
    try:
        return _from_pretrained(source, local_only)
    except Exception as error:  # transformers raises OSError, ValueError, KeyError... for missing or broken files
        if not local_only:
            raise EnclipError(_not_on_disk(source, error)) from error
        raise EnclipError(
            f"could not load a transformers CLIPModel with its tokenizer and image processor from {where}: {error}. "
            "The folder needs config.json, the weights, the tokenizer files and preprocessor_config.json."
        ) from error


def _from_pretrained(source: str, local_only: bool):
    from transformers import AutoImageProcessor, AutoTokenizer, CLIPModel

    model = CLIPModel.from_pretrained(source, local_files_only=local_only)
    tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=local_only)
    processor = AutoImageProcessor.from_pretrained(source, local_files_only=local_only)
    return model, tokenizer, processor


def _offline() -> bool:
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def _not_on_disk(source: str, error: Exception) -> str:
    return (
        f"hf-clip model {source!r} is neither a folder nor in the Hugging Face cache, and could not be downloaded "
        f"({error}). Weights must be on disk when the machine is offline: on a connected machine run "
        f"`hf download {source} --local-dir DIR`, copy DIR here and use hf-clip:DIR."
    )


def clip_preprocess(processor) -> Callable[[Image.Image], torch.Tensor]:
    """The image processor's inference steps as a torchvision v2 transform: resize shortest side, crop, normalise."""
    from torchvision.transforms import v2

    steps = []
    interpolation = _interpolation(getattr(processor, "resample", None))
    if getattr(processor, "do_resize", True):
        steps.append(v2.Resize(_resize_size(processor.size), interpolation=interpolation, antialias=True))
    if getattr(processor, "do_center_crop", True) and getattr(processor, "crop_size", None) is not None:
        steps.append(v2.CenterCrop(_crop_size(processor.crop_size)))
    steps += [v2.PILToTensor(), v2.ToDtype(torch.float32, scale=True)]
    if getattr(processor, "do_normalize", True):
        steps.append(v2.Normalize(list(processor.image_mean), list(processor.image_std)))
    transform = v2.Compose(steps)

    def preprocess(image: Image.Image) -> torch.Tensor:
        return transform(image.convert("RGB"))

    return preprocess


def _interpolation(resample):
    """The processor's resampling filter (a PIL code, or already a torchvision mode); CLIP's default is bicubic."""
    from torchvision.transforms.v2 import InterpolationMode

    if isinstance(resample, InterpolationMode):
        return resample
    return InterpolationMode[_PIL_RESAMPLE.get(int(resample) if resample is not None else 3, "BICUBIC")]


def _field(size, key: str):
    return size.get(key) if isinstance(size, dict) else getattr(size, key, None)


def _resize_size(size) -> int | list[int]:
    if isinstance(size, int):
        return size
    if _field(size, "shortest_edge"):
        return int(_field(size, "shortest_edge"))
    if _field(size, "height") and _field(size, "width"):
        return [int(_field(size, "height")), int(_field(size, "width"))]
    raise EnclipError(f"unsupported image processor size {size!r}: expected shortest_edge or height and width")


def _crop_size(size) -> list[int]:
    if isinstance(size, int):
        return [size, size]
    return [int(_field(size, "height")), int(_field(size, "width"))]
