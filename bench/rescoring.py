"""What the query-time re-scoring benchmarks (``bench/hubness.py``, ``bench/feedback.py``) share: the protocol's
queries of one split encoded once by an index's model, each setting's per-query figures on them, and a table of
every setting paired against a baseline setting.

Re-scoring settings only re-rank the candidates of queries already encoded, so a grid of them costs rankings only.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from enclip.eval.bootstrap import bootstrap_ci, paired_bootstrap_diff  # noqa: E402
from enclip.eval.evaluate import EvalCfg, build_groups, depth_of, encode_rows, score_group  # noqa: E402
from enclip.eval.tasks import QueryGroup, pool_both, pool_degradations  # noqa: E402
from enclip.search.query import text_shares  # noqa: E402

KEYS = ("title2img/R@10", "title2img/R@1", "attrs2img/P@10", "attr2img/articleType/P@10",
        "attr2img/subCategory/P@10", "attr2img/baseColour/P@10", "both2img/R@10", "img2img_lq/R@10")


def grid_parser(doc: str, out: str, tasks: list[str]) -> argparse.ArgumentParser:
    """A benchmark's parser with the options every grid has: the index, where to write, the split and the tasks."""
    parser = argparse.ArgumentParser(description=doc.split("\n")[0])
    parser.add_argument("--index", required=True, type=Path)
    parser.add_argument("--out", type=Path, default=Path(out))
    parser.add_argument("--split", default="val", choices=["val", "test"])
    parser.add_argument("--tasks", nargs="+", default=tasks)
    return parser


@dataclass
class Queries:
    """The protocol's queries of one split, encoded once as ``enclip eval`` encodes them (degraded photos at
    severity 3), with each query's text share."""

    cfg: EvalCfg
    groups: list[QueryGroup]
    encoded: list[tuple[np.ndarray, np.ndarray]]  # per group: (K, B, d) vectors, (B,) text shares

    @classmethod
    def encode(cls, searcher, tasks: list[str], split: str) -> Queries:
        cfg = EvalCfg(tasks=tuple(tasks), split=split, severities=(3,), both_severity=3)
        groups, _ = build_groups(searcher.catalogue, cfg)
        return cls(cfg, groups, [_encode_group(searcher, group, cfg.batch_size) for group in groups])

    def scores(self, searcher) -> dict[str, np.ndarray]:
        """Per-query figures (``KEYS``) of the searcher's current settings; the degraded-photo tasks pooled over
        degradations."""
        per_query, labels = {}, {}
        for group, (vectors, shares) in zip(self.groups, self.encoded):
            hits = searcher.search_batch(vectors, k=depth_of(group), shares=shares)
            per_query.update(score_group(group, [[hit.id for hit in ranked] for ranked in hits]))
            labels.update({j.key: list(group.labels) for j in group.judgements})
        if "both2img" in self.cfg.tasks:
            pool_both(per_query, labels, self.cfg.degradations, self.cfg.both_severity)
        if "img2img_lq" in self.cfg.tasks:
            per_query["img2img_lq/R@10"] = pool_degradations(per_query, "img2img_lq", self.cfg.degradations,
                                                             self.cfg.both_severity, "R@10")
        return {key: np.asarray(per_query[key]) for key in KEYS if key in per_query}


def _encode_group(searcher, group: QueryGroup, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
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


def print_table(rows: list[dict], names: tuple[str, ...], extra: tuple[str, ...] = ()) -> None:
    """The rows as a Markdown table: the settings, then every figure of ``KEYS`` (and of ``extra``) they have."""
    keys = [key for key in (*KEYS, *extra) if key in rows[0]]
    print("| " + " | ".join(names) + " | " + " | ".join(keys) + " |\n|" + "---|" * (len(names) + len(keys)))
    for row in rows:
        settings = ["–" if row[name] is None else str(row[name]) for name in names]
        print("| " + " | ".join(settings + [_cell(row[key]) for key in keys]) + " |")


def alternating_p50(searcher, titles: list[str], settings: list[Callable[[], None]], repeats: int) -> list[float]:
    """p50 ms of one-query text searches (photo channel, as ``enclip search`` runs them) under each of ``settings``
    (functions that set the searcher up), each the median of ``repeats`` passes; the settings alternate within each
    pass so that a machine's drift hits them alike."""
    from bench.speed import time_queries

    queries = [{"text": title} for title in titles]
    time_queries(searcher, queries[:20], 10)  # warm-up
    passes: list[list[float]] = [[] for _ in settings]
    for _ in range(repeats):
        for times, apply in zip(passes, settings):
            apply()
            times.append(float(np.percentile(time_queries(searcher, queries, 10).sum(axis=1), 50)))
    return [float(np.median(times)) for times in passes]


def print_progress(setting: str, scores: dict[str, np.ndarray]) -> None:
    print(f"{setting}: " + ", ".join(f"{key} {v.mean():.3f}" for key, v in scores.items()), flush=True)


def _figure(estimate) -> dict:
    return {"mean": estimate.mean, "low": estimate.low, "high": estimate.high}


def _cell(figure: dict) -> str:
    text = f"{figure['mean']:.3f}"
    if "diff" in figure:
        d = figure["diff"]
        text += f" ({d['mean']:+.3f} [{d['low']:+.3f}, {d['high']:+.3f}])"
    return text
