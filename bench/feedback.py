"""Pseudo-relevance feedback (``SearchCfg.feedback``) on a built index: a grid of depths and weights, paired against
no feedback on the same queries.

    python bench/feedback.py --index runs/demo/index --split val --depths 5 10 20 --weights 0.1 0.25 0.5
    python bench/feedback.py --index runs/demo/index --split test --depths 10 --weights 0.25   # the chosen setting

Queries are encoded once and every setting re-ranks the same candidates, with the index's hubness penalty at its
default weight, so the grid costs rankings only. Photo queries (``img2img_lq``, severity 3, pooled over
degradations) and photo + title queries (``both2img``) are in the grid as well as text ones. Choose on
``--split val``; report on ``--split test``.

``--latency N`` also times one-query text searches (photo channel, as ``enclip search`` runs them) on N distinct
validation titles, without feedback and with the grid's first setting, in alternating passes: p50 ms, median of
``--repeats`` passes each. Run it on a quiet machine.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.rescoring import (  # noqa: E402
    Queries,
    alternating_p50,
    grid_parser,
    paired_rows,
    print_progress,
    print_table,
)
from enclip.data.split import split_indices  # noqa: E402
from enclip.search import load_searcher  # noqa: E402

NAMES = ("depth", "weight")


def main(argv: list[str] | None = None) -> int:
    parser = grid_parser(__doc__, "bench/out/feedback",
                         ["title2img", "attrs2img", "attr2img", "img2img_lq", "both2img"])
    parser.add_argument("--depths", type=int, nargs="+", default=[5, 10, 20])
    parser.add_argument("--weights", type=float, nargs="+", default=[0.1, 0.25, 0.5])
    parser.add_argument("--latency", type=int, default=0, help="also time N one-query text searches (0: no timing)")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    if any(w <= 0 for w in args.weights) or any(d < 1 for d in args.depths):
        raise SystemExit("--weights must be above 0 and --depths at least 1 (no feedback is the grid's first row)")

    searcher = load_searcher(args.index)
    queries = Queries.encode(searcher, args.tasks, args.split)  # once: settings only re-rank

    searcher.cfg.feedback = 0.0
    grid = {(None, 0.0): queries.scores(searcher)}
    for depth in args.depths:
        for weight in args.weights:
            searcher.cfg.feedback, searcher.cfg.feedback_depth = weight, depth
            grid[depth, weight] = queries.scores(searcher)
            print_progress(f"depth={depth} weight={weight}", grid[depth, weight])
    rows = paired_rows(grid, (None, 0.0), NAMES)
    print(f"\n{args.split} split, {args.index}; hubness weight {searcher.cfg.hubness}; differences are paired "
          "against no feedback (first row)\n")
    print_table(rows, NAMES)
    timing = None
    if args.latency:
        titles = [searcher.catalogue.titles[p] for p in split_indices(searcher.catalogue.ids)["val"][:args.latency]]
        none, fed = latency(searcher, titles, (args.depths[0], args.weights[0]), args.repeats)
        timing = {"queries": len(titles), "repeats": args.repeats, "p50_ms_none": none, "p50_ms_feedback": fed}
        print(f"\none-query text search, photo channel, {len(titles)} validation titles, median of {args.repeats} "
              f"passes: p50 {none:.2f} ms without feedback, {fed:.2f} ms with depth {args.depths[0]}, "
              f"weight {args.weights[0]}")
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"feedback-{args.split}.json"
    path.write_text(json.dumps({"index": str(args.index), "split": args.split, "hubness": searcher.cfg.hubness,
                                "rows": rows, "latency": timing}, indent=2) + "\n")
    print(f"\nwritten to {path}")
    return 0


def latency(searcher, titles: list[str], setting: tuple[int, float], repeats: int) -> tuple[float, float]:
    """p50 ms of one-query text searches without feedback and with ``setting`` (depth, weight)."""
    def with_feedback(depth: int, weight: float):
        def apply() -> None:
            searcher.cfg.feedback, searcher.cfg.feedback_depth = weight, depth
        return apply

    none, fed = alternating_p50(searcher, titles, [with_feedback(setting[0], 0.0), with_feedback(*setting)], repeats)
    return none, fed


if __name__ == "__main__":
    raise SystemExit(main())
