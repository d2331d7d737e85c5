"""The vector-index interface every backend implements, with the bookkeeping they share.

Rows are addressed by position 0..n-1 in the order they were added (the catalogue order); the caller maps positions
to product ids. The index keeps the stored vectors as a numpy array (in ``cfg.dtype``) so that ``reconstruct`` and
``save`` never depend on the backend; backends only implement the search structure on top of it.
"""

from __future__ import annotations

import dataclasses
import logging
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from enclip.artifacts import manifest, read_json, write_json
from enclip.errors import EnclipError

logger = logging.getLogger(__name__)

INFO_FILE = "index_info.json"
VECTORS_FILE = "vectors.npy"
REMOVED_FILE = "removed.npy"
FORMAT_VERSION = 1
STORAGE_DTYPES = {"float32": np.float32, "float16": np.float16}


@dataclass
class IndexCfg:
    kind: str = "flat"  # "flat" (exact inner product), "hnsw", "ivf", or "exact" (numpy reference)
    dtype: str = "float32"  # storage precision of the kept/saved vectors: "float32" | "float16"
    hnsw_m: int = 32  # HNSW graph degree
    hnsw_ef_search: int = 128  # HNSW search breadth (higher = more exact)
    hnsw_ef_construction: int = 200  # HNSW build breadth (higher = better graph, slower build)
    ivf_nlist: int | None = None  # IVF lists; None = about 4*sqrt(n)
    ivf_nprobe: int = 16  # IVF lists probed per query
    filter_exact_rows: int = 4096  # approximate kinds score a filter allowing at most this many rows exactly
    filter_exact_fraction: float = 0.05  # ... or allowing at most this fraction of all rows
    milvus_uri: str | None = None  # milvus: a ``.db`` file (embedded Milvus Lite) or http(s)://host:19530 (a server)
    milvus_collection: str = "enclip_items"  # milvus: collection name prefix (each build gets its own collection)
    milvus_index: str = "flat"  # milvus: "flat" (exact), "hnsw" (uses the hnsw_* fields) or "auto" (by size)


@dataclass(frozen=True)
class Where:
    """Which rows a search may return, in two equivalent forms: the condition itself, for engines that filter on
    stored fields (Milvus expressions), and the same condition as a boolean mask over row positions, for in-process
    backends. Attribute keys are ANDed, the values of one key ORed."""

    attributes: dict[str, tuple[str, ...]] = dataclasses.field(default_factory=dict)  # attribute -> allowed values
    clusters: tuple[int, ...] | None = None  # allowed item clusters (None = any)
    mask: np.ndarray | None = None  # (n,) bool over row positions; None = every row


@dataclass(frozen=True)
class ItemFields:
    """Scalar fields of the rows being added, for engines that filter on stored fields (Milvus); in-process
    backends filter by position and ignore them."""

    ids: Sequence[str]  # catalogue id of each row
    attributes: dict[str, Sequence[str]] = dataclasses.field(default_factory=dict)  # attribute -> value per row
    clusters: Sequence[int] | None = None  # item cluster of each row (None = no clusters)

    def __len__(self) -> int:
        return len(self.ids)


def _validate_cfg(dim: int, cfg: IndexCfg) -> None:
    if int(dim) <= 0:
        raise EnclipError(f"index dimension must be positive, got {dim}")
    if cfg.dtype not in STORAGE_DTYPES:
        raise EnclipError(f"index dtype {cfg.dtype!r} is not supported; use one of {sorted(STORAGE_DTYPES)}")


def cfg_from_params(params: dict) -> IndexCfg:
    """Rebuild an IndexCfg from saved params, ignoring (and logging) fields this version does not know."""
    known = {f.name for f in dataclasses.fields(IndexCfg)}
    unknown = sorted(set(params) - known)
    if unknown:
        logger.warning("ignoring unknown index params %s (saved by a newer enclip?)", unknown)
    return IndexCfg(**{key: value for key, value in params.items() if key in known})


