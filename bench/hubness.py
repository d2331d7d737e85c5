"""The hubness penalty (enclip.store.hubness) on a built index: a grid of bank neighbours k and weights, paired
against plain cosines on the same queries.

    python bench/hubness.py --index runs/demo/index --split val --ks 20 50 100 --weights 0.5 0.75 1.0
    python bench/hubness.py --index runs/demo/index --split val --ks 100 --weights 0.5 0.75 --against 0.5
    python bench/hubness.py --index runs/demo/index --split test --ks 100 --weights 0.5   # the chosen setting

``--against W`` pairs every setting against weight W instead of plain cosines: a candidate against the default.

The title bank and the queries are encoded once (the bank resumably, in ``--out``), and every (k, weight) reuses
them and the index's stored photo vectors, so the grid costs rankings only. Choose on ``--split val``; report on
``--split test``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.rescoring import Queries, grid_parser, paired_rows, print_progress, print_table  # noqa: E402
from enclip.indexing import title_hubness  # noqa: E402
from enclip.search import load_searcher  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = grid_parser(__doc__, "bench/out/hubness", ["title2img", "attrs2img", "attr2img", "both2img"])
    parser.add_argument("--ks", type=int, nargs="+", default=[20, 50, 100])
    parser.add_argument("--weights", type=float, nargs="+", default=[0.5, 0.75, 1.0])
    parser.add_argument("--against", type=float, default=0.0, help="pair every setting against this weight (at the "
                        "first of --ks) instead of plain cosines, e.g. a candidate against the default")
    args = parser.parse_args(argv)
    if args.against != 0 and args.against not in args.weights:
        raise SystemExit(f"--against {args.against} is not one of --weights {args.weights}: pair against a weight "
                         "the grid measures (or 0, plain cosines)")
    against = (None, 0.0) if args.against == 0 else (args.ks[0], args.against)

    searcher = load_searcher(args.index)
    catalogue = searcher.catalogue
    vectors = searcher.index.reconstruct(np.arange(len(catalogue)))
    queries = Queries.encode(searcher, args.tasks, args.split)  # once: settings only re-rank

    searcher.cfg.hubness = 0.0
    grid = {(None, 0.0): queries.scores(searcher)}
    for k in args.ks:
        searcher.live.hubness = title_hubness(searcher.model, catalogue, vectors, args.out / "title-bank", k)
        for weight in args.weights:
            searcher.cfg.hubness = weight
            grid[k, weight] = queries.scores(searcher)
            print_progress(f"k={k} weight={weight}", grid[k, weight])
    rows = paired_rows(grid, against, ("k", "weight"))
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"hubness-{args.split}.json"
    path.write_text(json.dumps({"index": str(args.index), "split": args.split, "against_weight": args.against,
                                "rows": rows}, indent=2) + "\n")
    what = "plain cosines (first row)" if args.against == 0 else f"weight {args.against} at k={args.ks[0]}"
    print(f"\n{args.split} split, {args.index}; differences are paired against {what}\n")
    print_table(rows, ("k", "weight"))
    print(f"\nwritten to {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
