"""Pure rules that fuse the scores of ensemble members into one ranking.

Dense convention: ``scores`` has shape (m, q, n): m members, q queries, n candidate items (the caller scores
a candidate set), each entry a cosine similarity. Every function returns new arrays and never mutates its
inputs. Cluster i's specialist is member i, so cluster ids and member indices share one numbering.
"""

from __future__ import annotations

import numpy as np

from enclip.embed.space import l2_normalise
from enclip.errors import EnclipError

FUSION_RULES = ("mean", "routed", "item-routed", "rrf")  # the rules a search may ask for, in one place


def check_rule(rule: str) -> str:
    """``rule`` if it names a fusion rule, else an error listing them."""
    if rule not in FUSION_RULES:
        raise EnclipError(f"unknown fusion rule {rule!r}; choose one of {', '.join(FUSION_RULES)}")
    return rule


def _check_scores(scores: np.ndarray) -> np.ndarray:
    scores = np.asarray(scores)
    if scores.ndim != 3 or not np.issubdtype(scores.dtype, np.floating):
        raise EnclipError(f"member scores must be a float (members, queries, items) array, got {scores.dtype} "
                          f"of shape {scores.shape}")
    return scores


def _unit_rows(vectors: np.ndarray) -> np.ndarray:
    x = np.asarray(vectors, dtype=np.float64)
    if x.ndim != 2:
        raise EnclipError(f"expected a 2-D (rows, dim) vector array, got shape {x.shape}")
    return l2_normalise(x)


def routing_weights(query_vectors: np.ndarray, centroids: np.ndarray, temperature: float = 0.05) -> np.ndarray:
    """(q, m) softmax of query-to-centroid cosine / temperature: how much each specialist should speak.

    Small temperatures approach hard routing to the nearest centroid; large ones approach equal weights.
    """
    if not temperature > 0:
        raise EnclipError(f"routing temperature must be positive, got {temperature}")
    queries, centres = _unit_rows(query_vectors), _unit_rows(centroids)
    if queries.shape[1] != centres.shape[1]:
        raise EnclipError(f"query vectors have dimension {queries.shape[1]} but centroids {centres.shape[1]}; "
                          "route with embeddings from the model the clusters were fitted on")
    logits = queries @ centres.T / temperature
    logits -= logits.max(axis=1, keepdims=True)
    weights = np.exp(logits)
    return weights / weights.sum(axis=1, keepdims=True)


def fuse_routed(scores: np.ndarray, query_weights: np.ndarray) -> np.ndarray:
    """(q, n) per-query weighted sum: result[q, n] = sum_i query_weights[q, i] * scores[i, q, n]."""
    scores = _check_scores(scores)
    m, q, _ = scores.shape
    w = np.asarray(query_weights, dtype=np.float64)
    if w.shape != (q, m):
        raise EnclipError(f"query weights must have shape (queries, members) = {(q, m)}, got {w.shape}")
    return np.einsum("qm,mqn->qn", w, scores)


def item_routing_weights(item_clusters: np.ndarray, m: int, own_weight: float = 0.6) -> np.ndarray:
    """(n, m) weights per item: its own cluster's specialist gets own_weight, the others share the rest.

    Items with cluster -1 (unknown) get equal weights. With a single member it gets all the weight.
    """
    clusters = np.asarray(item_clusters, dtype=np.int64)
    if m < 1 or not 0.0 <= own_weight <= 1.0:
        raise EnclipError(f"need m >= 1 members and own_weight in [0, 1], got m={m}, own_weight={own_weight}")
    if clusters.ndim != 1 or ((clusters < -1) | (clusters >= m)).any():
        raise EnclipError(f"item clusters must be a 1-D array of ids in [0, {m}) or -1 for unknown")
    if m == 1:
        return np.ones((len(clusters), 1))
    weights = np.full((len(clusters), m), (1.0 - own_weight) / (m - 1))
    known = np.flatnonzero(clusters >= 0)
    weights[known, clusters[known]] = own_weight
    weights[clusters < 0] = 1.0 / m
    return weights


def fuse_item_routed(scores: np.ndarray, item_weights: np.ndarray) -> np.ndarray:
    """(q, n) per-item weighted sum: result[q, n] = sum_i item_weights[n, i] * scores[i, q, n]."""
    scores = _check_scores(scores)
    m, _, n = scores.shape
    w = np.asarray(item_weights, dtype=np.float64)
    if w.shape != (n, m):
        raise EnclipError(f"item weights must have shape (items, members) = {(n, m)}, got {w.shape}")
    return np.einsum("nm,mqn->qn", w, scores)


