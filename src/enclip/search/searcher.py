"""Rank an opened index for text, photo or combined queries, with filters and a choice of fusion rule.

One query costs one trunk pass per modality, K member heads, and one inner-product search over the stored
concatenated member vectors: with the member weights on the query side, ``<[w1 q1, .., wK qK], [x1, .., xK]>`` is
exactly the weighted mean of member cosines, for fixed (``mean``) and query-dependent (``routed``) weights alike.
The top candidates are then re-scored member by member, which gives each hit its member agreement and lets
``rrf`` and ``item-routed`` re-rank them. Re-scoring also takes each candidate's hubness penalty off its member
cosines, in proportion to the query's text share (:mod:`enclip.store.hubness`; ``SearchCfg.hubness``), and then
adds pseudo-relevance feedback to text queries (``SearchCfg.feedback``): each member's scores gain ``feedback`` times
the candidates' cosines to the mean photo vector of that member's ``feedback_depth`` best candidates. The photos a
text query ranks first say what else it should find (Rocchio, 1971; "average query expansion" in image retrieval,
Chum et al., 2007), and photo-to-photo cosines are more telling than text-to-photo ones. A query with a photo is in
photo space already and loses from it (docs/RESULTS.md), so it gets none.

Before all of that, a text query's photo-channel vector crosses the index's title bridge (``SearchCfg.bridge``;
:mod:`enclip.store.bridge`): it moves towards the photos of the training items whose titles are nearest to it.
The item-text channel keeps the query as the text tower gave it.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import faiss
import numpy as np

from enclip import fusion
from enclip.data.images import load_image
from enclip.data.item_text import item_text
from enclip.embed.space import concat_members, to_joint
from enclip.errors import EnclipError
from enclip.models.ensemble import load_model
from enclip.search.channels import (
    Candidates,
    HybridCfg,
    best_first,
    check_channels,
    check_weights,
    explain,
    matched,
)
from enclip.search.filters import FilterIndex
from enclip.search.query import QueryEncoder, check_query, mix, text_shares
from enclip.search_request import CHANNEL_FUSIONS, MAX_K
from enclip.store import IndexDir
from enclip.store.live import LiveIndex

log = logging.getLogger(__name__)


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
    encoder_threads: int | None = 1  # torch threads encoding one query (None: the process's; see QueryEncoder)
    channels: tuple[str, ...] | None = None  # channels a text query uses by default (None = every one the index has)
    hubness: float = 0.5  # weight of the items' hubness penalty for text queries (0: plain cosines); validation-fit
    feedback: float = 0.25  # weight of pseudo-relevance feedback in text queries (0: none); validation-fit
    feedback_depth: int = 10  # best candidates per member whose mean photo vector is the feedback
    bridge: float = 0.2  # weight of the title bridge's borrowed photos in text queries (0: none); validation-fit
    bridge_depth: int = 10  # nearest training titles a text query borrows photos from
    bridge_temperature: float = 0.01  # softmax temperature over their title cosines (small: the nearest dominate)
    bridge_labels: float = 10.0  # weight of a label support's photo (an attribute value's direction); validation-fit
    bridge_label_exactness: float = 16.0  # power of a query's cosine to a value's text in its pull (see store.bridge)
    hybrid: HybridCfg = field(default_factory=HybridCfg)  # how channels are fused

    def __post_init__(self) -> None:
        if not self.hubness >= 0:  # also refuses NaN
            raise EnclipError(f"hubness is the weight of the items' hubness penalty: 0 or more, got {self.hubness}")
        if not self.feedback >= 0:
            raise EnclipError(f"feedback is the weight of pseudo-relevance feedback: 0 or more, got {self.feedback}")
        if isinstance(self.feedback_depth, bool) or not isinstance(self.feedback_depth, int) or self.feedback_depth < 1:
            raise EnclipError(f"feedback_depth is a number of candidates: a whole number of at least 1, "
                              f"got {self.feedback_depth!r}")
        if not self.bridge >= 0:
            raise EnclipError(f"bridge is the weight of the photos a text query borrows from its nearest training "
                              f"titles: 0 or more, got {self.bridge}")
        if isinstance(self.bridge_depth, bool) or not isinstance(self.bridge_depth, int) or self.bridge_depth < 1:
            raise EnclipError(f"bridge_depth is a number of training titles: a whole number of at least 1, "
                              f"got {self.bridge_depth!r}")
        if not self.bridge_temperature > 0:
            raise EnclipError(f"bridge_temperature is a softmax temperature: above 0, got {self.bridge_temperature}")
        if not self.bridge_labels >= 0:
            raise EnclipError(f"bridge_labels is the weight of the direction a text query borrows from an attribute "
                              f"value it names: 0 or more, got {self.bridge_labels}")
        if not self.bridge_label_exactness >= 0:
            raise EnclipError(f"bridge_label_exactness is the power of a query's cosine to an attribute value's text "
                              f"in that value's pull: 0 or more, got {self.bridge_label_exactness}")

    def rescoring(self) -> dict:
        """The settings that move or re-score a text query (what an evaluation's figures depend on)."""
        return {"hubness": self.hubness, "feedback": self.feedback, "feedback_depth": self.feedback_depth,
                "bridge": self.bridge, "bridge_depth": self.bridge_depth,
                "bridge_temperature": self.bridge_temperature, "bridge_labels": self.bridge_labels,
                "bridge_label_exactness": self.bridge_label_exactness}


@dataclass
class Hit:
    id: str
    score: float
    title: str
    attributes: dict[str, str]
    member_scores: list[float]  # each member's cosine, re-scored for text: less the hubness penalty, plus feedback
    spread: float  # standard deviation of member scores (0 for a single model)
    votes: int  # members ranking this hit in their own top-k
    channels: dict[str, int] = field(default_factory=dict)  # channel -> the hit's rank in that channel's own list

    @property
    def explanation(self) -> str:
        """Which channels found the hit and where: 'photo #3, title #1, keyword #2'."""
        return explain(self.channels)

    def to_dict(self) -> dict:
        return {**asdict(self), "explanation": self.explanation}


@dataclass
class SearchResult:
    hits: list[Hit]
    low_confidence: bool  # the members disagree: treat the ranking with care
    fusion: str
    took_ms: float
    channels: list[str] = field(default_factory=lambda: ["image"])  # the channels this search used

    def to_dict(self) -> dict:
        return {"hits": [hit.to_dict() for hit in self.hits], "low_confidence": self.low_confidence,
                "fusion": self.fusion, "took_ms": self.took_ms, "channels": self.channels}


class Searcher:
    """An opened index: model, items, vectors and routing. Thread-safe; live changes are serialised."""

    def __init__(self, index_dir: IndexDir, cfg: SearchCfg | None = None):
        self.cfg = cfg or SearchCfg()
        self.path, self.manifest = index_dir.path, index_dir.manifest
        self.changelog_path = index_dir.changelog_path
        self.model, self.info = load_model(index_dir.model_dir, device=self.cfg.device)
        self.encoder = QueryEncoder(self.model, self.cfg.encoder_threads)
        self.members = len(self.model)
        self.live = LiveIndex(index_dir, self.members)
        self.catalogue, self.centroids = self.live.catalogue, self.live.centroids
        self.index, self.text_index, self.keywords = self.live.vectors, self.live.text_vectors, self.live.keywords
        self.filters = FilterIndex(self.catalogue)
        self.channels = tuple(c for c, part in (("image", self.index), ("text", self.text_index),
                                                ("keyword", self.keywords)) if part is not None)
        self.default_channels = check_channels(self.cfg.channels or self.channels, self.channels)
        self.dim = self.index.dim // self.members
        self.weights = np.full(self.members, 1.0 / self.members, dtype=np.float32)  # mean fusion: equal members
        self.default_fusion = fusion.check_rule(self.cfg.fusion or self.info.fusion or "mean")
        self._lock = threading.RLock()

    @classmethod
    def load(cls, path: str | Path, **cfg) -> Searcher:
        return cls(IndexDir.open(path), SearchCfg(**cfg))

    def __len__(self) -> int:
        return self.catalogue.live_count

    @property
    def item_clusters(self) -> np.ndarray:
        """Each row's cluster (-1: none); grows with live additions."""
        return self.live.item_clusters

    @property
    def filter_keys(self) -> list[str]:
        return self.filters.keys

    @property
    def fusion_rules(self) -> list[str]:
        return list(fusion.FUSION_RULES)

    # -- queries -----------------------------------------------------------------------------------------------
    def encode_query(self, text: str | None = None, image=None, weight: float = 0.5) -> np.ndarray:
        """(K, d) member query vectors; with both inputs, ``weight`` is the text's share of the score."""
        return self.encoder.encode_one(text, image, weight)

    def search(self, text: str | None = None, image=None, k: int = 10, filters: dict | None = None,
               weight: float = 0.5, fusion: str | None = None, clusters: int | None = None,
               channels=None, fusion_weights: dict | None = None, channel_fusion: str | None = None) -> SearchResult:
        """Search by text, a photo or both. A text query is matched against photos, item text and keywords (the
        index's channels, or ``channels``), fused by ``channel_fusion`` with ``fusion_weights``; a photo is
        matched against photos. ``fusion`` is the rule that combines ensemble members within the photo channel."""
        started = time.perf_counter()
        rule = self._check(k, fusion, clusters)
        check_query(text, image, weight)
        channels = self._channels(channels, text)
        text_query, image_query = self.encoder.encode_parts(text, image)
        query = mix(text_query, image_query, weight)
        share = float(text_shares([text], [image], [weight])[0])
        with self._lock, _faiss_threads(self.cfg.query_threads):
            where = self._where(filters, query, clusters)
            if channels == ("image",):
                hits, low = self._rank_many([query], k, rule, where, [share])[0]
            else:
                hybrid = self._hybrid_cfg(fusion_weights, channel_fusion)
                hits, low = self._rank_channels(query, text, text_query, k, rule, where, channels, hybrid,
                                                photo=image is not None, share=share)
        return SearchResult(hits, low, rule, round(1000 * (time.perf_counter() - started), 2), list(channels))

    def _channels(self, channels, text: str | None) -> tuple[str, ...]:
        if channels is None:
            return self.default_channels if text is not None else ("image",)
        chosen = check_channels(channels, self.channels)
        if text is None and chosen != ("image",):
            raise EnclipError("the text and keyword channels match query text; a photo-only query uses the image "
                              "channel (leave --channels out, or give --text as well)")
        return chosen

    def _hybrid_cfg(self, weights: dict | None, channel_fusion: str | None) -> HybridCfg:
        fusion_rule = channel_fusion or self.cfg.hybrid.fusion
        if fusion_rule not in CHANNEL_FUSIONS:
            raise EnclipError(f"unknown channel fusion {fusion_rule!r}; choose one of {', '.join(CHANNEL_FUSIONS)}")
        return replace(self.cfg.hybrid, weights=check_weights(weights, self.cfg.hybrid.weights), fusion=fusion_rule)

    def search_vectors(self, query: np.ndarray, k: int = 10, filters: dict | None = None,
                       fusion: str | None = None, clusters: int | None = None, text_share: float = 0.0) -> list[Hit]:
        """Rank for already encoded (K, d) member query vectors; ``text_share`` is the text's share of the query (1
        for text, 0 for a photo, the weight for both; see :func:`enclip.search.query.text_shares`), which scales the
        hubness penalty; a text query (1) also crosses the title bridge and gets feedback. Vectors do not say what
        they were encoded from, so it must be given for text queries."""
        rule = self._check(k, fusion, clusters)
        with self._lock, _faiss_threads(self.cfg.query_threads):
            return self._rank_many([query], k, rule, self._where(filters, query, clusters), [text_share])[0][0]

    def search_batch(self, queries: np.ndarray, k: int = 10, filters: dict | None = None,
                     fusion: str | None = None, shares: Sequence[float] | None = None) -> list[list[Hit]]:
        """Rank many encoded queries, (K, B, d), with one index search: the hits ``search_vectors`` gives each query,
        at a fraction of the cost (the index scores the whole batch in one matrix product). ``shares``: each
        query's text share, as in ``search_vectors`` (None: all 0, photo queries)."""
        rule = self._check(k, fusion, None)
        batch = [queries[:, j] for j in range(queries.shape[1])]
        if not batch:
            return []
        shares = [0.0] * len(batch) if shares is None else [float(s) for s in shares]
        if len(shares) != len(batch):
            raise EnclipError(f"search_batch needs one text share per query ({len(batch)} queries, "
                              f"{len(shares)} shares)")
        with self._lock, _faiss_threads(os.cpu_count() or 1):
            return [hits for hits, _ in self._rank_many(batch, k, rule, self._where(filters, None, None), shares)]

    def _check(self, k, rule: str | None, clusters: int | None) -> str:
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= MAX_K:
            raise EnclipError(f"k must be a whole number from 1 to {MAX_K}, got {k!r}")
        if clusters is not None and (isinstance(clusters, bool) or not isinstance(clusters, (int, np.integer))
                                     or clusters < 1):
            raise EnclipError(f"clusters must be a whole number of at least 1 (the nearest clusters searched), "
                              f"got {clusters!r}")
        return fusion.check_rule(rule or self.default_fusion)

    def _where(self, filters: dict | None, query: np.ndarray | None, clusters: int | None):
        nearest = None if clusters is None else self._nearest_clusters(query, clusters)
        return self.filters.where(filters, nearest, self.item_clusters)

    def _nearest_clusters(self, query: np.ndarray, count: int) -> tuple[int, ...]:
        """Cluster-restricted search: the query's ``count`` nearest clusters (all of them when there are fewer)."""
        if not len(self.centroids):
            raise EnclipError("this index has no clusters (train with --strategy cluster to use --clusters)")
        similarity = self.centroids @ to_joint(query.reshape(-1), self.members)
        return tuple(int(c) for c in np.argsort(-similarity)[:count])

    def _member_weights(self, query: np.ndarray, rule: str) -> np.ndarray:
        if rule != "routed" or not len(self.centroids):
            return self.weights
        joint = to_joint(query.reshape(1, -1), self.members)
        return fusion.routing_weights(joint, self.centroids, self.cfg.route_temperature)[0]

    def _rank_many(self, queries: list[np.ndarray], k: int, rule: str, where,
                   shares: Sequence[float]) -> list[tuple[list[Hit], bool]]:
        """One index search for every (K, d) query, member weights on the query side; then each query's candidates
        are re-scored per member. Text queries cross the title bridge first."""
        queries = self._bridged(queries, shares)
        weights = [self._member_weights(query, rule) for query in queries]
        weighted = np.stack([(q * w[:, None]).reshape(-1) for q, w in zip(queries, weights)]).astype(np.float32)
        _, candidates = self.index.search(weighted, max(self.cfg.candidates, 5 * k), where)
        return [self._finish(q, c, k, rule, w, s) for q, c, w, s in zip(queries, candidates, weights, shares)]

    def _bridged(self, queries: list[np.ndarray], shares: Sequence[float]) -> list[np.ndarray]:
        """The (K, d) queries, each text query (share 1) moved across the title bridge, in one batch."""
        bridge = self.live.bridge
        texts = [j for j, share in enumerate(shares) if share >= 1.0]
        if bridge is None or not self.cfg.bridge or not texts:
            return list(queries)
        moved = bridge.expand(np.stack([queries[j] for j in texts], axis=1), self.cfg.bridge,
                              self.cfg.bridge_depth, self.cfg.bridge_temperature, self.cfg.bridge_labels,
                              self.cfg.bridge_label_exactness)
        out = list(queries)
        for column, j in enumerate(texts):
            out[j] = moved[:, column]
        return out

    def _member_scores(self, query: np.ndarray, candidates: np.ndarray, share: float) -> np.ndarray:
        """(K, 1, C) member cosines of the candidates, less their hubness penalty at the query's text share, plus
        pseudo-relevance feedback for a text query (share 1)."""
        stored = self.index.reconstruct(candidates).reshape(len(candidates), self.members, self.dim)
        scores = np.einsum("cmd,md->mc", stored, query)
        if self._penalised(share):
            scores = scores - np.float32(self.cfg.hubness * share) * self.live.hubness.penalty[candidates].T
        if self._fed_back(share) and len(candidates):
            scores = scores + np.float32(self.cfg.feedback) * _feedback(stored, scores, self.cfg.feedback_depth)
        return scores[:, None, :]

    def _penalised(self, share: float) -> bool:
        """Whether a query of this text share loses the items' hubness penalty (the index has one, weight > 0)."""
        return bool(share) and bool(self.cfg.hubness) and self.live.hubness is not None

    def _fed_back(self, share: float) -> bool:
        """Whether a query of this text share gets pseudo-relevance feedback (text alone, weight > 0)."""
        return share >= 1.0 and bool(self.cfg.feedback)

    def _finish(self, query: np.ndarray, candidates: np.ndarray, k: int, rule: str,
                weights: np.ndarray, share: float) -> tuple[list[Hit], bool]:
        """Re-score one query's candidates per member, fuse, and report agreement: the final top-``k``."""
        candidates = candidates[candidates >= 0]
        if not len(candidates):
            return [], False
        member_scores = self._member_scores(query, candidates, share)
        final = self._fuse(member_scores, rule, weights, candidates)
        order = np.argsort(-final, kind="stable")[:k]
        agree = fusion.agreement(member_scores, order[None, :], k)
        low = self.members > 1 and bool(
            fusion.low_confidence(agree, self.cfg.spread_threshold, self.cfg.min_votes_share)[0])
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

    def _hit(self, position: int, score: float, agree: dict, j: int, channels: dict | None = None) -> Hit:
        item = self.catalogue.item(int(position))
        return Hit(item["id"], float(score), item["title"], item["attributes"],
                   [float(s) for s in agree["member_scores"][:, 0, j]], float(agree["spread"][0, j]),
                   int(agree["votes"][0, j]), channels or {"image": j + 1})

    def channel_candidates(self, text: str, image=None, weight: float = 0.5, filters: dict | None = None,
                           channels=None, depth: int | None = None, fusion: str | None = None) -> Candidates:
        """The union of every channel's top ``depth`` candidates for one query, re-scored on every channel: what
        hybrid fusion ranks (public so that benchmarks can fit channel weights without re-searching)."""
        rule = self._check(10, fusion, None)
        check_query(text, image, weight)
        text_query, image_query = self.encoder.encode_parts(text, image)
        query = mix(text_query, image_query, weight)
        photo = image is not None
        share = float(text_shares([text], [image], [weight])[0])
        with self._lock, _faiss_threads(self.cfg.query_threads):
            return self._candidates(query, text, text_query, rule, self._where(filters, query, None),
                                    self._channels(channels, text), depth or self.cfg.hybrid.candidates(photo), photo,
                                    share)

    def _candidates(self, query: np.ndarray, text: str, text_query: np.ndarray, rule: str, where,
                    channels: tuple[str, ...], depth: int, photo: bool = False, share: float = 1.0) -> Candidates:
        """Each channel's top candidates under the same filters; their union re-scored on every channel. With a
        ``photo`` in the query, only the photo channel retrieves, and the others list its candidates in their order
        (HybridCfg.photo_depth). A text query's photo side crosses the title bridge; its text side does not."""
        query = self._bridged([query], [share])[0]
        weights = self._member_weights(query, rule)
        found: dict[str, np.ndarray] = {}
        if "image" in channels:
            joint = (query * weights[:, None]).reshape(1, -1)
            if self._penalised(share) or self._fed_back(share):  # re-scoring ranks a deeper pool, as ranking does
                pool = _valid(self.index.search(joint, max(depth, self.cfg.candidates), where)[1][0])
                pool_scores = self._fuse(self._member_scores(query, pool, share), rule, weights, pool)
                found["image"] = pool[np.argsort(-pool_scores, kind="stable")[:depth]]
            else:
                found["image"] = _valid(self.index.search(joint, depth, where)[1][0])
        retrieving = () if photo and "image" in channels else channels
        if "text" in retrieving:
            flat = (text_query / self.members).reshape(1, -1)  # equal member weights: the mean member cosine
            found["text"] = _valid(self.text_index.search(flat, depth, where)[1][0])
        if "keyword" in retrieving:
            found["keyword"] = self.keywords.search(text, depth, where)[0]
        union = np.unique(np.concatenate(list(found.values())))
        scores: dict[str, np.ndarray] = {}
        member_scores = self._member_scores(query, union, share)  # (K, 1, U)
        if "image" in channels:
            scores["image"] = self._fuse(member_scores, rule, weights, union)
        if "text" in channels:
            item_texts = self.text_index.reconstruct(union).reshape(len(union), self.members, self.dim)
            scores["text"] = np.einsum("cmd,md->c", item_texts, text_query) / self.members
        if "keyword" in channels:
            scores["keyword"] = self.keywords.score(text, union)
        for channel in set(channels) - set(retrieving):  # re-ranking channels list the photo's candidates
            hits = matched(channel, scores[channel])
            found[channel] = union[best_first(scores[channel], hits)[: int(hits.sum())]]
        return Candidates(union, found, scores, member_scores)

    def _rank_channels(self, query: np.ndarray, text: str, text_query: np.ndarray, k: int, rule: str, where,
                       channels: tuple[str, ...], hybrid: HybridCfg, photo: bool = False,
                       share: float = 1.0) -> tuple[list[Hit], bool]:
        candidates = self._candidates(query, text, text_query, rule, where, channels, hybrid.candidates(photo, k),
                                      photo, share)
        if not len(candidates.union):
            return [], False
        fused = candidates.fused(hybrid)
        order = np.argsort(-fused, kind="stable")[:k]
        agree = fusion.agreement(candidates.member_scores, order[None, :], k)
        low = self.members > 1 and bool(
            fusion.low_confidence(agree, self.cfg.spread_threshold, self.cfg.min_votes_share)[0])
        hits = [self._hit(candidates.union[o], fused[o], agree, j, candidates.listed_ranks(int(o)))
                for j, o in enumerate(order)]
        return hits, low

    # -- items -------------------------------------------------------------------------------------------------
    def item(self, item_id: str) -> dict:
        with self._lock:
            return self.catalogue.item(self.catalogue.index_of(item_id))

    def image_bytes(self, item_id: str) -> bytes:
        with self._lock:
            return self.catalogue.image_bytes(self.catalogue.index_of(item_id))

    def attribute_values(self) -> dict[str, list[str]]:
        with self._lock:
            return self.catalogue.attribute_values()

    def stats(self) -> dict:
        return {"items": len(self), "members": self.members, "member_dim": self.dim,
                "strategy": self.info.strategy, "fusion": self.default_fusion,
                "backbone": self.manifest.get("backbone", {}).get("name"),
                "index": {**self.manifest.get("index", {}), "vectors": len(self.index)},
                "data_fingerprint": self.manifest.get("data_fingerprint"),
                "hubness": None if self.live.hubness is None else {"k": self.live.hubness.k,
                                                                   "weight": self.cfg.hubness},
                "feedback": {"weight": self.cfg.feedback, "depth": self.cfg.feedback_depth},
                "bridge": None if self.live.bridge is None else {
                    "supports": len(self.live.bridge), "labels": self.live.bridge.labels, "weight": self.cfg.bridge,
                    "depth": self.cfg.bridge_depth, "temperature": self.cfg.bridge_temperature,
                    "label_weight": self.cfg.bridge_labels, "label_exactness": self.cfg.bridge_label_exactness}}

    # -- live changes ------------------------------------------------------------------------------------------
    def add_items(self, items: Sequence[dict], images: Sequence[bytes]) -> None:
        """Insert or replace items (by id); the caller makes the change durable (see enclip.serve.changelog)."""
        if len(items) != len(images):
            raise EnclipError("add_items needs one image per item")
        vectors = concat_members(self.model.encode_images([load_image(data) for data in images]))
        text_vectors = None
        if self.text_index is not None:
            texts = [item_text(str(it.get("title", "")), dict(it.get("attributes") or {})) for it in items]
            text_vectors = concat_members(self.model.encode_texts(texts))
        with self._lock:
            self.live.add(items, images, vectors, text_vectors)
            self.filters.invalidate()

    def remove_items(self, ids: Sequence[str]) -> None:
        """Remove live items by id (an unknown id is an error and nothing is removed)."""
        with self._lock:
            self.live.remove(ids)
            self.filters.invalidate()


def _feedback(stored: np.ndarray, scores: np.ndarray, depth: int) -> np.ndarray:
    """(K, C) cosines of the candidates (``stored``, (C, K, d)) to the mean vector of each member's ``depth`` best
    candidates by ``scores`` ((K, C))."""
    depth = min(depth, scores.shape[1])
    best = np.argpartition(-scores, depth - 1, axis=1)[:, :depth]  # (K, depth)
    centroids = np.stack([stored[best[m], m].mean(axis=0) for m in range(len(best))])  # (K, d)
    return np.einsum("cmd,md->mc", stored, centroids)


def _valid(positions: np.ndarray) -> np.ndarray:
    return positions[positions >= 0]


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


load_searcher = Searcher.load  # open an index directory built by ``enclip index`` for searching
