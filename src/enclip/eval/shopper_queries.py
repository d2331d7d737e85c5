"""Shopper-style attribute queries (the ``attrs2img`` task): "navy blue shirts for men", "women casual handbags".

A query combines two or three of an item's catalogue attributes and is phrased the way people type into a shop's
search box: lower case, the article type last or followed by "for <who>", no brand. Relevant items are every
catalogue item that matches all the attributes the query names. Queries are drawn (seeded) from the items given,
which are validation or test items only, and the phrasings differ from the training caption templates
(``data/captions.py``), so the task does not repeat training text.

``build_shopper_queries`` is the reusable part: later query sets (synonyms, paraphrases, typos for hybrid search)
start from its ``ShopperQuery`` records, which keep the attributes a query asks for beside its text.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from enclip.data.catalogue import Catalogue

MISSING = frozenset({"", "NA", "nan", "None", "null"})
WHO = {"Men": "men", "Women": "women", "Boys": "boys", "Girls": "girls"}  # Unisex is not how shoppers ask

# (attributes named, phrasings); {colour} {type} {who} {usage} {season} are filled from the item, lower case
PATTERNS: tuple[tuple[tuple[str, ...], tuple[str, ...]], ...] = (
    (("baseColour", "articleType", "gender"), ("{colour} {type} for {who}", "{who}'s {colour} {type}")),
    (("gender", "usage", "articleType"), ("{who} {usage} {type}", "{usage} {type} for {who}")),
    (("baseColour", "articleType"), ("{colour} {type}",)),
    (("gender", "articleType"), ("{type} for {who}", "{who}'s {type}")),
    (("usage", "baseColour", "articleType"), ("{usage} {colour} {type}",)),
    (("articleType", "season"), ("{type} for {season}",)),
)


@dataclass(frozen=True)
class ShopperQuery:
    """One query: its text, the attributes it asks for, and the items that have all of them."""

    text: str  # e.g. "navy blue shirts for men"
    attributes: tuple[tuple[str, str], ...]  # (column, catalogue value) pairs the query names
    relevant: frozenset[str]  # ids of every catalogue item matching all of ``attributes``
    source: str  # id of the validation/test item the query was drawn from


def _words(column: str, value: str) -> dict[str, str] | None:
    if column == "gender":
        return {"who": WHO[value]} if value in WHO else None
    key = {"baseColour": "colour", "articleType": "type", "usage": "usage", "season": "season"}[column]
    return {key: value.lower()}


def phrase(template: str, attributes: dict[str, str]) -> str | None:
    """The template filled from catalogue values, or None when a value cannot be said (missing, Unisex) or repeats
    another's words."""
    fields: dict[str, str] = {}
    for column, value in attributes.items():
        if value in MISSING:
            return None
        words = _words(column, value)
        if words is None:
            return None
        fields.update(words)
    words = template.format(**fields).split()
    if len(set(words)) < len(words):  # "formal black formal shoes": one value repeats another, nobody types that
        return None
    return " ".join(words)


def matching_items(catalogue: Catalogue, attributes: Sequence[tuple[str, str]],
                   columns: dict[str, np.ndarray] | None = None) -> frozenset[str]:
    """Ids of the catalogue items whose values equal every (column, value) pair (``columns``: the catalogue's
    attribute columns as arrays, when the caller already holds them)."""
    keep = np.ones(len(catalogue), dtype=bool)
    for column, value in attributes:
        array = columns[column] if columns is not None else np.asarray(catalogue.attributes[column], dtype=str)
        keep &= array == value
    return frozenset(catalogue.ids[i] for i in np.flatnonzero(keep))


def build_shopper_queries(catalogue: Catalogue, positions: np.ndarray, n: int = 500,
                          seed: int = 0) -> list[ShopperQuery]:
    """Up to ``n`` distinct shopper queries drawn (seeded) from the items at ``positions`` (validation or test).

    Each drawn item gets one pattern and one phrasing at random; a query whose attribute combination was already
    asked is skipped, so each combination is judged once.
    """
    usable = [(columns, templates) for columns, templates in PATTERNS
              if all(column in catalogue.attributes for column in columns)]
    arrays = {column: np.asarray(catalogue.attributes[column], dtype=str)
              for columns, _ in usable for column in columns}
    rng = np.random.default_rng([seed, 14])
    queries: list[ShopperQuery] = []
    asked: set[tuple[tuple[str, str], ...]] = set()
    for position in rng.permutation(np.asarray(positions, dtype=np.int64)):
        if len(queries) >= n or not usable:
            break
        columns, templates = usable[int(rng.integers(len(usable)))]
        template = templates[int(rng.integers(len(templates)))]
        values = {column: catalogue.attributes[column][int(position)] for column in columns}
        text = phrase(template, values)
        key = tuple(sorted(values.items()))
        if text is None or key in asked:
            continue
        asked.add(key)
        queries.append(ShopperQuery(text, key, matching_items(catalogue, key, arrays),
                                    catalogue.ids[int(position)]))
    return queries
