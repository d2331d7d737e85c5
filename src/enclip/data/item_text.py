"""The text that stands for an item in search: its title, then the attribute values the title does not already say.

Both the keyword channel (BM25) and the item-text channel (the model's text tower) read it.
"""

from __future__ import annotations

import re


def words(text: str) -> list[str]:
    """Lower-case alphanumeric words: what a query contributes to keyword search (no query syntax survives)."""
    return re.findall(r"[0-9a-z]+", str(text).lower())


def item_text(title: str, attributes: dict[str, str]) -> str:
    said = set(words(title))
    extra = [value for value in attributes.values() if value and not set(words(value)) <= said]
    return " ".join([title, *extra])
