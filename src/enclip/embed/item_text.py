"""Embed every item's text (title plus attribute values) with a model's text tower: the item-text channel."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from enclip.data.catalogue import Catalogue
from enclip.data.item_text import item_text
from enclip.embed.runner import StageTimes, run_sharded
from enclip.embed.space import concat_members
from enclip.models.ensemble import Ensemble


def item_texts(catalogue: Catalogue) -> list[str]:
    return [item_text(catalogue.titles[i], {k: v[i] for k, v in catalogue.attributes.items()})
            for i in range(len(catalogue))]


def encode_item_texts(ensemble: Ensemble, catalogue: Catalogue, work_dir: Path, *, batch_size: int = 256,
                      shard_size: int = 8192, dtype: str = "float32", times: StageTimes | None = None,
                      job: dict | None = None) -> np.ndarray:
    """(n, K*d) concatenated member embeddings of each item's text, resumably (shards of the same job only).

    Each distinct text is encoded once, shortest first, so batches hold texts of similar length and pad little.
    """
    distinct, inverse = np.unique(np.asarray(item_texts(catalogue), dtype=str), return_inverse=True)
    order = np.argsort([len(text) for text in distinct], kind="stable")
    target = np.float16 if dtype == "float16" else np.float32

    def read(rows: np.ndarray) -> list[str]:
        return [str(distinct[order[int(r)]]) for r in rows]

    def encode(batch: list[str]) -> dict[str, np.ndarray]:
        return {"vectors": concat_members(ensemble.encode_texts(batch)).astype(target)}

    encoded = run_sharded(len(distinct), read, encode, work_dir, batch_size=batch_size, shard_size=shard_size,
                          desc="embed item texts", times=times, job=job)["vectors"]
    return encoded[np.argsort(order)][inverse]  # shortest-first rows -> distinct texts -> items
