"""Does a re-run reproduce a benchmark? Compare every interval figure of two ``results.json`` files.

    python bench/compare_runs.py bench/out/quick/results.json bench/out/quick-rerun/results.json

A figure reproduces when the second run's value lies inside the first run's 95% interval. Figures are the
entries that carry ``mean``/``low``/``high`` (recall, precision, MRR, nDCG per system, fusion rule, member and
data fraction); speed figures are not compared (they are timings, not estimates with intervals).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Iterator


def interval_figures(tree: dict, prefix: str = "") -> Iterator[tuple[str, dict]]:
    """(path, figure) for every ``{"mean", "low", "high"}`` entry under ``tree``, skipping the speed section."""
    for key, value in tree.items():
        path = f"{prefix}/{key}" if prefix else str(key)
        if not isinstance(value, dict) or path == "speed":
            continue
        if {"mean", "low", "high"} <= set(value):
            yield path, value
        else:
            yield from interval_figures(value, path)


def compare(first: dict, second: dict) -> list[dict]:
    """One row per figure present in both runs."""
    theirs = dict(interval_figures(second))
    rows = []
    for path, mine in interval_figures(first):
        if path in theirs:
            other = theirs[path]
            rows.append({"figure": path, "first": mine, "second": other,
                         "inside": mine["low"] <= other["mean"] <= mine["high"]})
    return rows


def render(rows: list[dict]) -> str:
    inside = sum(row["inside"] for row in rows)
    lines = [f"{inside} of {len(rows)} figures of the second run lie inside the first run's 95% interval.", "",
             "| figure | first run | second run | inside |", "|---|---|---|---|"]
    for row in rows:
        a, b = row["first"], row["second"]
        lines.append(f"| {row['figure']} | {a['mean']:.3f} [{a['low']:.3f}, {a['high']:.3f}] | "
                     f"{b['mean']:.3f} [{b['low']:.3f}, {b['high']:.3f}] | {'yes' if row['inside'] else '**no**'} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("first", type=Path)
    parser.add_argument("second", type=Path)
    args = parser.parse_args(argv)
    rows = compare(json.loads(args.first.read_text()), json.loads(args.second.read_text()))
    if not rows:
        print("error: the two files share no interval figures", file=sys.stderr)
        return 2
    print(render(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
