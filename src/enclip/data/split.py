"""The fixed train/val/test split by product id (protocol in docs/EVALUATION.md).

The split depends on the id alone, never on the catalogue's order or size, so an item keeps its split when the
catalogue grows or is subset, and test items can never leak into training by a reshuffle.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence

import numpy as np

SPLITS: tuple[str, ...] = ("train", "val", "test")


def _bucket(item_id: str) -> int:
    """0..9: the id's last decimal digit for numeric ids, a stable hash for any other id."""
    text = item_id.strip()
    if text.isascii() and text.isdigit():
        return int(text) % 10
    return zlib.crc32(item_id.encode("utf-8")) % 10


def split_of(item_id: str) -> str:
    """Which split an item belongs to: bucket 0 -> "test", 1 -> "val", 2..9 -> "train"."""
    bucket = _bucket(str(item_id))
    if bucket == 0:
        return "test"
    if bucket == 1:
        return "val"
    return "train"


def split_indices(ids: Sequence[str]) -> dict[str, np.ndarray]:
    """Positions of each split's items, in catalogue order, as int64 arrays keyed "train", "val", "test"."""
    names = [split_of(item_id) for item_id in ids]
    return {split: np.array([i for i, name in enumerate(names) if name == split], dtype=np.int64) for split in SPLITS}
