"""Member weights fitted on validation: the grid and the fused ranking."""

from __future__ import annotations

import numpy as np
import pytest

from bench.member_weights import K, MemberScores, simplex

ITEMS = K + 5


def test_the_grid_covers_the_simplex():
    grid = simplex(3, 0.5)
    assert len(grid) == 6 and all(w.sum() == pytest.approx(1) for w in grid)
    assert any(np.array_equal(w, [0, 0, 1]) for w in grid)


class _Titles:
    """Two members that both embed title "t" as the t-th unit vector."""

    def __len__(self) -> int:
        return 2

    def encode_texts(self, titles):
        own = np.eye(ITEMS, dtype=np.float32)[[int(t) for t in titles]]
        return np.stack([own, own])


def test_fused_hits_follow_the_weights():
    ids = [f"i{n}" for n in range(ITEMS)]
    right = np.eye(ITEMS)  # member 0 stores item n at e_n: a title's own item scores 1
    wrong = np.roll(np.eye(ITEMS), 1, axis=1) - np.eye(ITEMS)  # member 1: own item -1, the previous item +1
    vectors = np.concatenate([right, wrong], axis=1).astype(np.float32)
    scores = MemberScores(_Titles(), vectors, ids, ["3", "7"], ["i3", "i7"])
    assert scores.hits(np.array([1.0, 0.0])).tolist() == [1.0, 1.0]
    assert scores.hits(np.array([0.0, 1.0])).tolist() == [0.0, 0.0]  # the own item ranks last
    assert scores.hits(np.array([0.7, 0.3])).tolist() == [1.0, 1.0]  # 0.4 against 0.3 for the previous item
    assert scores.hits(np.array([0.3, 0.7])).tolist() == [0.0, 0.0]
