"""The exact numpy index: brute-force inner products, the truth every faster backend is tested against."""

from __future__ import annotations

import numpy as np

from enclip.vectors.base import VectorIndex

QUERY_BLOCK = 256  # queries scored together (bounds the temporary score matrix)
ROW_BLOCK = 32768  # stored rows scored together (also bounds the float16 -> float32 upcast)


def brute_force_topk(
    vectors: np.ndarray, queries: np.ndarray, k: int, candidates: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k inner products of float32 ``queries`` against ``vectors`` (restricted to ``candidates`` rows).

    Returns (scores float32 (q, k'), positions int64 (q, k')) best first, k' = min(k, rows scored); ties go to the
    lower position so results are deterministic. Works block-wise so memory stays bounded for large catalogues
    and memory-mapped or float16 vectors.
    """
    starts = range(0, len(queries), QUERY_BLOCK)
    parts = [_topk_block(vectors, queries[i : i + QUERY_BLOCK], k, candidates) for i in starts]
    if not parts:
        return np.empty((0, 0), np.float32), np.empty((0, 0), np.int64)
    return np.concatenate([s for s, _ in parts]), np.concatenate([p for _, p in parts])


def _topk_block(
    vectors: np.ndarray, queries: np.ndarray, k: int, candidates: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray]:
    n_rows = len(vectors) if candidates is None else len(candidates)
    best_scores = np.empty((len(queries), 0), dtype=np.float32)
    best_positions = np.empty((len(queries), 0), dtype=np.int64)
    for start in range(0, n_rows, ROW_BLOCK):
        stop = min(start + ROW_BLOCK, n_rows)
        if candidates is None:
            rows, block = np.arange(start, stop, dtype=np.int64), vectors[start:stop]
        else:
            rows = candidates[start:stop]
            block = vectors[rows]
        scores = queries @ np.asarray(block, dtype=np.float32).T
        positions = np.broadcast_to(rows, scores.shape)
        best_scores, best_positions = _keep_top(
            np.hstack([best_scores, scores]), np.hstack([best_positions, positions]), k
        )
    return best_scores, best_positions


def _keep_top(scores: np.ndarray, positions: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The k best columns per row, sorted by score descending then position ascending."""
    k = min(k, scores.shape[1])
    if k < scores.shape[1]:
        keep = np.argpartition(-scores, k - 1, axis=1)[:, :k]
        scores = np.take_along_axis(scores, keep, axis=1)
        positions = np.take_along_axis(positions, keep, axis=1)
    order = np.lexsort((positions, -scores), axis=1)
    return np.take_along_axis(scores, order, axis=1), np.take_along_axis(positions, order, axis=1)


class ExactIndex(VectorIndex):
    """Brute-force numpy search: exact, dependency-free, and fast enough for catalogues of tens of thousands."""

    kind = "exact"

    def _search(
        self, queries: np.ndarray, k: int, candidates: np.ndarray | None
    ) -> tuple[np.ndarray, np.ndarray]:
        return brute_force_topk(self._vectors, queries, k, candidates)