class VectorIndex(ABC):
    """Inner-product search over L2-normalised rows, with filters and tombstone removal."""

    kind: str = ""  # registry name, written to index_info.json

    def __init__(self, dim: int, cfg: IndexCfg | None = None) -> None:
        cfg = cfg or IndexCfg()
        _validate_cfg(dim, cfg)
        self.dim = int(dim)
        self.cfg = replace(cfg, kind=self.kind)
        self._buffer = np.empty((0, self.dim), dtype=STORAGE_DTYPES[cfg.dtype])
        self._n = 0
        self._removed = np.zeros(0, dtype=bool)

    # ----- shared public API -------------------------------------------------------------------------------------

    def __len__(self) -> int:
        return self._n

    @property
    def _vectors(self) -> np.ndarray:
        """The stored rows (a view; the buffer behind it grows geometrically so repeated adds stay linear)."""
        return self._buffer[: self._n]

    @property
    def n_removed(self) -> int:
        return int(self._removed.sum())

    def add(self, vectors: np.ndarray, fields: ItemFields | None = None) -> None:
        """Append rows at positions len(self)..; rows are rounded to the storage dtype before indexing. ``fields``
        (ids, attributes, clusters of the rows) are stored by backends that filter on them, ignored here."""
        rows = self._check_rows(vectors)
        self._append(rows)
        self._removed = np.concatenate([self._removed, np.zeros(len(rows), dtype=bool)])
        self._on_add(rows)

    def search(
        self, queries: np.ndarray, k: int, allowed: np.ndarray | Where | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-k rows by inner product, best first, as (scores float32 (q,k), positions int64 (q,k)).

        Missing results are padded with score -inf and position -1. ``allowed`` (a boolean mask over all rows, an
        array of positions, or a :class:`Where`) restricts the results; removed rows never come back.
        """
        if isinstance(allowed, Where):
            allowed = allowed.mask
        queries = self._check_queries(queries)
        k = _check_k(k)
        candidates = self._candidates(allowed)
        reachable = self._n - self.n_removed if candidates is None else len(candidates)
        if reachable == 0 or len(queries) == 0:
            return _padded(np.empty((len(queries), 0), np.float32), np.empty((len(queries), 0), np.int64), k)
        scores, positions = self._search(queries, min(k, reachable), candidates)
        return _padded(scores, positions, k)

    def remove(self, positions: np.ndarray) -> None:
        """Tombstone rows: they keep their position (so ids stay aligned) but are excluded from every search."""
        positions = self._check_positions(positions, "remove")
        self._removed[positions] = True

    def reconstruct(self, positions: np.ndarray | int) -> np.ndarray:
        """The stored vectors at ``positions`` as float32 (removed rows included: removal only hides from search)."""
        index = self._check_positions(positions, "reconstruct")
        return np.asarray(self._vectors[index], dtype=np.float32)

    def save(self, directory: Path) -> None:
        """Write vectors.npy, removed.npy, the backend's own files and finally index_info.json into ``directory``.

        The info file is written last, so a directory without it is known to be incomplete; wrap the call in
        :func:`enclip.artifacts.atomic_dir` to replace an existing index atomically.
        """
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self._prepare_save()
        np.save(directory / VECTORS_FILE, np.ascontiguousarray(self._vectors))
        np.save(directory / REMOVED_FILE, self._removed)
        files = [VECTORS_FILE, REMOVED_FILE, *self._save_backend(directory)]
        write_json(directory / INFO_FILE, self._info(files))

    @classmethod
    def load(cls, directory: Path, mmap: bool = False) -> VectorIndex:
        """Reload a saved index; ``mmap`` maps vectors.npy read-only instead of reading it (backend structures are
        always read into memory). Called on VectorIndex itself, the kind recorded in index_info.json is used."""
        directory = Path(directory)
        info = read_json(directory / INFO_FILE)
        if cls is VectorIndex:
            from enclip.vectors import index_class

            return index_class(info.get("kind")).load(directory, mmap=mmap)
        if info.get("kind") != cls.kind:
            raise EnclipError(f"{directory} holds a {info.get('kind')!r} index, not {cls.kind!r}; use load_index()")
        index = cls(int(info["dim"]), cfg_from_params(info.get("params", {})))
        index._restore(directory, info, mmap)
        return index

    # ----- backend hooks -----------------------------------------------------------------------------------------

    def _on_add(self, rows: np.ndarray) -> None:
        """Index freshly appended rows (already in storage dtype); the exact backend has nothing to do."""

    @abstractmethod
    def _search(
        self, queries: np.ndarray, k: int, candidates: np.ndarray | None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Search float32 queries; k never exceeds the reachable rows; candidates = sorted allowed live positions,
        or None when every row is live and allowed. May return -1 positions, which the caller turns into -inf."""

    def _prepare_save(self) -> None:
        """Finish any lazy work (IVF training) before saving."""

    def _save_backend(self, directory: Path) -> list[str]:
        """Write backend files into ``directory``; return their names."""
        return []

    def _load_backend(self, directory: Path, info: dict) -> None:
        """Rebuild the backend structure after the vectors have been restored."""

    # ----- helpers -----------------------------------------------------------------------------------------------

    def _append(self, rows: np.ndarray) -> None:
        needed = self._n + len(rows)
        if needed > len(self._buffer) or not self._buffer.flags.writeable:
            grown = np.empty((max(needed, 2 * len(self._buffer), 1024), self.dim), dtype=self._buffer.dtype)
            grown[: self._n] = self._vectors
            self._buffer = grown
        self._buffer[self._n : needed] = rows
        self._n = needed

    def _restore(self, directory: Path, info: dict, mmap: bool) -> None:
        vectors = _load_array(directory / VECTORS_FILE, mmap)
        removed = _load_array(directory / REMOVED_FILE, False)
        n = int(info["n"])
        if vectors.shape != (n, self.dim) or removed.shape != (n,):
            raise EnclipError(
                f"{directory} is inconsistent: index_info.json says {n} rows of dim {self.dim}, but vectors.npy has "
                f"shape {vectors.shape} and removed.npy {removed.shape}; rebuild the index"
            )
        self._buffer = vectors if vectors.dtype == self._buffer.dtype else vectors.astype(self._buffer.dtype)
        self._n = n
        self._removed = np.array(removed, dtype=bool)
        self._load_backend(directory, info)

    def _info(self, files: list[str]) -> dict:
        info = manifest(
            self.kind,
            format=FORMAT_VERSION,
            dim=self.dim,
            n=self._n,
            n_removed=self.n_removed,
            dtype=self.cfg.dtype,
            params=asdict(self.cfg),
            files=files,
        )
        info["faiss_version"] = info["versions"]["faiss"]
        return info

    def _check_rows(self, vectors: np.ndarray) -> np.ndarray:
        rows = _as_float_matrix(vectors, self.dim, "vectors to add")
        with np.errstate(over="ignore", invalid="ignore"):  # overflow to inf is reported just below
            rows = rows.astype(self._buffer.dtype)
        bad = np.flatnonzero(~np.isfinite(rows).all(axis=1))
        if len(bad):
            raise EnclipError(
                f"{len(bad)} vectors to add contain NaN/inf (in {self.cfg.dtype}), first at row {bad[0]}; "
                "check the encoder output (and that the vectors are L2-normalised)"
            )
        return rows

    def _check_queries(self, queries: np.ndarray) -> np.ndarray:
        matrix = _as_float_matrix(queries, self.dim, "queries", allow_vector=True).astype(np.float32)
        if not np.isfinite(matrix).all():
            raise EnclipError("queries contain NaN/inf; check the text/image encoder output")
        return np.ascontiguousarray(matrix)

    def _check_positions(self, positions: np.ndarray | int, action: str) -> np.ndarray:
        array = np.asarray(positions)
        if array.dtype == bool or not np.issubdtype(array.dtype, np.integer):
            raise EnclipError(f"positions to {action} must be integers, got dtype {array.dtype}")
        if array.size and (array.min() < 0 or array.max() >= self._n):
            raise EnclipError(f"positions to {action} must lie in 0..{self._n - 1}; got {array.min()}..{array.max()}")
        return array.astype(np.int64)

    def _candidates(self, allowed: np.ndarray | None) -> np.ndarray | None:
        """Sorted live positions the search may return, or None when that is every row."""
        live = ~self._removed
        if allowed is None:
            return None if live.all() else np.flatnonzero(live)
        allowed = np.asarray(allowed)
        if allowed.size == 0 and allowed.dtype != bool:
            return np.empty(0, dtype=np.int64)  # an empty position list (possibly a float-typed `[]`) allows nothing
        if allowed.dtype == bool:
            if allowed.shape != (self._n,):
                raise EnclipError(f"allowed mask must have one entry per row ({self._n}), got shape {allowed.shape}")
            return np.flatnonzero(allowed & live)
        positions = np.unique(self._check_positions(allowed.reshape(-1), "allow"))
        return positions[live[positions]]


def _as_float_matrix(values: np.ndarray, dim: int, what: str, allow_vector: bool = False) -> np.ndarray:
    array = np.asarray(values)
    if allow_vector and array.ndim == 1:
        array = array[None, :]
    if array.ndim != 2 or array.shape[1] != dim:
        raise EnclipError(
            f"{what} must have shape (n, {dim}), got {array.shape}; was the index built with another model?"
        )
    if not (np.issubdtype(array.dtype, np.floating) or np.issubdtype(array.dtype, np.integer)):
        raise EnclipError(f"{what} must be numeric, got dtype {array.dtype}")
    return array


def _check_k(k: int) -> int:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k <= 0:
        raise EnclipError(f"k must be a positive integer, got {k!r}")
    return int(k)


def _padded(scores: np.ndarray, positions: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Widen results to k columns; every missing slot becomes (-inf, -1), whatever filler the backend used."""
    q, found = positions.shape
    out_scores = np.full((q, k), -np.inf, dtype=np.float32)
    out_positions = np.full((q, k), -1, dtype=np.int64)
    out_positions[:, :found] = positions
    out_scores[:, :found] = np.where(positions >= 0, scores, -np.inf)
    return out_scores, out_positions


def _load_array(path: Path, mmap: bool) -> np.ndarray:
    try:
        return np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except FileNotFoundError:
        raise EnclipError(f"{path} is missing; the index directory is incomplete, rebuild it") from None
    except ValueError as error:
        raise EnclipError(f"{path} is not a valid .npy file ({error}); rebuild the index") from error
