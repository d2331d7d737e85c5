"""faiss backends: exact flat inner product, HNSW graph and IVF lists, all held to the numpy ExactIndex by tests.

Filters and tombstones reach faiss as an ``IDSelectorBitmap`` in the search parameters. The approximate kinds
(HNSW, IVF) score very selective filters exactly instead: a few thousand allowed rows are cheap to score by brute
force, while graph/list search loses most of its recall when nearly every visited row is filtered out.
Threading is left to the caller (``faiss.omp_set_num_threads``); nothing here changes it.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import faiss
import numpy as np

from enclip.errors import EnclipError
from enclip.vectors.base import IndexCfg, VectorIndex
from enclip.vectors.exact import brute_force_topk

logger = logging.getLogger(__name__)

FAISS_FILE = "index.faiss"
MIN_POINTS_PER_LIST = 39  # faiss k-means wants this many training points per centroid
MAX_POINTS_PER_LIST = 256  # ... and samples down to this many; we sample ourselves (seeded, no faiss warning)
ADD_BLOCK = 65536  # rows converted to float32 at once when (re)building from stored vectors


def _selector(candidates: np.ndarray | None, n: int) -> faiss.IDSelector | None:
    if candidates is None:
        return None
    mask = np.zeros(n, dtype=bool)
    mask[candidates] = True
    return faiss.IDSelectorBitmap(np.packbits(mask, bitorder="little"))


def _as_faiss_rows(rows: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(rows, dtype=np.float32)


class _FaissIndex(VectorIndex):
    """Shared plumbing: keep a faiss index in step with the stored vectors and search it with a selector."""

    approximate = False  # approximate kinds score very selective filters exactly

    def __init__(self, dim: int, cfg: IndexCfg | None = None) -> None:
        super().__init__(dim, cfg)
        self._faiss = self._new_faiss_index()

    def _new_faiss_index(self) -> faiss.Index | None:
        raise NotImplementedError

    def _search_params(self, selector: faiss.IDSelector | None, k: int) -> faiss.SearchParameters:
        return faiss.SearchParameters(sel=selector)

    def _on_add(self, rows: np.ndarray) -> None:
        self._faiss.add(_as_faiss_rows(rows))

    def _search(
        self, queries: np.ndarray, k: int, candidates: np.ndarray | None
    ) -> tuple[np.ndarray, np.ndarray]:
        if self.approximate and candidates is not None and self._filter_is_selective(len(candidates)):
            return brute_force_topk(self._vectors, queries, k, candidates)
        selector = _selector(candidates, len(self))  # must outlive the search call: faiss holds a raw pointer
        params = self._search_params(selector, k)
        scores, positions = self._faiss.search(queries, k, params=params)
        return scores, positions.astype(np.int64, copy=False)

    def _filter_is_selective(self, n_allowed: int) -> bool:
        return n_allowed <= max(self.cfg.filter_exact_rows, self.cfg.filter_exact_fraction * len(self))

    def _save_backend(self, directory: Path) -> list[str]:
        if self._faiss is None:
            return []
        faiss.write_index(self._faiss, str(directory / FAISS_FILE))
        return [FAISS_FILE]

    def _load_backend(self, directory: Path, info: dict) -> None:
        path = directory / FAISS_FILE
        if not path.exists():
            raise EnclipError(f"{path} is missing; the index directory is incomplete, rebuild it")
        loaded = faiss.read_index(str(path))
        if loaded.ntotal != len(self) or loaded.d != self.dim:
            raise EnclipError(
                f"{path} holds {loaded.ntotal} rows of dim {loaded.d} but vectors.npy {len(self)} of dim {self.dim}; "
                "rebuild the index"
            )
        self._faiss = loaded

    def _rebuild_from_vectors(self) -> None:
        self._faiss = self._new_faiss_index()
        for start in range(0, len(self), ADD_BLOCK):
            self._faiss.add(_as_faiss_rows(self._vectors[start : start + ADD_BLOCK]))


class FaissFlatIndex(_FaissIndex):
    """faiss IndexFlatIP: exact like ExactIndex, with faiss's faster BLAS kernels. Rebuilt from vectors.npy on load."""

    kind = "flat"

    def _new_faiss_index(self) -> faiss.Index:
        return faiss.IndexFlatIP(self.dim)

    def _save_backend(self, directory: Path) -> list[str]:
        return []  # the flat index is exactly vectors.npy; no need to store it twice

    def _load_backend(self, directory: Path, info: dict) -> None:
        self._rebuild_from_vectors()