def fuse_rrf(rankings: np.ndarray, n_items: int, k: int = 60) -> tuple[np.ndarray, np.ndarray]:
    """Reciprocal rank fusion: score[q, x] = sum over members of 1 / (k + rank), ranks starting at 1.

    ``rankings`` is (m, q, depth) item positions, best first, -1 for padding. An item a member lists twice
    counts once at its best rank. Returns the (q, n_items) float64 scores and the (q, n_items) order by
    descending score, ties (including all unranked items) by ascending position.
    """
    ranks = np.asarray(rankings)
    if ranks.ndim != 3 or not np.issubdtype(ranks.dtype, np.integer):
        raise EnclipError(f"rankings must be an integer (members, queries, depth) array, got shape {ranks.shape}")
    if ((ranks < -1) | (ranks >= n_items)).any() or k < 0:
        raise EnclipError(f"ranked positions must lie in [0, {n_items}) or be -1 padding, and k >= 0 (got k={k})")
    m, q, depth = ranks.shape
    contribution = np.broadcast_to(1.0 / (k + np.arange(1, depth + 1)), (q, depth))
    rows = np.broadcast_to(np.arange(q)[:, None], (q, depth))
    fused = np.zeros((q, n_items))
    for member in ranks:
        best = np.zeros((q, n_items))
        valid = member >= 0
        np.maximum.at(best, (rows[valid], member[valid]), contribution[valid])
        fused += best
    return fused, np.argsort(-fused, axis=1, kind="stable")


def _member_top_mask(scores: np.ndarray, k: int) -> np.ndarray:
    """(m, q, n) bool: item is inside that member's own top-k for that query (ties by ascending position)."""
    order = np.argsort(-scores, axis=2, kind="stable")[:, :, :k]
    mask = np.zeros(scores.shape, dtype=bool)
    np.put_along_axis(mask, order, True, axis=2)
    return mask


def agreement(scores: np.ndarray, top_positions: np.ndarray, k: int) -> dict[str, np.ndarray]:
    """How much the members agree on each final hit, to flag answers the ensemble is unsure of.

    ``top_positions`` (q, h) are the fused hits (positions, -1 for padding). Returns "member_scores" (m, q, h)
    each member's score at each hit, "spread" (q, h) their standard deviation, and "votes" (q, h) how many
    members have the hit inside their own top-k. Padding gets NaN member scores and spread, and 0 votes.
    """
    scores = _check_scores(scores)
    hits = np.asarray(top_positions, dtype=np.int64)
    m, q, n = scores.shape
    if hits.ndim != 2 or hits.shape[0] != q or ((hits < -1) | (hits >= n)).any() or k < 1:
        raise EnclipError(f"top positions must be a (queries={q}, hits) array of item positions in [0, {n}) "
                          f"or -1, and k >= 1 (got shape {hits.shape}, k={k})")
    padding = hits < 0
    safe = np.where(padding, 0, hits)
    member_scores = np.take_along_axis(scores, np.broadcast_to(safe, (m, *safe.shape)), axis=2).astype(np.float64)
    member_scores[:, padding] = np.nan
    in_top = np.take_along_axis(_member_top_mask(scores, k), np.broadcast_to(safe, (m, *safe.shape)), axis=2)
    votes = np.where(padding, 0, in_top.sum(axis=0)).astype(np.int64)
    return {"member_scores": member_scores, "spread": member_scores.std(axis=0), "votes": votes}


def low_confidence(agreement: dict, spread_threshold: float = 0.08, min_votes_share: float = 0.5) -> np.ndarray:
    """(q,) bool: flag a query when its top hit gets fewer than min_votes_share * m votes, or when the
    members' scores over its hits spread more than spread_threshold on average (padding ignored)."""
    m = agreement["member_scores"].shape[0]
    spread = agreement["spread"]
    few_votes = agreement["votes"][:, 0] < min_votes_share * m
    valid = np.isfinite(spread)
    mean_spread = np.where(valid, spread, 0.0).sum(axis=1) / np.maximum(valid.sum(axis=1), 1)
    return few_votes | (mean_spread > spread_threshold)
