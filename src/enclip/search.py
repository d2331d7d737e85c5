"""Search a built index by text, image or both, with attribute filters and a choice of fusion rule.

One query costs one trunk pass per modality, K member heads, and one inner-product search over the concatenated
member vectors: with the member weights put on the query side, ``<[w1 q1, .., wK qK], [x1, .., xK]>`` is exactly
the weighted mean of member cosines, for fixed (``mean``) and query-dependent (``routed``) weights alike. The
top candidates are then re-scored member by member, which gives each hit its member agreement and lets ``rrf`` and
``item-routed`` re-rank them.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import faiss
import numpy as np
import pyarrow.parquet as pq
from PIL import Image

from enclip import fusion
from enclip.artifacts import read_json, recover_dir
from enclip.data.images import load_image
from enclip.errors import EnclipError
from enclip.indexing import catalogue_from_table, check_index_dir
from enclip.models.ensemble import load_model
from enclip.vectors import load_index

log = logging.getLogger(__name__)

FUSION_RULES = ("mean", "routed", "item-routed", "rrf")


@dataclass
class SearchCfg:
    fusion: str | None = None  # default fusion rule (None = the one stored with the index)
    route_temperature: float = 0.05  # softmax temperature of query → cluster routing
    own_weight: float = 0.6  # item-routed: weight of an item's own cluster specialist
    candidates: int = 100  # candidates re-scored per member (at least 5 k)
    spread_threshold: float = 0.08  # low-confidence: mean member score spread over the hits above this
    min_votes_share: float = 0.5  # low-confidence: top hit in fewer members' top-k than this share
    device: str = "cpu"  # where the query encoders run
    query_threads: int = 1  # faiss threads for a one-query search (batches use every core; see _faiss_threads)


@dataclass
class Hit:
    id: str
    score: float
    title: str
    attributes: dict[str, str]
    member_scores: list[float]  # each member's cosine for this hit
    spread: float  # standard deviation of member scores (0 for a single model)
    votes: int  # members ranking this hit in their own top-k

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class SearchResult:
    hits: list[Hit]
    low_confidence: bool  # the members disagree: treat the ranking with care
    fusion: str
    took_ms: float

    def to_dict(self) -> dict:
        return {"hits": [hit.to_dict() for hit in self.hits], "low_confidence": self.low_confidence,
                "fusion": self.fusion, "took_ms": self.took_ms}


class Searcher:
    """A loaded index: model, items, vectors and routing. Thread-safe; admin changes are serialised."""

    def __init__(self, path: Path, cfg: SearchCfg | None = None):
        self.path = check_index_dir(path)
        self.cfg = cfg or SearchCfg()
        recover_dir(self.path)
        self.manifest = read_json(self.path / "index.json")
        self.model, self.info = load_model(self.path / "model", device=self.cfg.device)
        self.catalogue = catalogue_from_table(pq.read_table(self.path / "items.parquet"), str(self.path))
        self.index = load_index(self.path / "vectors")
        routing = np.load(self.path / "routing.npz")
        self.centroids, self.item_clusters = routing["centroids"], routing["item_clusters"]
        self.members = len(self.model)
        self.dim = self.index.dim // self.members
        self.weights = np.asarray(self.info.weights or [1.0] * self.members, dtype=np.float32)
        self.weights = self.weights / self.weights.sum()
        self.default_fusion = self.cfg.fusion or self.info.fusion or "mean"
        self._masks: dict[tuple[str, str], np.ndarray] = {}
        self._lock = threading.RLock()

    @classmethod
    def load(cls, path: str | Path, **cfg) -> "Searcher":
        return cls(Path(path), SearchCfg(**cfg))

    def __len__(self) -> int:
        return len(self.index) - self.index.n_removed

    @property
    def filter_keys(self) -> list[str]:
        return sorted(self.catalogue.attributes)

    @property
    def fusion_rules(self) -> list[str]:
        return list(FUSION_RULES)

    # -- queries -----------------------------------------------------------------------------------------------
    def encode_query(self, text: str | None = None, image=None, weight: float = 0.5) -> np.ndarray:
        """(K, d) member query vectors; with both inputs, ``weight`` is the text's share of the score."""
        if text is None and image is None:
            raise EnclipError("a query needs text, an image, or both")
        if not 0.0 <= weight <= 1.0:
            raise EnclipError(f"weight must be between 0 and 1 (the text's share), got {weight}")
        parts = []
        if text is not None:
            if not str(text).strip():
                raise EnclipError("the query text is empty")
            parts.append((weight if image is not None else 1.0, self.model.encode_texts([str(text)])[:, 0]))
        if image is not None:
            picture = image if isinstance(image, Image.Image) else load_image(image)
            parts.append((1 - weight if text is not None else 1.0, self.model.encode_images([picture])[:, 0]))
        return sum(share * vectors for share, vectors in parts)

    def search(self, text: str | None = None, image=None, k: int = 10, filters: dict | None = None,
               weight: float = 0.5, fusion: str | None = None, clusters: int | None = None) -> SearchResult:
        started = time.perf_counter()
        fusion_rule = self._check_fusion(fusion)
        if k < 1:
            raise EnclipError(f"k must be at least 1, got {k}")
        query = self.encode_query(text, image, weight)
        with self._lock, _faiss_threads(self.cfg.query_threads):
            hits, low = self._rank(query, k, filters, fusion_rule, clusters)
        return SearchResult(hits, low, fusion_rule, round(1000 * (time.perf_counter() - started), 2))

    def search_vectors(self, query: np.ndarray, k: int = 10, filters: dict | None = None,
                       fusion: str | None = None, clusters: int | None = None) -> list[Hit]:
        """Rank for already encoded (K, d) member query vectors."""
        with self._lock, _faiss_threads(self.cfg.query_threads):
            return self._rank(query, k, filters, self._check_fusion(fusion), clusters)[0]

    def search_batch(self, queries: np.ndarray, k: int = 10, filters: dict | None = None,
                     fusion: str | None = None) -> list[list[Hit]]:
        """Rank many encoded queries, (K, B, d), with one index search: the hits ``search_vectors`` gives each query,
        at a fraction of the cost (the index scores the whole batch in one matrix product)."""
        rule = self._check_fusion(fusion)
        if k < 1:
            raise EnclipError(f"k must be at least 1, got {k}")
        with self._lock, _faiss_threads(os.cpu_count() or 1):
            batch = [queries[:, j] for j in range(queries.shape[1])]
            if not batch:
                return []
            return [hits for hits, _ in self._rank_many(batch, k, rule, self._allowed(filters, None, None))]

    def _check_fusion(self, fusion: str | None) -> str:
        rule = fusion or self.default_fusion
        if rule not in FUSION_RULES:
            raise EnclipError(f"unknown fusion rule {rule!r}; choose one of {', '.join(FUSION_RULES)}")
        return rule

    def _member_weights(self, query: np.ndarray, rule: str) -> np.ndarray:
        if rule != "routed" or not len(self.centroids):
            return self.weights
        fused = (query / np.sqrt(self.members)).reshape(1, -1)
        return fusion.routing_weights(fused, self.centroids, self.cfg.route_temperature)[0]

    def _rank(self, query: np.ndarray, k: int, filters, rule: str, clusters: int | None) -> tuple[list[Hit], bool]:
        return self._rank_many([query], k, rule, self._allowed(filters, query, clusters))[0]

    def _rank_many(self, queries: list[np.ndarray], k: int, rule: str,
                   allowed: np.ndarray | None) -> list[tuple[list[Hit], bool]]:
        """One index search for every (K, d) query, member weights on the query side; then each query's candidates
        are re-scored per member."""
        weights = [self._member_weights(query, rule) for query in queries]
        fused = np.stack([(q * w[:, None]).reshape(-1) for q, w in zip(queries, weights)]).astype(np.float32)
        _, candidates = self.index.search(fused, max(self.cfg.candidates, 5 * k), allowed)
        return [self._finish(q, c, k, rule, w) for q, c, w in zip(queries, candidates, weights)]

    def _finish(self, query: np.ndarray, candidates: np.ndarray, k: int, rule: str,
                weights: np.ndarray) -> tuple[list[Hit], bool]:
        """Re-score one query's candidates per member, fuse, and report agreement: the final top-``k``."""
        candidates = candidates[candidates >= 0]
        if not len(candidates):
            return [], False
        stored = self.index.reconstruct(candidates).reshape(len(candidates), self.members, self.dim)
        member_scores = np.einsum("cmd,md->mc", stored, query)[:, None, :]  # (K, 1, C)
        final = self._fuse(member_scores, rule, weights, candidates)
        order = np.argsort(-final, kind="stable")[:k]
        agree = fusion.agreement(member_scores, order[None, :], k)
        low = bool(fusion.low_confidence(agree, self.cfg.spread_threshold, self.cfg.min_votes_share)[0]) \
            if self.members > 1 else False
        hits = [self._hit(candidates[o], final[o], agree, j) for j, o in enumerate(order)]
        return hits, low

    def _fuse(self, member_scores: np.ndarray, rule: str, weights: np.ndarray, candidates: np.ndarray) -> np.ndarray:
        if rule == "rrf":
            rankings = np.argsort(-member_scores, axis=2, kind="stable")
            return fusion.fuse_rrf(rankings, member_scores.shape[2])[0][0]
        if rule == "item-routed" and len(self.centroids):
            item_weights = fusion.item_routing_weights(self.item_clusters[candidates], self.members,
                                                       self.cfg.own_weight)
            return fusion.fuse_item_routed(member_scores, item_weights)[0]
        return fusion.fuse_routed(member_scores, weights[None, :])[0]

    def _hit(self, position: int, score: float, agree: dict, j: int) -> Hit:
        item = self.catalogue.item(int(position))
        return Hit(item["id"], float(score), item["title"], item["attributes"],
                   [float(s) for s in agree["member_scores"][:, 0, j]], float(agree["spread"][0, j]),
                   int(agree["votes"][0, j]))

    # -- filters -----------------------------------------------------------------------------------------------
    def _allowed(self, filters: dict | None, query: np.ndarray, clusters: int | None) -> np.ndarray | None:
        mask = None
        for key, values in (filters or {}).items():
            if key not in self.catalogue.attributes:
                raise EnclipError(f"unknown filter {key!r}; filterable attributes: {', '.join(self.filter_keys)}")
            values = [values] if isinstance(values, str) else list(values)
            if not values:
                raise EnclipError(f"filter {key!r} has no values; give at least one, e.g. {key}=VALUE")
            key_mask = np.logical_or.reduce([self._mask(key, str(v)) for v in values])
            mask = key_mask if mask is None else mask & key_mask
        if clusters:
            mask = self._cluster_mask(query, clusters) if mask is None else mask & self._cluster_mask(query, clusters)
        return mask

    def _mask(self, key: str, value: str) -> np.ndarray:
        if (key, value) not in self._masks:
            self._masks[(key, value)] = np.array([v == value for v in self.catalogue.attributes[key]], dtype=bool)
        return self._masks[(key, value)]

    def _cluster_mask(self, query: np.ndarray, c: int) -> np.ndarray:
        """Cluster-restricted search: only items of the query's ``c`` nearest clusters are scored."""
        if not len(self.centroids):
            raise EnclipError("this index has no clusters (train with --strategy cluster to use --clusters)")
        similarity = self.centroids @ (query / np.sqrt(self.members)).reshape(-1)
        nearest = np.argsort(-similarity)[:c]
        return np.isin(self.item_clusters, nearest)

    # -- items -------------------------------------------------------------------------------------------------
    def item(self, item_id: str) -> dict:
        return self.catalogue.item(self._live_position(item_id))

    def image_bytes(self, item_id: str) -> bytes:
        return self.catalogue.image_bytes(self._live_position(item_id))

    def _live_position(self, item_id: str) -> int:
        return self.catalogue.index_of(str(item_id))  # removed items are renamed, so they are not found

    def attribute_values(self) -> dict[str, list[str]]:
        return self.catalogue.attribute_values()

    def stats(self) -> dict:
        return {"items": len(self), "members": self.members, "member_dim": self.dim,
                "strategy": self.info.strategy, "fusion": self.default_fusion,
                "backbone": self.manifest.get("backbone", {}).get("name"),
                "index": {**self.manifest.get("index", {}), "vectors": len(self.index)},
                "data_fingerprint": self.manifest.get("data_fingerprint")}

    # -- live changes ------------------------------------------------------------------------------------------
    def add_items(self, items: Sequence[dict], images: Sequence[bytes]) -> None:
        """Insert or replace items (by id) in the loaded index; the caller makes the change durable."""
        if len(items) != len(images):
            raise EnclipError("add_items needs one image per item")
        pictures = [load_image(data) for data in images]
        vectors = self.model.encode_images(pictures).transpose(1, 0, 2).reshape(len(items), -1)
        with self._lock:
            self.remove_items([str(it["id"]) for it in items], missing_ok=True)  # an add of a known id replaces it
            self._append(items, images, vectors)

    def _has(self, item_id: str) -> bool:
        try:
            self.catalogue.index_of(item_id)
        except EnclipError:
            return False
        return True

    def _append(self, items: Sequence[dict], images: Sequence[bytes], vectors: np.ndarray) -> None:
        catalogue = self.catalogue
        for item, data in zip(items, images):
            item_id = str(item["id"])
            catalogue.ids.append(item_id)
            catalogue.titles.append(str(item.get("title", "")))
            for name, column in catalogue.attributes.items():
                column.append(str((item.get("attributes") or {}).get(name, "")))
            catalogue.images.append(bytes(data))
        catalogue.refresh()
        self.index.add(vectors)
        fused = vectors / np.sqrt(self.members)
        new_clusters = np.argmax(fused @ self.centroids.T, axis=1) if len(self.centroids) else np.full(len(items), -1)
        self.item_clusters = np.concatenate([self.item_clusters, new_clusters])
        self._masks.clear()

    def remove_items(self, ids: Sequence[str], missing_ok: bool = False) -> None:
        with self._lock:
            positions = []
            for item_id in ids:
                if not self._has(str(item_id)):
                    if missing_ok:
                        continue
                    raise EnclipError(f"item id {item_id!r} is not in the index")
                positions.append(self.catalogue.index_of(str(item_id)))
            if positions:
                self.index.remove(np.asarray(positions))
                for position in positions:
                    self.catalogue.ids[position] = f"\0removed:{position}"
                self.catalogue.refresh()


@contextmanager
def _faiss_threads(n: int):
    """Run faiss with ``n`` OpenMP threads inside the block.

    One query gains little from threads in the index search, and costs a lot after it: faiss's idle OpenMP threads
    keep spinning for a while and take the cores the next query's encoder (torch) needs. On two cores this doubled
    the median text-query latency (24 ms instead of 13 ms for one model over 44k items; docs/RESULTS.md).
    """
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(max(1, int(n)))
    try:
        yield
    finally:
        faiss.omp_set_num_threads(before)


def load_searcher(path: str | Path, **cfg) -> Searcher:
    """Load an index directory built by ``enclip index`` for searching."""
    return Searcher.load(path, **cfg)