class FaissHNSWIndex(_FaissIndex):
    """faiss IndexHNSWFlat (inner product): sub-linear approximate search for larger catalogues."""

    kind = "hnsw"
    approximate = True

    def _new_faiss_index(self) -> faiss.Index:
        index = faiss.IndexHNSWFlat(self.dim, self.cfg.hnsw_m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = self.cfg.hnsw_ef_construction
        index.hnsw.efSearch = self.cfg.hnsw_ef_search
        return index

    def _search_params(self, selector: faiss.IDSelector | None, k: int) -> faiss.SearchParameters:
        return faiss.SearchParametersHNSW(sel=selector, efSearch=max(self.cfg.hnsw_ef_search, k))


class FaissIVFIndex(_FaissIndex):
    """faiss IndexIVFFlat (inner product). Trained lazily on every vector added before the first search or save;
    later additions go into the trained lists without retraining."""

    kind = "ivf"
    approximate = True

    def _new_faiss_index(self) -> None:
        return None  # built (trained) lazily, see _ensure_trained

    def _on_add(self, rows: np.ndarray) -> None:
        if self._faiss is not None:
            self._faiss.add(_as_faiss_rows(rows))

    def _prepare_save(self) -> None:
        self._ensure_trained()

    def _search(
        self, queries: np.ndarray, k: int, candidates: np.ndarray | None
    ) -> tuple[np.ndarray, np.ndarray]:
        self._ensure_trained()
        return super()._search(queries, k, candidates)

    def _search_params(self, selector: faiss.IDSelector | None, k: int) -> faiss.SearchParameters:
        return faiss.SearchParametersIVF(sel=selector, nprobe=min(self.cfg.ivf_nprobe, self._faiss.nlist))

    def _load_backend(self, directory: Path, info: dict) -> None:
        if len(self) > 0:
            super()._load_backend(directory, info)

    @property
    def nlist(self) -> int | None:
        """Lists actually used (None until trained); may be below cfg.ivf_nlist for small catalogues."""
        return None if self._faiss is None else int(self._faiss.nlist)

    def _ensure_trained(self) -> None:
        if self._faiss is not None or len(self) == 0:
            return
        nlist = self._choose_nlist(len(self))
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(self.dim), self.dim, nlist, faiss.METRIC_INNER_PRODUCT)
        index.train(self._training_sample(nlist))
        self._faiss = index
        for start in range(0, len(self), ADD_BLOCK):
            index.add(_as_faiss_rows(self._vectors[start : start + ADD_BLOCK]))
        logger.info("trained IVF index: %d lists over %d vectors", nlist, len(self))

    def _choose_nlist(self, n: int) -> int:
        wanted = self.cfg.ivf_nlist or max(1, round(4 * math.sqrt(n)))
        affordable = max(1, n // MIN_POINTS_PER_LIST)
        if wanted > affordable:
            logger.info(
                "IVF: %d vectors can train only %d lists (k-means needs >= %d points per list), not %d; using %d",
                n, affordable, MIN_POINTS_PER_LIST, wanted, affordable,
            )
        return min(wanted, affordable)

    def _training_sample(self, nlist: int) -> np.ndarray:
        limit = MAX_POINTS_PER_LIST * nlist
        if len(self) <= limit:
            return _as_faiss_rows(self._vectors)
        rows = np.sort(np.random.default_rng(0).choice(len(self), size=limit, replace=False))
        return _as_faiss_rows(self._vectors[rows])
