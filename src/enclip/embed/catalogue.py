"""Embed every catalogue image with a model: (n, K*d) concatenated, per-member normalised vectors.

From pixels through the resumable runner, or from the shared trunk cache when one is given (then only the K
member heads run).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from enclip.data.catalogue import Catalogue
from enclip.embed.runner import StageTimes, prefetch_pays, run_sharded
from enclip.embed.trunk_cache import catalogue_image_features
from enclip.models.ensemble import Ensemble


def encode_catalogue(ensemble: Ensemble, catalogue: Catalogue, work_dir: Path, *, batch_size: int = 256,
                     shard_size: int = 4096, dtype: str = "float32", trunk_cache: str | Path | None = None,
                     times: StageTimes | None = None, job: dict | None = None) -> np.ndarray:
    """(n, K*d) concatenated, per-member normalised image embeddings of every catalogue item."""
    dtype = np.float16 if dtype == "float16" else np.float32

    def read(rows: np.ndarray) -> torch.Tensor:
        return ensemble.pixels([catalogue.image(int(r)) for r in rows])

    def encode(pixels: torch.Tensor) -> dict[str, np.ndarray]:
        members = ensemble.encode_pixels(pixels)  # (K, B, d)
        return {"vectors": members.permute(1, 0, 2).reshape(len(pixels), -1).cpu().numpy().astype(dtype)}

    if trunk_cache:
        return _encode_from_trunk_cache(ensemble, catalogue, Path(trunk_cache), batch_size, dtype, times)
    return run_sharded(len(catalogue), read, encode, work_dir, batch_size=batch_size,
                       shard_size=shard_size, desc="embed catalogue", times=times, job=job,
                       prefetch=prefetch_pays(ensemble.device))["vectors"]


def _encode_from_trunk_cache(ensemble: Ensemble, catalogue: Catalogue, cache_root: Path, batch_size: int, dtype,
                             times: StageTimes | None) -> np.ndarray:
    features = catalogue_image_features(ensemble, catalogue, cache_root, batch_size, times)
    return encode_trunk_outputs(ensemble, features, dtype)


def encode_trunk_outputs(ensemble: Ensemble, features: np.ndarray, dtype=np.float32, chunk: int = 1024) -> np.ndarray:
    """(n, K*d) concatenated, per-member normalised embeddings of image-trunk outputs, ``chunk`` at a time."""
    parts = []
    for start in range(0, len(features), chunk):
        batch = torch.from_numpy(np.ascontiguousarray(features[start : start + chunk])).to(ensemble.device,
                                                                                           torch.float32)
        if batch.ndim == 4:
            batch = batch.contiguous(memory_format=torch.channels_last)
        members = ensemble.encode_image_features(batch)
        parts.append(members.permute(1, 0, 2).reshape(len(batch), -1).cpu().numpy().astype(dtype))
    return np.concatenate(parts)
