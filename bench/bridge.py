"""The title bridge (``SearchCfg.bridge``) on a built index: a grid of weights, depths and temperatures, paired
against no bridge on the same queries.

    python bench/bridge.py --index runs/demo/index --split val --weights 0.1 0.2 0.3 --depths 10 \
        --temperatures 0.01 0.03
    python bench/bridge.py --index runs/demo/index --split test --weights 0.2 --depths 10 --temperatures 0.01

Every setting runs with the bridge's item supports only (``labels`` –) and with its label supports as well (each
attribute value's direction among the training photos, ``--label-kind``) at each of ``--label-weights`` and
``--label-exactness`` (the power of the query's cosine to a value's text in that value's pull; 0: its share alone).
``attr2img``'s queries are the values themselves, with no split of their own, and its gallery holds the training
items whose photos make the label supports; so it is also scored on the split's own items only ("split-only": the
other items are dropped from each ranking and from the relevant items). That figure shows whether a value's
direction finds *unseen* items of that value, and on ``--split val`` it is where the label weight is chosen.

Queries are encoded once and every setting moves the same encoded text queries, with the index's hubness penalty
and pseudo-relevance feedback at their default weights, so the grid costs rankings only. Photo queries
(``img2img_lq``) and photo + title queries (``both2img``) never cross the bridge; they are in the grid to show
that. An index built before the bridge (or before its label supports) gets one here, from its hubness part's title
bank. Choose on ``--split val``; report on ``--split test``.

With ``title2img`` among the tasks it also splits that task's paired differences by whether the query's exact
title is also a training item's title (a sibling listed under the same name), to show whether the gain comes only
from repeated titles.

``--latency N`` also times one-query text searches (photo channel, as ``enclip search`` runs them) on N distinct
validation titles, without the bridge and with the grid's first setting, in alternating passes: p50 ms, median of
``--repeats`` passes each. Run it on a quiet machine.
"""

from __future__ import annotations

import json
import sys
import tempfile
from itertools import product
from pathlib import Path

import numpy as np

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
from enclip.embed.item_text import encode_distinct  # noqa: E402
from enclip.eval.bootstrap import paired_bootstrap_diff  # noqa: E402
from enclip.eval.evaluate import score_group  # noqa: E402
from enclip.eval.tasks import Judgement, QueryGroup  # noqa: E402
from enclip.indexing import title_bridge  # noqa: E402
from enclip.search import load_searcher  # noqa: E402
from enclip.store.bridge import LABEL_KINDS  # noqa: E402

NAMES = ("weight", "depth", "temperature", "labels", "exactness")
NONE = (0.0, None, None, None, None)  # the grid's first row: no bridge
SPLIT_DEPTH = 600  # ranks read per attr2img query to find ten of the split's items (val and test are 10% each)
SPLIT_KEYS = tuple(f"attr2img/{name}/P@10 split-only" for name in ("articleType", "subCategory", "baseColour"))


