"""Embed catalogue text with a model's text tower: each item's text (title plus attribute values) for the item-text
channel, and the distinct titles for the hubness bank."""

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
    """(n, K*d) concatenated member embeddings of each item's text, resumably (shards of the same job only)."""
    distinct, inverse = np.unique(np.asarray(item_texts(catalogue), dtype=str), return_inverse=True)
    encoded = encode_distinct(ensemble, distinct, work_dir, batch_size=batch_size, shard_size=shard_size,
                              dtype=dtype, times=times, job=job, desc="embed item texts")
    return encoded[inverse]


def encode_title_bank(ensemble: Ensemble, catalogue: Catalogue, work_dir: Path, *, batch_size: int = 256,
                      shard_size: int = 8192, job: dict | None = None) -> tuple[list[str], np.ndarray]:
    """The catalogue's distinct titles and their (m, K*d) member text vectors: the hubness bank
    (:mod:`enclip.store.hubness`), resumably."""
    distinct = np.unique(np.asarray(catalogue.titles, dtype=str))
    vectors = encode_distinct(ensemble, distinct, work_dir, batch_size=batch_size, shard_size=shard_size,
                              job=job, desc="embed title bank")
    return [str(title) for title in distinct], vectors


def encode_distinct(ensemble: Ensemble, texts: np.ndarray, work_dir: Path, *, batch_size: int = 256,
                    shard_size: int = 8192, dtype: str = "float32", times: StageTimes | None = None,
                    job: dict | None = None, desc: str = "embed texts") -> np.ndarray:
    """(len(texts), K*d) member vectors of distinct ``texts``, in their order, resumably in ``work_dir``.

    Texts are encoded shortest first, so batches hold texts of similar length and pad little.
    """
    order = np.argsort([len(text) for text in texts], kind="stable")
    target = np.float16 if dtype == "float16" else np.float32

    def read(rows: np.ndarray) -> list[str]:
        return [str(texts[order[int(r)]]) for r in rows]

    def encode(batch: list[str]) -> dict[str, np.ndarray]:
        return {"vectors": concat_members(ensemble.encode_texts(batch)).astype(target)}

    encoded = run_sharded(len(texts), read, encode, work_dir, batch_size=batch_size, shard_size=shard_size,
                          desc=desc, times=times, job=job)["vectors"]
    return encoded[np.argsort(order)]  # shortest-first rows -> texts in their given order
