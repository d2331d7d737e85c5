"""The frozen image trunk's outputs, computed once per photo and view and kept on disk.

Training (its clean and degraded views) and indexing (the whole catalogue, clean) share this cache, so each
catalogue image passes the trunk once whatever runs after it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from enclip.data.catalogue import Catalogue
from enclip.data.degrade import AugmentCfg, degrades, random_degrade
from enclip.embed.runner import StageTimes, prefetch_pays, run_sharded
from enclip.models.ensemble import Ensemble


def half(tensor: torch.Tensor) -> np.ndarray:
    return tensor.to(torch.float16).cpu().numpy()


def catalogue_image_features(ensemble: Ensemble, catalogue: Catalogue, cache_root: Path, batch_size: int = 256,
                             times: StageTimes | None = None) -> np.ndarray:
    """Clean image trunk outputs of the whole catalogue, kept under ``cache_root`` by trunk and data fingerprint.

    Training (its clean view) and indexing share this cache, so each catalogue image passes the trunk once. It is
    keyed by the image trunk and its preprocessing, so runs that change only the text side or the heads reuse it.
    """
    directory = Path(cache_root) / f"{ensemble.image_cache_key()}-{catalogue.fingerprint()}"
    return cache_image_features(ensemble, catalogue, np.arange(len(catalogue)), directory, batch_size=batch_size,
                                times=times)


def cache_image_features(ensemble: Ensemble, catalogue: Catalogue, positions: np.ndarray, work_dir: Path, *,
                         view: int = 0, augment: AugmentCfg | None = None, seed: int = 0, batch_size: int = 256,
                         times: StageTimes | None = None, clean: np.ndarray | None = None) -> np.ndarray:
    """(n, ...) float16 image trunk outputs for one view (0 = clean), resumably.

    ``clean``: the clean view's outputs for the same positions, when known. A degraded view then runs the trunk only
    on the photos its draw degrades (with probability ``augment.p``) and copies the clean outputs for the rest, which
    are the very same photos; the result is what running every photo would give.
    """
    augment = augment or AugmentCfg()
    positions = np.asarray(positions)
    rows = np.arange(len(positions))
    if view > 0 and clean is not None:
        if len(clean) != len(positions):
            raise ValueError(f"clean holds {len(clean)} rows for {len(positions)} positions")
        rows = rows[[degrades(augment, _view_rng(seed, view, r)) for r in rows]]
    reader = _image_reader(ensemble, catalogue, positions, rows, view, augment, seed)
    name = f"image-view{view}" if len(rows) == len(positions) else f"image-view{view}-degraded"
    with torch.no_grad():
        features = run_sharded(len(rows), reader, lambda px: {"features": half(ensemble.image_trunk_outputs(px))},
                               Path(work_dir) / name, batch_size=batch_size, desc=f"cache images ({view})",
                               times=times, prefetch=prefetch_pays(ensemble.device))["features"]
    if len(rows) == len(positions):
        return features
    out = np.array(clean, dtype=np.float16)
    out[rows] = features
    return out


def _view_rng(seed: int, view: int, row: int) -> np.random.Generator:
    return np.random.default_rng([seed, view, int(row)])


def _image_reader(ensemble: Ensemble, catalogue: Catalogue, positions: np.ndarray, rows: np.ndarray, view: int,
                  augment: AugmentCfg, seed: int):
    """Batch reader over ``rows`` (indices into ``positions``); a degraded view's draw is seeded by the row, so it
    is the same whichever rows are read."""
    def read(batch: np.ndarray) -> torch.Tensor:
        chosen = rows[batch]
        images = [catalogue.image(int(positions[r])) for r in chosen]
        if view > 0:
            images = [random_degrade(im, augment, _view_rng(seed, view, r)) for im, r in zip(images, chosen)]
        return ensemble.pixels(images)

    return read
