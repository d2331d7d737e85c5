"""Cache the frozen trunks' outputs once, so epochs and ensemble members only run the small heads.

Augmentation happens before the trunk, so it is baked into the cache: each training image is stored as its clean
view plus ``views`` degraded views (seeded), and every epoch draws one of them per item.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from enclip.data.captions import CaptionCfg, build_captions
from enclip.data.catalogue import Catalogue
from enclip.data.degrade import AugmentCfg
from enclip.embed.runner import run_sharded
from enclip.embed.trunk_cache import cache_image_features, half
from enclip.errors import EnclipError
from enclip.models.ensemble import Ensemble
from enclip.models.towers import without_colour

log = logging.getLogger(__name__)


@dataclass
class FeatureCache:
    """Trunk outputs for a set of catalogue positions."""

    positions: np.ndarray  # catalogue positions of the items, in cache order
    images: list[np.ndarray]  # per view: (n, ...) float16 trunk outputs; view 0 is the clean image
    texts: dict[str, np.ndarray]  # "pooled" (c, h) or "hidden" (c, t, h) + "mask" (c, t), one row per caption
    caption_owner: np.ndarray  # (c,) item row (0..n-1) each caption belongs to
    first_caption: np.ndarray  # (n,) row of each item's title caption
    labels: dict[str, np.ndarray] = field(default_factory=dict)  # attribute column -> (n,) values, "" when missing

    def __len__(self) -> int:
        return len(self.positions)

    def pooled_images(self, colour: bool = False) -> np.ndarray:
        """Clean image features averaged over space: the cheap base embedding clustering runs on. ``colour``: the
        features end with a colour thumbnail (``towers.ColourTrunk``), which is left out."""
        clean = self.images[0].astype(np.float32)
        if colour:
            clean = without_colour(clean)
        return clean.mean(axis=(2, 3)) if clean.ndim == 4 else clean

    def title_lengths(self) -> np.ndarray | None:
        """Tokens in each item's title caption (None for pooled text features, where length costs nothing)."""
        if "mask" not in self.texts:
            return None
        return self.texts["mask"][self.first_caption].sum(axis=1)

    def image_batch(self, rows: np.ndarray, views: np.ndarray, device, mirrored: np.ndarray | None = None
                    ) -> torch.Tensor:
        """Trunk outputs of ``rows`` in their ``views``; where ``mirrored`` is true, the feature map is flipped
        left to right (the cached stand-in for a mirrored photo, which costs no trunk pass)."""
        maps = [self.images[v][r] for r, v in zip(rows, views)]
        if mirrored is not None and mirrored.any():
            if maps[0].ndim != 3:
                raise EnclipError("mirrored views need feature maps; these trunk outputs are pooled vectors "
                                  "(train an image stage, --trainable-image 1 or more, or leave out --mirror)")
            maps = [m[..., ::-1] if flip else m for m, flip in zip(maps, mirrored)]
        batch = np.stack(maps)
        tensor = torch.from_numpy(batch).to(device=device, dtype=torch.float32)
        return tensor.contiguous(memory_format=torch.channels_last) if tensor.ndim == 4 else tensor

    def text_batch(self, caption_rows: np.ndarray, device):
        if "pooled" in self.texts:
            return torch.from_numpy(self.texts["pooled"][caption_rows]).to(device=device, dtype=torch.float32)
        mask = self.texts["mask"][caption_rows]
        used = int(mask.any(axis=0).nonzero()[0].max()) + 1
        hidden = torch.from_numpy(self.texts["hidden"][caption_rows, :used]).to(device=device, dtype=torch.float32)
        return hidden, torch.from_numpy(mask[:, :used]).to(device)


def _text_arrays(output) -> dict[str, np.ndarray]:
    if isinstance(output, tuple):
        hidden, mask = output
        return {"hidden": half(hidden), "mask": mask.to(torch.uint8).cpu().numpy()}
    return {"pooled": half(output)}


