"""Query sets of the evaluation protocol (docs/EVALUATION.md), built from an index's own catalogue.

A :class:`QueryGroup` is a list of queries (text, a lazily made image, or both) that is encoded and ranked once,
and one or more :class:`Judgement` s that score those rankings: ``title2img`` and ``title2img_dup`` share the same
title queries and differ only in which items count as relevant. Images are thunks, so a 15,000-query
``img2img_lq`` set never holds more than one batch of decoded pictures in memory.

Only test items (the fixed id split) become title or photo queries; nothing here reads a test item's text except
to ask it as a query, which is the protocol.
"""

from __future__ import annotations

import json
import logging
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import numpy as np
from PIL import Image

from enclip.data.catalogue import Catalogue
from enclip.data.degrade import DEGRADATIONS, degrade
from enclip.data.images import load_image
from enclip.errors import EnclipError

log = logging.getLogger(__name__)

TASKS: tuple[str, ...] = ("title2img", "title2img_dup", "attr2img", "attrs2img", "img2img_lq", "both2img")
CUSTOM = "custom"
ATTRIBUTE_TASK_KEYS: tuple[str, ...] = ("articleType", "subCategory", "baseColour", "usage", "season")
# Values that mean "unknown" in the catalogue: asking for them as text ("NA") tests nothing a shopper would type.
MISSING_VALUES = frozenset({"", "NA", "nan", "None", "null"})

TITLE_METRICS = ("R@1", "R@5", "R@10", "MRR@10", "nDCG@10")
DUP_METRICS = ("R@10", "MRR@10")
ATTR_METRICS = ("P@1", "P@10", "MRR@10")
ATTRS_METRICS = ("P@10", "nDCG@10")
LQ_METRICS = ("R@1", "R@10")
CUSTOM_METRICS = TITLE_METRICS

ImageThunk = Callable[[], Image.Image]


@dataclass(frozen=True)
class Judgement:
    """Which items are relevant to each query of a group, and which metrics to report under ``key``."""

    key: str  # metric key prefix, e.g. "title2img" or "attr2img/baseColour"
    relevant: list[frozenset[str]]  # per query, the relevant item ids (never empty)
    metrics: tuple[str, ...]  # metric names such as "R@10"


@dataclass(frozen=True)
class QueryGroup:
    """Queries ranked once and scored by each of ``judgements``."""

    name: str  # short name for logs and progress
    labels: list[str]  # per query, what it is (item id or attribute value), to pair systems query by query
    texts: list[str | None]  # per query, the text (None for an image-only query)
    images: list[ImageThunk | None]  # per query, a function making the image (None for a text-only query)
    weights: list[float]  # per query, the text's share of the score when both text and image are given
    judgements: list[Judgement] = field(default_factory=list)  # how the rankings are scored

    def __len__(self) -> int:
        return len(self.labels)


@dataclass(frozen=True)
class BadLine:
    """A custom-query line that was skipped, and why."""

    line: int  # 1-based line number in the queries file
    reason: str  # what is wrong with it


def item_seed(item_id: str, seed: int) -> int:
    """A degradation seed fixed per item (and run seed), independent of catalogue order or sample size."""
    return zlib.crc32(f"{seed}/{item_id}".encode("utf-8"))


def _degraded_photo(catalogue: Catalogue, position: int, name: str, severity: int, seed: int) -> Image.Image:
    return degrade(catalogue.image(position), name, severity, seed)


def title_group(catalogue: Catalogue, test: np.ndarray, tasks: Sequence[str]) -> QueryGroup:
    """Each test item's title as a query: ``title2img`` (that item) and/or ``title2img_dup`` (same-title items)."""
    positions = [int(p) for p in test]
    texts = [catalogue.titles[p] for p in positions]
    judgements = []
    if "title2img" in tasks:
        judgements.append(Judgement("title2img", [frozenset({catalogue.ids[p]}) for p in positions], TITLE_METRICS))
    if "title2img_dup" in tasks:
        judgements.append(Judgement("title2img_dup", same_title_relevant(catalogue, texts), DUP_METRICS))
    return QueryGroup("title", [catalogue.ids[p] for p in positions], texts, [None] * len(texts),
                      [1.0] * len(texts), judgements)


def same_title_relevant(catalogue: Catalogue, titles: Sequence[str]) -> list[frozenset[str]]:
    """Per title, the ids of every catalogue item whose title equals it exactly."""
    by_title: dict[str, set[str]] = {}
    for item_id, title in zip(catalogue.ids, catalogue.titles):
        by_title.setdefault(title, set()).add(item_id)
    return [frozenset(by_title.get(title, ())) for title in titles]


