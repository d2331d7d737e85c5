"""Two built indexes on the same test queries: each one's figures and their paired bootstrap difference.

    python bench/paired.py --baseline runs/demo/index --index runs/k5/index-flat [--tasks title2img title2img_dup]

``--split val`` compares them on validation queries instead, to choose between settings. ``--tasks both2img
--severities 5 --both-severity 5`` compares a degraded photo plus its title at severity 5 instead of the headline's 3.

Also prints the member diversity of ``--index`` when it is an ensemble (200 validation titles).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402

from bench.quality import compare, member_diversity  # noqa: E402
from enclip.data.split import split_indices  # noqa: E402
from enclip.eval.evaluate import EvalCfg, evaluate_index  # noqa: E402
from enclip.indexing import title_hubness  # noqa: E402
from enclip.search import load_searcher  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--baseline", required=True, type=Path)
    parser.add_argument("--index", required=True, type=Path)
    parser.add_argument("--tasks", nargs="+", default=["title2img", "title2img_dup"])
    parser.add_argument("--keys", nargs="+", help="metric keys to compare (default: TASK/R@10 for each task), e.g. "
                        "attrs2img/P@10 attr2img/baseColour/P@10")
    parser.add_argument("--hubness-k", type=int, help="give both indexes hubness penalties over this many bank "
                        "titles, computed here (for indexes built before the penalty; default: what each index has)")
    parser.add_argument("--severities", type=int, nargs="+", help="degradation severities of img2img_lq and "
                        "both2img (default: EvalCfg's, 1-5)")
    parser.add_argument("--both-severity", type=int, default=EvalCfg.both_severity,
                        help="severity at which both2img/R@10 pools the degradations (default: %(default)s, the "
                        "headline's; 5 compares the poorest photos)")
    parser.add_argument("--split", default="test", choices=("val", "test"),
                        help="whose items the queries come from (choose settings on val; report test)")
    parser.add_argument("--hubness", type=float, help="weight of the hubness penalty in text queries, both indexes "
                        "(default: the search default; 0 ranks by plain cosines)")
    parser.add_argument("--feedback", type=float, help="weight of pseudo-relevance feedback in text queries, both "
                        "indexes (default: the search default; 0 = none)")
    parser.add_argument("--bridge", type=float, help="weight of the title bridge in text queries, both indexes "
                        "(default: the search default; 0 = none)")
    parser.add_argument("--bridge-labels", type=float, help="weight of the bridge's label supports in text queries, "
                        "both indexes (default: the search default; 0 = none)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    cfg = eval_cfg(args)
    rescoring = cfg.rescoring()  # given to the searchers built here, which evaluate_index then uses as they are
    with tempfile.TemporaryDirectory() as tmp:
        base = evaluate_index(args.baseline, cfg, out=Path(tmp) / "baseline.json",
                              searcher=_searcher(args.baseline, args.hubness_k, Path(tmp) / "bank-baseline", rescoring))
        other = evaluate_index(args.index, cfg, out=Path(tmp) / "index.json",
                               searcher=_searcher(args.index, args.hubness_k, Path(tmp) / "bank-index", rescoring))
    print(f"| task | {args.baseline} | {args.index} | difference [95% paired bootstrap] |\n|---|---|---|---|")
    for key in args.keys or [f"{task}/R@10" for task in args.tasks]:
        a, b, d = base[key], other[key], compare(other, base, key)
        print(f"| {key} | {a['mean']:.3f} [{a['low']:.3f}, {a['high']:.3f}] | {b['mean']:.3f} [{b['low']:.3f}, "
              f"{b['high']:.3f}] | {d['mean']:+.3f} [{d['low']:+.3f}, {d['high']:+.3f}] |")
    searcher = load_searcher(args.index)
    if searcher.members > 1:
        titles = [searcher.catalogue.titles[p] for p in split_indices(searcher.catalogue.ids)["val"][:200]]
        print(f"member diversity of {args.index}: {member_diversity(args.index, titles)}")
    return 0


def eval_cfg(args: argparse.Namespace) -> EvalCfg:
    """The evaluation both indexes get, from the command line."""
    severities = {"severities": tuple(args.severities)} if args.severities else {}
    return EvalCfg(tasks=tuple(args.tasks), split=args.split, hubness=args.hubness, feedback=args.feedback,
                   bridge=args.bridge, bridge_labels=args.bridge_labels, both_severity=args.both_severity,
                   **severities)


def _searcher(index: Path, hubness_k: int | None, work_dir: Path, rescoring: dict):
    """The index's searcher, re-scoring text queries as ``rescoring`` says (hubness, feedback and bridge weights;
    empty: the search defaults); with ``hubness_k``, its items' hubness penalties measured here, in memory."""
    searcher = load_searcher(index, **rescoring)
    if hubness_k is not None:
        vectors = searcher.index.reconstruct(np.arange(len(searcher.catalogue)))
        searcher.live.hubness = title_hubness(searcher.model, searcher.catalogue, vectors, work_dir, hubness_k)
    return searcher


if __name__ == "__main__":
    sys.exit(main())
