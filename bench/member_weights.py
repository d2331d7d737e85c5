"""Member weights of an ensemble fitted on validation titles, then scored on test titles (issue 14's "member
weights fitted on validation").

Each member scores every catalogue photo for every title (exact search over the index's stored vectors); a
weighted sum of the members' scores ranks them. The weights are searched on a simplex grid, chosen by validation
title→image R@10 over the whole catalogue, and only then is the test split scored: equal weights (what the
index's mean fusion does) against the fitted ones, with a paired bootstrap interval.

    python bench/member_weights.py --index bench/out/equal-10m-colour/index/snapshot [--step 0.1]
"""

from __future__ import annotations

import argparse
import itertools
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from enclip.cli import SHARED_CATALOGUE  # noqa: E402
from enclip.data.catalogue import load_catalogue  # noqa: E402
from enclip.data.split import split_indices  # noqa: E402
from enclip.eval.bootstrap import paired_bootstrap_diff  # noqa: E402
from enclip.eval.metrics import hit_at_k  # noqa: E402
from enclip.models.ensemble import load_model  # noqa: E402
from enclip.store.index_dir import IndexDir  # noqa: E402

K = 10


def simplex(members: int, step: float) -> list[np.ndarray]:
    """Every weight vector on the grid of ``step`` whose weights sum to one."""
    n = round(1 / step)
    return [np.array(w) / n for w in itertools.product(range(n + 1), repeat=members) if sum(w) == n]


class MemberScores:
    """Per-member cosine scores of some titles against every indexed photo, and the titles' own items."""

    def __init__(self, model, vectors: np.ndarray, ids: list[str], titles: list[str], own: list[str]):
        members = len(model)
        queries = model.encode_texts(titles)  # (members, q, d)
        dim = vectors.shape[1] // members
        self.scores = np.stack([queries[m] @ vectors[:, m * dim:(m + 1) * dim].T for m in range(members)])
        self.ids, self.own = np.asarray(ids), [frozenset([item]) for item in own]

    def hits(self, weights: np.ndarray) -> np.ndarray:
        """Per title, 1 when its own item is in the top K under ``weights`` (hit@K = R@K: one relevant item)."""
        fused = np.tensordot(weights.astype(np.float32), self.scores, axes=1)
        top = np.argpartition(-fused, K, axis=1)[:, :K]  # the top K in any order: a hit needs no rank within them
        return hit_at_k([list(row) for row in self.ids[top]], self.own, K)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--index", required=True, type=Path, help="a built ensemble index")
    parser.add_argument("--data", default=str(SHARED_CATALOGUE))
    parser.add_argument("--step", type=float, default=0.1, help="grid step of the weights")
    args = parser.parse_args(argv)
    index = IndexDir.open(args.index)
    model, _ = load_model(index.model_dir)
    items = index.load_items()
    vectors = index.load_vectors()
    ids = [str(i) for i in items.ids]
    stored = vectors.reconstruct(np.arange(len(ids)))
    catalogue = load_catalogue(args.data, validate_images=False)[0]
    split = split_indices(catalogue.ids)

    def scores(name: str) -> MemberScores:
        positions = split[name]
        return MemberScores(model, stored, ids, [catalogue.titles[p] for p in positions],
                            [catalogue.ids[p] for p in positions])

    members = len(model)
    equal = np.full(members, 1 / members)
    val = scores("val")
    fitted = max(simplex(members, args.step), key=lambda w: val.hits(w).mean())
    print(f"validation title2img R@{K} ({len(val.own)} titles, whole catalogue, exact search):")
    for m in range(members):
        print(f"  member {m} alone: {val.hits(np.eye(members)[m]).mean():.4f}")
    print(f"  equal weights: {val.hits(equal).mean():.4f}; fitted {np.round(fitted, 3).tolist()}: "
          f"{val.hits(fitted).mean():.4f}")
    del val
    test = scores("test")
    base, chosen = test.hits(equal), test.hits(fitted)
    print(f"test title2img R@{K} ({len(test.own)} titles):")
    for m in range(members):
        print(f"  member {m} alone: {test.hits(np.eye(members)[m]).mean():.4f}")
    d = paired_bootstrap_diff(chosen, base)
    print(f"  equal weights {base.mean():.4f}, fitted {chosen.mean():.4f}: {d.mean:+.4f} [{d.low:+.4f}, {d.high:+.4f}]")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