def attribute_groups(catalogue: Catalogue, attributes: Sequence[str] = ATTRIBUTE_TASK_KEYS) -> list[QueryGroup]:
    """``attr2img``: each known value of each attribute as plain text; relevant = every item with that value."""
    groups = []
    for name in attributes:
        if name not in catalogue.attributes:
            log.warning("attr2img: the catalogue has no %r attribute; skipping it", name)
            continue
        by_value: dict[str, set[str]] = {}
        for item_id, value in zip(catalogue.ids, catalogue.attributes[name]):
            if value not in MISSING_VALUES:
                by_value.setdefault(value, set()).add(item_id)
        values = sorted(by_value)
        if not values:
            log.warning("attr2img: attribute %r has no values; skipping it", name)
            continue
        judgement = Judgement(f"attr2img/{name}", [frozenset(by_value[v]) for v in values], ATTR_METRICS)
        groups.append(QueryGroup(f"attr2img/{name}", values, values, [None] * len(values), [1.0] * len(values),
                                 [judgement]))
    return groups


def attrs_group(catalogue: Catalogue, positions: np.ndarray, n: int = 500, seed: int = 0) -> QueryGroup:
    """``attrs2img``: shopper-style attribute queries drawn from ``positions`` (validation or test items);
    relevant = every item matching all the query's attributes (``eval/shopper_queries.py``)."""
    from enclip.eval.shopper_queries import build_shopper_queries

    queries = build_shopper_queries(catalogue, positions, n=n, seed=seed)
    texts = [q.text for q in queries]
    judgement = Judgement("attrs2img", [q.relevant for q in queries], ATTRS_METRICS)
    return QueryGroup("attrs2img", texts, list(texts), [None] * len(texts), [1.0] * len(texts), [judgement])


def sample_positions(test: np.ndarray, n: int, seed: int) -> np.ndarray:
    """A seeded sample of ``n`` test positions (all of them when there are fewer), in catalogue order."""
    if n >= len(test):
        return np.asarray(test, dtype=np.int64)
    chosen = np.random.default_rng(seed).choice(len(test), size=n, replace=False)
    return np.asarray(test, dtype=np.int64)[np.sort(chosen)]


def lq_groups(catalogue: Catalogue, positions: np.ndarray, degradations: Sequence[str], severities: Sequence[int],
              seed: int) -> list[QueryGroup]:
    """``img2img_lq``: each sampled test photo degraded by each degradation and severity; relevant = that item."""
    return _degraded_groups("img2img_lq", catalogue, positions, degradations, severities, seed, None, 0.0)


def both_groups(catalogue: Catalogue, positions: np.ndarray, degradations: Sequence[str], severities: Sequence[int],
                weight: float, seed: int) -> list[QueryGroup]:
    """``both2img``: each sampled test photo degraded by each degradation and severity, plus its title (text share
    ``weight``); relevant = that item. The photos are the ones ``img2img_lq`` degrades."""
    titles = [catalogue.titles[int(p)] for p in positions]
    return _degraded_groups("both2img", catalogue, positions, degradations, severities, seed, titles, weight)


def _degraded_groups(task: str, catalogue: Catalogue, positions: np.ndarray, degradations: Sequence[str],
                     severities: Sequence[int], seed: int, texts: list[str] | None, weight: float) -> list[QueryGroup]:
    """One group per degradation and severity (``task/name/severity``) of the sampled photos, each query's own item
    being the one relevant; ``texts`` (or none) go with the photos at text share ``weight``."""
    ids = [catalogue.ids[int(p)] for p in positions]
    relevant = [frozenset({item_id}) for item_id in ids]
    texts = list(texts) if texts is not None else [None] * len(ids)
    groups = []
    for name in degradations:
        for severity in severities:
            key = f"{task}/{name}/{severity}"
            images = [partial(_degraded_photo, catalogue, int(p), name, int(severity), item_seed(i, seed))
                      for p, i in zip(positions, ids)]
            groups.append(QueryGroup(key, list(ids), list(texts), images, [weight] * len(ids),
                                     [Judgement(key, relevant, LQ_METRICS)]))
    return groups


def pool_degradations(per_query: dict[str, np.ndarray], task: str, degradations: Sequence[str], severity: int,
                      metric: str) -> np.ndarray:
    """Per-query ``metric`` of a degraded-photo task (``img2img_lq``, ``both2img``) at ``severity``, every
    degradation's queries one after another, in ``degradations`` order."""
    return np.concatenate([per_query[f"{task}/{name}/{severity}/{metric}"] for name in degradations])


