"""The title→image R@10 a model could reach if it knew only some attributes from each photo (issue 14's table).

For each test item (the title query's own item), every catalogue item sharing the given attributes with it is
ranked first, in random order, and the rest after. If m items share them (the item itself included), the item
lands in the top 10 with probability min(1, 10 / m); the ceiling is the mean over test items. "brand" is the
title's first word (Myntra titles start with the brand); "the exact title" groups items by their whole title.

    python bench/ceiling.py [--data PATH] [--k 10]
"""

from __future__ import annotations

import argparse
from collections import Counter
from pathlib import Path

import numpy as np

from enclip.data.catalogue import load_catalogue
from enclip.data.split import split_indices

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "fashion-product-images-small"
ROWS = (
    ("gender + articleType", ("gender", "articleType")),
    ("gender + articleType + baseColour", ("gender", "articleType", "baseColour")),
    ("+ usage + season", ("gender", "articleType", "baseColour", "usage", "season")),
    ("brand + gender + articleType + baseColour", ("brand", "gender", "articleType", "baseColour")),
    ("the exact title", ("title",)),
)


def keys(catalogue, columns: tuple[str, ...]) -> list[tuple[str, ...]]:
    """Per catalogue item, its values of ``columns`` (with "brand" and "title" taken from the title)."""
    def value(column: str, i: int) -> str:
        title = catalogue.titles[i]
        if column == "title":
            return title
        if column == "brand":
            return (title.split() or [""])[0]
        return catalogue.attributes[column][i]

    return [tuple(value(c, i) for c in columns) for i in range(len(catalogue))]


def ceiling(catalogue, columns: tuple[str, ...], queries: np.ndarray, k: int = 10) -> float:
    """Expected recall@k of the query items when items sharing ``columns`` come first in random order."""
    item_keys = keys(catalogue, columns)
    counts = Counter(item_keys)
    return float(np.mean([min(1.0, k / counts[item_keys[int(q)]]) for q in queries]))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(DATA))
    parser.add_argument("--k", type=int, default=10)
    args = parser.parse_args(argv)
    catalogue = load_catalogue(args.data, validate_images=False)[0]
    test = split_indices(catalogue.ids)["test"]
    print(f"{len(test)} test titles against {len(catalogue)} catalogue items")
    print(f"| what a model perfectly knows from the photo | title2img R@{args.k} ceiling |\n|---|---|")
    for label, columns in ROWS:
        print(f"| {label} | {ceiling(catalogue, columns, test, args.k):.3f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
