"""Retrieval metrics as pure functions over rankings, one value per query.

Input convention, shared by every metric:

- ``ranked``: per query, the retrieved ids best first (it may be shorter than ``k``; missing places score nothing);
- ``relevant``: per query, the collection of relevant ids (never empty: a query without a relevant item has no
  defined recall, so it is an error rather than a silent zero).

Each function returns a float64 array with one value per query, so :mod:`enclip.eval.bootstrap` can resample
queries; the metric itself is the array's mean.

Conventions:

- ranks are positions in the list as given (1-based); an id repeated in a ranking earns credit only at its first
  occurrence, so a buggy retriever that returns the same item twice cannot score twice;
- ``recall_at_k`` is true recall (the fraction of the relevant items found in the top k), which is what
  ``title2img_dup`` and ``attr2img`` need; when exactly one item is relevant it equals ``hit_at_k``;
- ``ndcg_at_k`` uses binary gains, a ``1 / log2(rank + 1)`` discount and an ideal ranking of
  ``min(|relevant|, k)`` relevant items.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Collection, Iterator, Sequence

import numpy as np

from enclip.errors import EnclipError

Ranked = Sequence[Sequence[str]]
Relevant = Sequence[Collection[str]]


def _check_inputs(ranked: Ranked, relevant: Relevant, k: int) -> None:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise EnclipError(f"metric cut-off k must be a positive integer, got {k!r}")
    if len(ranked) != len(relevant):
        raise EnclipError(
            f"got {len(ranked)} rankings but {len(relevant)} relevant sets; pass exactly one of each per query"
        )


def _hit_ranks(ranked: Ranked, relevant: Relevant, k: int) -> Iterator[tuple[list[int], int]]:
    """Yield, per query, the 1-based ranks within the top k that hold a new relevant id, and |relevant|."""
    _check_inputs(ranked, relevant, k)
    for query, (ids, rel) in enumerate(zip(ranked, relevant)):
        if len(rel) == 0:
            raise EnclipError(f"query {query} has no relevant items; drop it before computing metrics")
        rel_set = rel if isinstance(rel, (set, frozenset)) else set(rel)
        seen: set[str] = set()
        ranks = []
        for rank, item in enumerate(list(ids)[:k], start=1):
            if item in rel_set and item not in seen:
                ranks.append(rank)
            seen.add(item)
        yield ranks, len(rel_set)


def recall_at_k(ranked: Ranked, relevant: Relevant, k: int) -> np.ndarray:
    """Fraction of each query's relevant items found in its top k (equals hit@k when one item is relevant)."""
    return np.array([len(ranks) / n_rel for ranks, n_rel in _hit_ranks(ranked, relevant, k)], dtype=np.float64)


def hit_at_k(ranked: Ranked, relevant: Relevant, k: int) -> np.ndarray:
    """1 when any relevant item is in the top k, else 0."""
    return np.array([float(bool(ranks)) for ranks, _ in _hit_ranks(ranked, relevant, k)], dtype=np.float64)


def precision_at_k(ranked: Ranked, relevant: Relevant, k: int) -> np.ndarray:
    """Distinct relevant items in the top k divided by k (a short ranking is not forgiven its empty places)."""
    return np.array([len(ranks) / k for ranks, _ in _hit_ranks(ranked, relevant, k)], dtype=np.float64)


def mrr_at_k(ranked: Ranked, relevant: Relevant, k: int) -> np.ndarray:
    """Reciprocal rank of the first relevant item within the top k, 0 when there is none."""
    return np.array([1.0 / ranks[0] if ranks else 0.0 for ranks, _ in _hit_ranks(ranked, relevant, k)])


def ndcg_at_k(ranked: Ranked, relevant: Relevant, k: int) -> np.ndarray:
    """Normalised discounted cumulative gain with binary gains; the ideal puts min(|relevant|, k) hits on top."""
    discounts = 1.0 / np.log2(np.arange(2, k + 2, dtype=np.float64))
    ideal = np.cumsum(discounts)
    values = []
    for ranks, n_rel in _hit_ranks(ranked, relevant, k):
        gain = float(discounts[np.asarray(ranks, dtype=np.int64) - 1].sum())
        values.append(gain / ideal[min(n_rel, k) - 1])
    return np.array(values, dtype=np.float64)


METRICS: dict[str, Callable[[Ranked, Relevant, int], np.ndarray]] = {
    "R": recall_at_k,
    "P": precision_at_k,
    "MRR": mrr_at_k,
    "nDCG": ndcg_at_k,
    "hit": hit_at_k,
}

_METRIC_NAME = re.compile(r"^\s*([A-Za-z]+)\s*@\s*(\d+)\s*$")


def parse_metric(name: str) -> tuple[Callable[[Ranked, Relevant, int], np.ndarray], int]:
    """Turn a protocol name such as ``"R@10"`` or ``"nDCG@10"`` into (metric function, k); case-insensitive."""
    by_lower = {key.lower(): fn for key, fn in METRICS.items()}
    match = _METRIC_NAME.match(name) if isinstance(name, str) else None
    if match is None or match.group(1).lower() not in by_lower or int(match.group(2)) < 1:
        raise EnclipError(
            f"cannot parse metric {name!r}; write NAME@K with K >= 1 and NAME one of {', '.join(METRICS)}"
            " (e.g. 'R@10', 'MRR@10')"
        )
    return by_lower[match.group(1).lower()], int(match.group(2))


def compute_metrics(ranked: Ranked, relevant: Relevant, names: Sequence[str]) -> dict[str, np.ndarray]:
    """Per-query values for each named metric (e.g. ``["R@1", "R@10", "MRR@10"]``), keyed by the given name."""
    out = {}
    for name in names:
        metric, k = parse_metric(name)
        out[name] = metric(ranked, relevant, k)
    return out