def main(argv: list[str] | None = None) -> int:
    parser = grid_parser(__doc__, "bench/out/bridge",
                         ["title2img", "attrs2img", "attr2img", "img2img_lq", "both2img"])
    parser.add_argument("--weights", type=float, nargs="+", default=[0.1, 0.2, 0.3])
    parser.add_argument("--depths", type=int, nargs="+", default=[10])
    parser.add_argument("--temperatures", type=float, nargs="+", default=[0.01, 0.03])
    parser.add_argument("--label-weights", type=float, nargs="+", default=[0.3],
                        help="weights of the label supports' photos (each setting also runs without them)")
    parser.add_argument("--label-exactness", type=float, nargs="+", default=[16.0],
                        help="powers of a query's cosine to a value's text in the value's pull (0: the share alone)")
    parser.add_argument("--label-kind", choices=LABEL_KINDS, help="give the bridge label supports of this kind "
                        "(default: the index's own, or probe for an index built without them)")
    parser.add_argument("--latency", type=int, default=0, help="also time N one-query text searches (0: no timing)")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    if any(w <= 0 for w in args.weights) or any(d < 1 for d in args.depths) or any(t <= 0 for t in
                                                                                   args.temperatures):
        raise SystemExit("--weights and --temperatures must be above 0 and --depths at least 1 (no bridge is the "
                         "grid's first row)")
    if any(w < 0 for w in args.label_weights) or any(e < 0 for e in args.label_exactness):
        raise SystemExit("--label-weights and --label-exactness must be 0 or more (each setting also runs without "
                         "label supports)")

    searcher = load_searcher(args.index)
    if args.label_kind or searcher.live.bridge is None or not searcher.live.bridge.labels:
        attach_bridge(searcher, args.label_kind or "probe")
    bridges = {False: searcher.live.bridge.without_labels(), True: searcher.live.bridge}
    queries = Queries.encode(searcher, args.tasks, args.split)  # once: settings only move text queries
    values = [g for g in queries.groups if g.name.startswith("attr2img")]

    def scores() -> dict[str, np.ndarray]:
        return {**queries.scores(searcher), **split_only_scores(searcher, queries, values, args.split)}

    searcher.cfg.bridge = 0.0
    grid = {NONE: scores()}
    pulls = [(None, None), *product(args.label_weights, args.label_exactness)]  # (None, None): no label supports
    for setting in (items + pull for items in product(args.weights, args.depths, args.temperatures) for pull in pulls):
        set_bridge(searcher, setting, bridges)
        grid[setting] = scores()
        print_progress(" ".join(f"{n}={v}" for n, v in zip(NAMES, setting)), grid[setting])
    rows = paired_rows(grid, NONE, NAMES)
    print(f"\n{args.split} split, {args.index}; {len(bridges[True])} supports, {bridges[True].labels} of them labels; "
          f"hubness {searcher.cfg.hubness}, feedback {searcher.cfg.feedback}; differences are paired against no "
          f"bridge (first row)\n")
    print_table(rows, NAMES, extra=SPLIT_KEYS)
    with_labels = label_rows(grid)
    if with_labels:
        print("\nthe label supports against the same setting without them (paired)\n")
        print_table(with_labels, NAMES, extra=SPLIT_KEYS)
    seen = seen_title_split(searcher, queries, grid) if "title2img" in args.tasks else None
    timing = None
    if args.latency:
        titles = [searcher.catalogue.titles[p] for p in split_indices(searcher.catalogue.ids)["val"][:args.latency]]
        first = (args.weights[0], args.depths[0], args.temperatures[0], args.label_weights[0],
                 args.label_exactness[0])
        none, bridged = latency(searcher, titles, first, bridges, args.repeats)
        timing = {"queries": len(titles), "repeats": args.repeats, "p50_ms_none": none, "p50_ms_bridge": bridged}
        print(f"\none-query text search, photo channel, {len(titles)} validation titles, median of {args.repeats} "
              f"passes: p50 {none:.2f} ms without the bridge, {bridged:.2f} ms with {first}")
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"bridge-{args.split}.json"
    path.write_text(json.dumps({"index": str(args.index), "split": args.split, "hubness": searcher.cfg.hubness,
                                "feedback": searcher.cfg.feedback, "supports": len(bridges[True]),
                                "labels": bridges[True].labels, "label_kind": args.label_kind,
                                "rows": rows, "labels_against_items_only": with_labels, "seen_titles": seen,
                                "latency": timing}, indent=2) + "\n")
    print(f"\nwritten to {path}")
    return 0


def label_rows(grid: dict) -> list[dict]:
    """Each setting with label supports, paired against the same setting without them."""
    return [paired_rows({setting[:3] + (None, None): grid[setting[:3] + (None, None)], setting: found},
                        setting[:3] + (None, None), NAMES)[1]
            for setting, found in grid.items() if setting != NONE and setting[3] is not None]


