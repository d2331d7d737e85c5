"""The frozen image trunk's outputs, computed once per photo and view and kept on disk.

Training (its clean and degraded views) and indexing (the whole catalogue, clean) share this cache, so each
catalogue image passes the trunk once whatever runs after it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from enclip.data.catalogue import Catalogue
from enclip.data.degrade import AugmentCfg, random_degrade
from enclip.embed.runner import StageTimes, run_sharded
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
                         times: StageTimes | None = None) -> np.ndarray:
    """(n, ...) float16 image trunk outputs for one view (0 = clean), resumably."""
    reader = _image_reader(ensemble, catalogue, positions, view, augment or AugmentCfg(), seed)
    with torch.no_grad():
        return run_sharded(len(positions), reader, lambda px: {"features": half(ensemble.image_trunk_outputs(px))},
                           Path(work_dir) / f"image-view{view}", batch_size=batch_size,
                           desc=f"cache images ({view})", times=times)["features"]


def _image_reader(ensemble: Ensemble, catalogue: Catalogue, positions: np.ndarray, view: int,
                  augment: AugmentCfg, seed: int):
    def read(rows: np.ndarray) -> torch.Tensor:
        images = [catalogue.image(int(positions[r])) for r in rows]
        if view > 0:
            images = [random_degrade(im, augment, np.random.default_rng([seed, view, int(r)]))
                      for im, r in zip(images, rows)]
        return ensemble.pixels(images)

    return read
