"""Fusing search channels: a text query matched against photos (``image``), item text by the model's text tower
(``text``) and keywords (``keyword``, BM25). Pure functions over a candidate union; see Searcher for the flow.

Each channel retrieves its own top candidates under the same filters (with a photo in the query, the photo channel
alone retrieves and the words only re-rank); their union is re-scored on every channel; then either weighted
reciprocal-rank fusion (``rrf``, needs no tuning: a channel's scale never matters) or a weighted sum of min-max
normalised scores (``sum``) ranks the union.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from enclip.errors import EnclipError
from enclip.search_request import CHANNELS

LABELS = {"image": "photo", "text": "title", "keyword": "keyword"}  # how explanations name each channel
PARTIAL = ("keyword",)  # channels that match only some items: their score for no match, 0, is their floor


@dataclass
class HybridCfg:
    """How channels are combined. The defaults are the best of a grid fitted on validation queries (attribute
    combinations, synonyms, damaged titles; ``python bench/hybrid.py``, docs/RESULTS.md): on those queries they beat
    equal-weight RRF at depth 100, the no-tuning choice, by 0.764 to 0.738 on validation."""

    weights: dict[str, float] = field(default_factory=lambda: {"image": 0.5, "text": 2.0, "keyword": 1.0})
    fusion: str = "sum"  # "sum" (weighted sum of min-max normalised scores) or "rrf" (weighted reciprocal rank)
    depth: int = 30  # candidates each channel retrieves
    # With a photo in the query, the photo channel alone retrieves this many candidates and the text channels only
    # re-rank them: the photo says what is sought, the words refine it ("women" on a photo of a red jacket ranks
    # women's red tops first). Letting the words retrieve too returned any women's item, the photo ignored.
    photo_depth: int = 100
    rrf_k: int = 60  # reciprocal-rank constant: larger flattens the difference between ranks

    def candidates(self, photo: bool, k: int = 0) -> int:
        """Candidates a query retrieves: ``photo_depth`` with a photo in it, else ``depth``; at least ``k``."""
        return max(self.photo_depth if photo else self.depth, k)


@dataclass
class Candidates:
    """One query's candidate union: what each channel retrieved (best first), and every channel's score for every
    union item; ``member_scores`` (K, 1, U) are the photo channel's per-member cosines (for member agreement)."""

    union: np.ndarray  # (U,) index positions, sorted
    found: dict[str, np.ndarray]  # channel -> positions it retrieved, best first
    scores: dict[str, np.ndarray]  # channel -> (U,) score of each union item
    member_scores: np.ndarray
    _listed: dict[str, dict[int, int]] | None = field(default=None, repr=False)

    def matched(self, channel: str) -> np.ndarray:
        return matched(channel, self.scores[channel])

    def fused(self, hybrid: HybridCfg) -> np.ndarray:
        """(U,) fused scores by ``hybrid``'s rule and weights."""
        matched = {c: self.matched(c) for c in self.scores}
        if hybrid.fusion == "rrf":
            return fuse_rrf({c: ranks(s, matched[c]) for c, s in self.scores.items()}, hybrid.weights, hybrid.rrf_k)
        return fuse_sum(self.scores, matched, hybrid.weights)

    def listed_ranks(self, row: int) -> dict[str, int]:
        """Union row ``row``'s rank in each channel's own retrieved list (0: that channel did not retrieve it)."""
        if self._listed is None:
            self._listed = {c: {int(p): r for r, p in enumerate(found.tolist(), 1)} for c, found in self.found.items()}
        position = int(self.union[row])
        return {channel: listed.get(position, 0) for channel, listed in self._listed.items()}


def check_channels(channels, available: tuple[str, ...]) -> tuple[str, ...]:
    """Validated channel names, in canonical order; an unknown or unavailable one is an error naming the others."""
    if isinstance(channels, str):
        channels = [part.strip() for part in channels.split(",") if part.strip()]
    channels = tuple(channels)
    unknown = [c for c in channels if c not in CHANNELS]
    if unknown or not channels:
        raise EnclipError(f"unknown channels {unknown or channels}; choose from {', '.join(CHANNELS)}")
    missing = [c for c in channels if c not in available]
    if missing:
        raise EnclipError(f"this index has no {', '.join(missing)} channel (it has {', '.join(available)}); rebuild "
                          "it with `enclip index` to add every channel, or leave that channel out")
    return tuple(c for c in CHANNELS if c in channels)


def check_weights(weights: dict | None, defaults: dict[str, float]) -> dict[str, float]:
    merged = {**defaults, **(weights or {})}
    bad = {k: v for k, v in merged.items() if k not in CHANNELS or not isinstance(v, (int, float))
           or isinstance(v, bool) or not np.isfinite(v) or v < 0}
    if bad:
        raise EnclipError(f"channel weights must be non-negative numbers for {', '.join(CHANNELS)}; got {bad}")
    return {k: float(v) for k, v in merged.items()}


def matched(channel: str, scores: np.ndarray) -> np.ndarray:
    """Whether the channel matches each union item at all (keyword search matches only items sharing a word)."""
    return scores > 0 if channel in PARTIAL else np.ones(len(scores), bool)


def best_first(scores: np.ndarray, found: np.ndarray) -> np.ndarray:
    """Union rows by one channel's scores, best first, the rows it does not match (``found`` false) last."""
    return np.argsort(-np.where(found, scores, -np.inf), kind="stable")


def ranks(scores: np.ndarray, found: np.ndarray) -> np.ndarray:
    """1-based rank of each union item by one channel's scores (best first); 0 for items the channel does not
    match at all (``found`` false)."""
    order = best_first(scores, found)
    out = np.zeros(len(scores), dtype=np.int64)
    out[order] = np.arange(1, len(scores) + 1)
    return np.where(found, out, 0)


def fuse_rrf(channel_ranks: dict[str, np.ndarray], weights: dict[str, float], k: int = 60) -> np.ndarray:
    """sum over channels of weight / (k + rank); a channel that does not match an item adds nothing."""
    total = None
    for channel, rank in channel_ranks.items():
        part = np.where(rank > 0, weights.get(channel, 0.0) / (k + np.maximum(rank, 1)), 0.0)
        total = part if total is None else total + part
    return total


def fuse_sum(channel_scores: dict[str, np.ndarray], found: dict[str, np.ndarray],
             weights: dict[str, float]) -> np.ndarray:
    """sum over channels of weight * min-max normalised score over the union (0 where the channel has no match).

    A channel that matches only some items (keyword search) has a score for no match, 0, and that is its floor: its
    weakest match then still counts for more than no match at all."""
    total = None
    for channel, scores in channel_scores.items():
        valid = found[channel]
        part = np.zeros(len(scores))
        if valid.any():
            low = 0.0 if channel in PARTIAL else scores[valid].min()
            high = scores[valid].max()
            part[valid] = (scores[valid] - low) / (high - low) if high > low else 1.0
        part *= weights.get(channel, 0.0)
        total = part if total is None else total + part
    return total


def explain(channel_ranks: dict[str, int]) -> str:
    """'photo #3, title #1, keyword #2' for the channels that found a hit."""
    return ", ".join(f"{LABELS[c]} #{r}" for c, r in channel_ranks.items() if r)
