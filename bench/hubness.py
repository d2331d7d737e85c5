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

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from enclip.eval.bootstrap import bootstrap_ci, paired_bootstrap_diff  # noqa: E402
from enclip.eval.evaluate import EvalCfg, build_groups, depth_of, encode_rows, score_group  # noqa: E402
from enclip.eval.tasks import pool_both, pool_degradations  # noqa: E402
from enclip.indexing import title_hubness  # noqa: E402
from enclip.search import load_searcher  # noqa: E402
from enclip.search.query import text_shares  # noqa: E402

KEYS = ("title2img/R@10", "title2img/R@1", "attrs2img/P@10", "attr2img/articleType/P@10",
        "attr2img/subCategory/P@10", "attr2img/baseColour/P@10", "both2img/R@10", "img2img_lq/R@10")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--index", required=True, type=Path)
    parser.add_argument("--out", type=Path, default=Path("bench/out/hubness"))
    parser.add_argument("--split", default="val", choices=["val", "test"])
    parser.add_argument("--ks", type=int, nargs="+", default=[20, 50, 100])
    parser.add_argument("--weights", type=float, nargs="+", default=[0.5, 0.75, 1.0])
    parser.add_argument("--tasks", nargs="+", default=["title2img", "attrs2img", "attr2img", "both2img"])
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
    cfg = EvalCfg(tasks=tuple(args.tasks), split=args.split, severities=(3,), both_severity=3)
    groups, _ = build_groups(catalogue, cfg)

    encoded = [encode_group(searcher, group, cfg.batch_size) for group in groups]  # once: settings only re-rank

    searcher.cfg.hubness = 0.0
    grid = {(None, 0.0): setting_scores(searcher, groups, encoded, cfg)}
    for k in args.ks:
        searcher.live.hubness = title_hubness(searcher.model, catalogue, vectors, args.out / "title-bank", k)
        for weight in args.weights:
            searcher.cfg.hubness = weight
            grid[k, weight] = setting_scores(searcher, groups, encoded, cfg)
            print(f"k={k} weight={weight}: " + ", ".join(f"{key} {v.mean():.3f}" for key, v in grid[k, weight].items()),
                  flush=True)
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


def setting_scores(searcher, groups, encoded, cfg: EvalCfg) -> dict[str, np.ndarray]:
    """Per-query figures (``KEYS``) of the searcher's current settings, on groups encoded by ``encode_group``; the
    degraded-photo tasks pooled over degradations at ``cfg.both_severity``."""
    per_query, labels = {}, {}
    for group, (vectors, shares) in zip(groups, encoded):
        hits = searcher.search_batch(vectors, k=depth_of(group), shares=shares)
        per_query.update(score_group(group, [[hit.id for hit in ranked] for ranked in hits]))
        labels.update({j.key: list(group.labels) for j in group.judgements})
    if "both2img" in cfg.tasks:
        pool_both(per_query, labels, cfg.degradations, cfg.both_severity)
    if "img2img_lq" in cfg.tasks:
        per_query["img2img_lq/R@10"] = pool_degradations(per_query, "img2img_lq", cfg.degradations,
                                                         cfg.both_severity, "R@10")
    return {key: np.asarray(per_query[key]) for key in KEYS if key in per_query}


def encode_group(searcher, group, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    """(K, B, d) query vectors of a whole group, as ``enclip eval`` encodes them, and each query's text share."""
    rows = [range(start, min(start + batch_size, len(group))) for start in range(0, len(group), batch_size)]
    vectors = np.concatenate([encode_rows(searcher.encoder, group, r) for r in rows], axis=1)
    return vectors, text_shares(group.texts, group.images, group.weights)


def paired_rows(grid: dict[tuple, dict[str, np.ndarray]], against: tuple, names: tuple[str, ...]) -> list[dict]:
    """One row per setting (named by ``names``): each figure's mean and interval, and its paired difference from
    the setting ``against``."""
    base = grid[against]
    return [{**dict(zip(names, setting)),
             **{key: {**_figure(bootstrap_ci(v)),
                      **({} if setting == against else {"diff": _figure(paired_bootstrap_diff(v, base[key]))})}
                for key, v in found.items()}}
            for setting, found in grid.items()]


def print_table(rows: list[dict], names: tuple[str, ...]) -> None:
    keys = [key for key in KEYS if key in rows[0]]
    print("| " + " | ".join(names) + " | " + " | ".join(keys) + " |\n|" + "---|" * (len(names) + len(keys)))
    for row in rows:
        settings = ["–" if row[name] is None else str(row[name]) for name in names]
        print("| " + " | ".join(settings + [_cell(row[key]) for key in keys]) + " |")


def _figure(estimate) -> dict:
    return {"mean": estimate.mean, "low": estimate.low, "high": estimate.high}


def _cell(figure: dict) -> str:
    text = f"{figure['mean']:.3f}"
    if "diff" in figure:
        d = figure["diff"]
        text += f" ({d['mean']:+.3f} [{d['low']:+.3f}, {d['high']:+.3f}])"
    return text


if __name__ == "__main__":
    raise SystemExit(main())
