"""Vector indexes over L2-normalised embeddings: one interface, an exact numpy reference and faiss backends.

``create_index(dim, IndexCfg(kind=...))`` builds one by name; ``load_index(directory)`` reloads any saved index
from its self-describing ``index_info.json``.
"""

from __future__ import annotations

import importlib
from pathlib import Path

from enclip.artifacts import read_json
from enclip.errors import EnclipError
from enclip.vectors.base import INFO_FILE, IndexCfg, ItemFields, VectorIndex, Where
from enclip.vectors.exact import ExactIndex, brute_force_topk
from enclip.vectors.faiss_backend import FaissFlatIndex, FaissHNSWIndex, FaissIVFIndex

INDEX_KINDS: dict[str, type[VectorIndex]] = {
    "exact": ExactIndex,
    "flat": FaissFlatIndex,
    "hnsw": FaissHNSWIndex,
    "ivf": FaissIVFIndex,
}


# Backends on external engines, imported on first use (their clients are optional extras: enclip[scale]).
ENGINE_KINDS: dict[str, str] = {"milvus": "enclip.vectors.milvus:MilvusIndex"}


def index_class(kind: str) -> type[VectorIndex]:
    """The backend class registered under ``kind``."""
    if kind in ENGINE_KINDS:
        module, name = ENGINE_KINDS[kind].split(":")
        return getattr(importlib.import_module(module), name)
    if kind not in INDEX_KINDS:
        raise EnclipError(f"unknown index kind {kind!r}; choose one of {sorted([*INDEX_KINDS, *ENGINE_KINDS])}")
    return INDEX_KINDS[kind]


def create_index(dim: int, cfg: IndexCfg | None = None) -> VectorIndex:
    """An empty index of the kind named in ``cfg`` (default: exact faiss flat inner product)."""
    cfg = cfg or IndexCfg()
    return index_class(cfg.kind)(dim, cfg)


def load_index(directory: str | Path, mmap: bool = False) -> VectorIndex:
    """Reload a saved index, picking the backend from the kind recorded in its index_info.json."""
    info = read_json(Path(directory) / INFO_FILE)
    return index_class(info.get("kind")).load(directory, mmap=mmap)


__all__ = [
    "ENGINE_KINDS",
    "INDEX_KINDS",
    "ExactIndex",
    "FaissFlatIndex",
    "FaissHNSWIndex",
    "FaissIVFIndex",
    "IndexCfg",
    "ItemFields",
    "VectorIndex",
    "Where",
    "brute_force_topk",
    "create_index",
    "index_class",
    "load_index",
]
