"""The title→image R@10 a model could reach if it knew only some attributes from each photo (issue 14's table).

For each test item (the title query's own item), every catalogue item sharing the given attributes with it is
ranked first, in random order, and the rest after. If m items share them (the item itself included), the item
lands in the top 10 with probability min(1, 10 / m); the ceiling is the mean over test items. "brand" is the
title's first word (Myntra titles start with the brand); "the exact title" groups items by their whole title.

It also prints the ``attr2img`` P@k ceiling: a value's query can find at most all of its m items, so even a
perfect ranking scores min(m, k) / k, and values with fewer than k items pull the mean over values below 1.

    python bench/ceiling.py [--data PATH] [--k 10]
"""

from __future__ import annotations

import argparse
from collections import Counter

import numpy as np

from enclip.cli import SHARED_CATALOGUE
from enclip.data.catalogue import load_catalogue
from enclip.data.split import split_indices
from enclip.eval.tasks import attribute_groups

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


def value_sizes(catalogue) -> dict[str, list[int]]:
    """Per attribute attr2img asks about, how many catalogue items each of its values has."""
    return {group.name.split("/", 1)[1]: [len(relevant) for relevant in group.judgements[0].relevant]
            for group in attribute_groups(catalogue)}


def attribute_ceiling(sizes: list[int], k: int = 10) -> float:
    """attr2img P@k of a perfect ranking: the mean over an attribute's values of min(m, k) / k."""
    return float(np.mean([min(m, k) / k for m in sizes]))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(SHARED_CATALOGUE))
    parser.add_argument("--k", type=int, default=10)
    args = parser.parse_args(argv)
    catalogue = load_catalogue(args.data, validate_images=False)[0]
    test = split_indices(catalogue.ids)["test"]
    print(f"{len(test)} test titles against {len(catalogue)} catalogue items")
    print(f"| what a model perfectly knows from the photo | title2img R@{args.k} ceiling |\n|---|---|")
    for label, columns in ROWS:
        print(f"| {label} | {ceiling(catalogue, columns, test, args.k):.3f} |")
    print(f"\n| attribute (attr2img) | values | of them with fewer than {args.k} items | P@{args.k} ceiling |"
          "\n|---|---|---|---|")
    for name, sizes in value_sizes(catalogue).items():
        print(f"| {name} | {len(sizes)} | {sum(m < args.k for m in sizes)} | {attribute_ceiling(sizes, args.k):.3f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
