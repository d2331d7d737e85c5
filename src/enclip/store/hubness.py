"""Each item's hubness penalty: how close its photo lies to the catalogue's titles in general (an index part).

In a joint text-image space some photos are *hubs*: near many texts at once, so they crowd the top of many
unrelated text queries. The cross-domain similarity local scaling of Conneau et al. (2018, "Word translation
without parallel data", CSLS) corrects for it by ranking on ``cos(q, x) - r(x)``, where ``r(x)`` is the mean cosine
of ``x`` to its ``k`` nearest texts in a bank; Bogolin et al. (2022, "Cross Modal Retrieval with Querybank
Normalisation") show the same for text-video search. Here the bank is the catalogue's own distinct titles, which is
what shoppers' words look like and what the text tower was trained on, and an item's own title is left out of its
bank so that every item, whatever split it came from, is treated alike.

The search applies ``beta * share * r`` per member (``share`` is the query's text share, so a photo-only query is
unchanged); this module only stores and computes ``r``. New items added live get their penalty against the bank
stored here; the bank itself is fixed until the index is rebuilt.

Files, inside the index directory's ``hubness/`` part::

    hubness.json   k, members, bank size
    bank.npy       (m, K*d) float16: each distinct catalogue title's concatenated member text vectors
    titles.json    {"titles": the m bank titles, in row order} (to leave an item's own title out)
    penalty.npy    (n, K) float32: each item's penalty per member, row i = catalogue item i
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from enclip.artifacts import read_json, write_json
from enclip.errors import EnclipError

DEFAULT_K = 100  # bank neighbours averaged; chosen on validation queries (docs/RESULTS.md, "hubness penalty")
ROWS_PER_BLOCK = 2048  # items scored against the whole bank per matrix product


def mean_top_k(vectors: np.ndarray, bank: np.ndarray, k: int, own: np.ndarray) -> np.ndarray:
    """(n,) mean of each row's ``k`` largest cosines to ``bank`` rows, leaving out bank row ``own[i]`` (-1: none)."""
    k = min(k, len(bank) - 1) if len(bank) > 1 else len(bank)
    out = np.empty(len(vectors), np.float32)
    for start in range(0, len(vectors), ROWS_PER_BLOCK):
        block = np.asarray(vectors[start:start + ROWS_PER_BLOCK], np.float32) @ np.asarray(bank, np.float32).T
        rows = np.flatnonzero(own[start:start + ROWS_PER_BLOCK] >= 0)
        block[rows, own[start:start + ROWS_PER_BLOCK][rows]] = -np.inf
        out[start:start + len(block)] = np.partition(block, -k, axis=1)[:, -k:].mean(axis=1)
    return out


class TitleHubness:
    """The bank of title vectors and each item's penalty per member."""

    def __init__(self, bank: np.ndarray, titles: Sequence[str], penalty: np.ndarray, k: int, members: int):
        if len(bank) != len(titles) or not len(bank):
            raise EnclipError(f"a hubness bank needs one vector per title and at least one title "
                              f"({len(bank)} vectors, {len(titles)} titles)")
        if k < 1:
            raise EnclipError(f"the hubness k (bank neighbours averaged) must be at least 1, got {k}")
        self.bank, self.titles, self.k, self.members = bank, list(titles), int(k), int(members)
        self.penalty = np.asarray(penalty, np.float32).reshape(-1, members)
        self._row = {title: row for row, title in enumerate(self.titles)}

    @classmethod
    def build(cls, vectors: np.ndarray, item_titles: Sequence[str], bank: np.ndarray, bank_titles: Sequence[str],
              members: int, k: int = DEFAULT_K) -> TitleHubness:
        """Penalties of ``vectors`` ((n, K*d) stored rows) against a bank of title vectors ((m, K*d))."""
        hubness = cls(np.asarray(bank, np.float16), bank_titles, np.zeros((0, members), np.float32), k, members)
        hubness.penalty = hubness.penalties(vectors, item_titles)
        return hubness

    def penalties(self, vectors: np.ndarray, titles: Sequence[str]) -> np.ndarray:
        """(n, K) penalties of stored rows whose items have ``titles``; the rows need not be in the index."""
        if len(vectors) != len(titles):
            raise EnclipError(f"hubness penalties need one title per vector ({len(vectors)} vectors, "
                              f"{len(titles)} titles)")
        own = np.array([self._row.get(str(title), -1) for title in titles], dtype=np.int64)
        dim = self.bank.shape[1] // self.members
        return np.stack([mean_top_k(np.asarray(vectors)[:, m * dim:(m + 1) * dim], self.bank[:, m * dim:(m + 1) * dim],
                                    self.k, own) for m in range(self.members)], axis=1)

    def add(self, vectors: np.ndarray, titles: Sequence[str]) -> None:
        """Append the penalties of live-added items (their rows follow the existing ones)."""
        self.penalty = np.concatenate([self.penalty, self.penalties(vectors, titles)])

    def save(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        np.save(directory / "bank.npy", self.bank)
        np.save(directory / "penalty.npy", self.penalty)
        write_json(directory / "titles.json", {"titles": self.titles})
        write_json(directory / "hubness.json", {"k": self.k, "members": self.members, "bank": len(self.titles)})

    @classmethod
    def load(cls, directory: Path) -> TitleHubness:
        info = read_json(directory / "hubness.json")
        return cls(np.load(directory / "bank.npy"), read_json(directory / "titles.json")["titles"],
                   np.load(directory / "penalty.npy"), info["k"], info["members"])
