"""Resident memory of a fresh process that loads an index and answers queries (the service's footprint).

    python bench/memory.py --index runs/demo/index [--queries 50]
"""

from __future__ import annotations

import argparse
import resource
import sys

import psutil

from enclip.search import load_searcher


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--index", required=True)
    parser.add_argument("--queries", type=int, default=50)
    args = parser.parse_args(argv)
    process = psutil.Process()
    before = process.memory_info().rss
    searcher = load_searcher(args.index)
    loaded = process.memory_info().rss
    titles = searcher.catalogue.titles[: args.queries]
    for title in titles:
        searcher.search(text=title, k=10)
        searcher.search(image=searcher.catalogue.image_bytes(0), text=title, k=10)
    after = process.memory_info().rss
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"| index | members | items | RSS before load MB | after load MB | after {2 * len(titles)} queries MB | "
          "peak MB |\n|---|---|---|---|---|---|---|")
    print(f"| {args.index} | {searcher.members} | {len(searcher)} | {before / 2**20:.0f} | {loaded / 2**20:.0f} | "
          f"{after / 2**20:.0f} | {peak:.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