def seen_title_split(searcher, queries: Queries, grid: dict) -> list[dict]:
    """title2img's paired difference of each setting against no bridge, on the queries whose exact title is a
    training item's title and on the rest; printed, and returned for the output file."""
    group = next(g for g in queries.groups if any(j.key == "title2img" for j in g.judgements))
    training = {searcher.catalogue.titles[p] for p in split_indices(searcher.catalogue.ids)["train"]}
    seen = np.array([text in training for text in group.texts])
    base = grid[NONE]["title2img/R@10"]
    print(f"\ntitle2img R@10 by whether the query's exact title is a training title ({int(seen.sum())} of "
          f"{len(seen)} are); paired against no bridge\n")
    print("| " + " | ".join(NAMES) + " | title seen in training | title not seen |\n|" + "---|" * (len(NAMES) + 2))
    out = []
    for setting, found in list(grid.items())[1:]:
        row = dict(zip(NAMES, setting))
        for name, mask in (("seen", seen), ("unseen", ~seen)):
            row[name] = _subset(found["title2img/R@10"][mask], base[mask])
        out.append(row)
        print("| " + " | ".join(str(v) for v in setting) + " | " + " | ".join(
            "no queries" if row[n] is None else f"{row[n]['base']:.3f} → {row[n]['mean']:.3f} ({row[n]['diff']:+.3f} "
            f"[{row[n]['low']:+.3f}, {row[n]['high']:+.3f}])" for n in ("seen", "unseen")) + " |")
    return out


def _subset(values: np.ndarray, base: np.ndarray) -> dict | None:
    """One subset's figures with and without the bridge, and their paired difference (None: no such queries)."""
    if not len(values):
        return None
    diff = paired_bootstrap_diff(values, base)
    return {"n": len(values), "mean": float(values.mean()), "base": float(base.mean()), "diff": diff.mean,
            "low": diff.low, "high": diff.high}


def split_only_scores(searcher, queries: Queries, groups: list[QueryGroup], split: str) -> dict[str, np.ndarray]:
    """attr2img P@10 on the ``split``'s items only: each ranking read to ``SPLIT_DEPTH`` and cut to them, against
    each value's items of the split (values with none there are left out)."""
    ids = searcher.catalogue.ids
    own = {ids[p] for p in split_indices(ids)[split]}
    out = {}
    for group in groups:
        vectors, shares = queries.encoded[queries.groups.index(group)]
        judgement = group.judgements[0]
        relevant = [frozenset(r & own) for r in judgement.relevant]
        keep = [j for j, r in enumerate(relevant) if r]
        hits = searcher.search_batch(vectors[:, keep], k=SPLIT_DEPTH, shares=np.asarray(shares)[keep])
        rankings = [[hit.id for hit in ranked if hit.id in own][:10] for ranked in hits]
        cut = QueryGroup(group.name, [group.labels[j] for j in keep], [group.texts[j] for j in keep],
                         [None] * len(keep), [1.0] * len(keep),
                         [Judgement(judgement.key, [relevant[j] for j in keep], ("P@10",))])
        out.update({f"{key} split-only": v for key, v in score_group(cut, rankings).items()})
    return out


def attach_bridge(searcher, label_kind: str = "probe") -> None:
    """Give an index built before the bridge (or before its label supports) the one `enclip index` builds now,
    from its hubness part's title bank, with label supports of ``label_kind``."""
    hubness = searcher.live.hubness
    if hubness is None:
        raise SystemExit(f"{searcher.path} has neither a title bridge nor a hubness title bank to build one from; "
                         "rebuild it with `enclip index`")
    vectors = searcher.index.reconstruct(np.arange(len(searcher.catalogue.ids)))
    with tempfile.TemporaryDirectory() as work:
        searcher.live.bridge = title_bridge(
            searcher.catalogue, vectors, hubness.bank, hubness.titles, searcher.members,
            label_texts=lambda values: encode_distinct(searcher.model, np.asarray(values, dtype=str), Path(work)),
            label_kind=label_kind)


def set_bridge(searcher, setting: tuple, bridges: dict) -> None:
    """Apply a grid setting: weight, depth, temperature, and the label weight and exactness (None: no label
    supports)."""
    searcher.cfg.bridge, searcher.cfg.bridge_depth, searcher.cfg.bridge_temperature, labels, exactness = setting
    searcher.live.bridge = bridges[labels is not None]
    if labels is not None:
        searcher.cfg.bridge_labels, searcher.cfg.bridge_label_exactness = labels, exactness


def latency(searcher, titles: list[str], setting: tuple, bridges: dict, repeats: int) -> tuple[float, float]:
    """p50 ms of one-query text searches without the bridge and with ``setting``."""
    none, bridged = alternating_p50(searcher, titles, [lambda: set_bridge(searcher, (0.0, *setting[1:]), bridges),
                                                       lambda: set_bridge(searcher, setting, bridges)], repeats)
    return none, bridged


if __name__ == "__main__":
    raise SystemExit(main())