def cache_features(
    ensemble: Ensemble,
    catalogue: Catalogue,
    positions: np.ndarray,
    work_dir: Path,
    *,
    views: int = 1,
    augment: AugmentCfg | None = None,
    captions: CaptionCfg | None = None,
    seed: int = 0,
    batch_size: int = 256,
    clean: np.ndarray | None = None,
) -> FeatureCache:
    """Run the trunks over ``positions`` (clean + ``views`` degraded images, and every caption), resumably.

    ``clean``: the clean view's trunk outputs when already computed (e.g. a catalogue-wide cache also used to index).
    """
    with torch.no_grad():
        return _cache(ensemble, catalogue, positions, Path(work_dir), views, augment or AugmentCfg(),
                      captions or CaptionCfg(), seed, batch_size, clean)


def _cache(ensemble, catalogue, positions, work_dir, views, augment, captions, seed, batch_size,
           clean) -> FeatureCache:
    images = [clean if clean is not None else
              cache_image_features(ensemble, catalogue, positions, work_dir, batch_size=batch_size)]
    images += [cache_image_features(ensemble, catalogue, positions, work_dir, view=view, augment=augment, seed=seed,
                                    batch_size=batch_size, clean=images[0]) for view in range(1, views + 1)]
    texts, owner = _caption_table(catalogue, positions, captions)
    text_arrays = _cache_texts(ensemble, texts, work_dir / "distinct-texts", batch_size)
    first = np.searchsorted(owner, np.arange(len(positions)))
    labels = {name: np.asarray(values, dtype=object)[np.asarray(positions, dtype=np.int64)].astype(str)
              for name, values in catalogue.attributes.items()}
    return FeatureCache(np.asarray(positions), images, text_arrays, owner, first, labels)


def _cache_texts(ensemble: Ensemble, texts: list[str], work_dir: Path, batch_size: int) -> dict[str, np.ndarray]:
    """Trunk outputs per caption. Each distinct caption is encoded once (catalogue titles repeat), shortest first
    with each batch trimmed to its longest, which saves most of the cost for short product titles; rows come back
    in the captions' order, padded to one width."""
    backbone = ensemble.backbone
    distinct, inverse = np.unique(np.asarray(texts, dtype=str), return_inverse=True)
    tokens = backbone.tokenizer(distinct.tolist())
    lengths = (tokens != backbone.pad_token_id).sum(dim=1).numpy()
    order = np.argsort(lengths, kind="stable") if backbone.trim_padding else np.arange(len(distinct))
    width = int(lengths.max()) if backbone.trim_padding else tokens.shape[1]

    def read(rows: np.ndarray) -> torch.Tensor:
        batch = tokens[torch.from_numpy(order[rows])]
        return batch[:, : int(lengths[order[rows]].max())] if backbone.trim_padding else batch

    def encode(ids: torch.Tensor) -> dict[str, np.ndarray]:
        arrays = _text_arrays(ensemble.text_trunk(ids.to(ensemble.device)))
        if "hidden" in arrays and arrays["hidden"].shape[1] < width:
            pad = width - arrays["hidden"].shape[1]
            arrays["hidden"] = np.pad(arrays["hidden"], ((0, 0), (0, pad), (0, 0)))
            arrays["mask"] = np.pad(arrays["mask"], ((0, 0), (0, pad)))
        return arrays

    arrays = run_sharded(len(distinct), read, encode, work_dir, batch_size=batch_size, desc="cache texts")
    rows = np.argsort(order)[inverse]  # caption -> its distinct text -> that text's encoded row
    return {name: array[rows] for name, array in arrays.items()}


def _caption_table(catalogue: Catalogue, positions: np.ndarray, cfg: CaptionCfg) -> tuple[list[str], np.ndarray]:
    texts: list[str] = []
    owner: list[int] = []
    for row, position in enumerate(positions):
        item = catalogue.item(int(position))
        for caption in build_captions(item["title"], item["attributes"], cfg):
            texts.append(caption)
            owner.append(row)
    return texts, np.asarray(owner, dtype=np.int64)