def pool_both(per_query: dict[str, np.ndarray], labels: dict[str, list[str]], degradations: Sequence[str],
              severity: int) -> None:
    """Add the headline ``both2img/<metric>`` figures: every degradation at ``severity``, pooled (in place)."""
    keys = [f"both2img/{name}/{severity}" for name in degradations]
    metrics = {key.rsplit("/", 1)[1] for key in per_query if key.startswith(f"{keys[0]}/")}
    for metric in sorted(metrics):
        per_query[f"both2img/{metric}"] = pool_degradations(per_query, "both2img", degradations, severity, metric)
    labels["both2img"] = [f"{item}/{key.split('/')[1]}" for key in keys for item in labels[key]]


# -- user query files --------------------------------------------------------------------------------------------
def _check_text(record: dict) -> str | None:
    text = record.get("text")
    if text is None:
        return None
    if not isinstance(text, str) or not text.strip():
        raise ValueError("'text' must be a non-empty string or null")
    return text


def _check_image(record: dict, base: Path) -> ImageThunk | None:
    image = record.get("image")
    if image is None:
        return None
    if not isinstance(image, str) or not image.strip():
        raise ValueError("'image' must be a file path or null")
    path = Path(image).expanduser()
    path = path if path.is_absolute() else base / path
    try:
        load_image(path)
    except EnclipError as err:
        raise ValueError(f"unreadable image: {err}") from err
    return partial(load_image, path)


def _check_relevant(record: dict, known: set[str]) -> frozenset[str]:
    relevant = record.get("relevant")
    if not isinstance(relevant, list) or not relevant:
        raise ValueError("'relevant' must be a non-empty list of item ids")
    ids = frozenset(str(r) for r in relevant)
    unknown = sorted(ids - known)
    if unknown:
        raise ValueError(f"unknown item ids {unknown[:3]}" + (" ..." if len(unknown) > 3 else ""))
    return ids


def _check_weight(record: dict) -> float:
    weight = record.get("weight", 0.5)
    if weight is None:
        return 0.5
    if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not 0.0 <= weight <= 1.0:
        raise ValueError("'weight' must be a number between 0 and 1 (the text's share)")
    return float(weight)


def parse_query_line(line: str, known: set[str], base: Path) -> tuple[str | None, ImageThunk | None, float,
                                                                           frozenset[str]]:
    """One JSONL line → (text, image thunk, weight, relevant ids); ``ValueError`` says what is wrong with it."""
    try:
        record = json.loads(line)
    except json.JSONDecodeError as err:
        raise ValueError(f"invalid JSON ({err.msg})") from err
    if not isinstance(record, dict):
        raise ValueError("a line must be a JSON object")
    text = _check_text(record)
    relevant = _check_relevant(record, known)
    image = _check_image(record, base)
    if text is None and image is None:
        raise ValueError("a query needs 'text', 'image' or both")
    return text, image, _check_weight(record), relevant


def custom_group(path: str | Path, catalogue: Catalogue, max_queries: int | None = None) -> tuple[QueryGroup,
                                                                                                 list[BadLine]]:
    """Read a user's JSONL queries file; bad lines are collected, not fatal, unless every line is bad."""
    path = Path(path).expanduser()
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise EnclipError(f"cannot read the queries file {path}: {err}") from err
    known, base = set(catalogue.ids), path.parent
    labels, parsed, bad = [], [], []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        if max_queries is not None and len(parsed) >= max_queries:
            break
        try:
            parsed.append(parse_query_line(line, known, base))
        except ValueError as err:
            bad.append(BadLine(number, str(err)))
            continue
        labels.append(f"line {number}")
    if not parsed:
        first = "; ".join(f"line {b.line}: {b.reason}" for b in bad[:3]) or "the file is empty"
        raise EnclipError(f"no usable query in {path} ({first}); each line needs "
                          '{"text": ..., "image": path-or-null, "relevant": [catalogue ids]}')
    if bad:
        log.warning("%d bad lines in %s skipped (first: %s)", len(bad), path,
                    ", ".join(str(b.line) for b in bad[:5]))
    texts, images, weights, relevant = (list(column) for column in zip(*parsed))
    judgement = Judgement(CUSTOM, relevant, CUSTOM_METRICS)
    return QueryGroup(CUSTOM, labels, texts, images, weights, [judgement]), bad


def check_degradations(names: Sequence[str]) -> tuple[str, ...]:
    unknown = [n for n in names if n not in DEGRADATIONS]
    if unknown or not names:
        raise EnclipError(f"unknown degradations {unknown}; choose from {', '.join(DEGRADATIONS)}")
    return tuple(names)
