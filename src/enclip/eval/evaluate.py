"""``enclip eval``: run the protocol's tasks (or a user's queries file) on a built index and report metrics.

Queries are encoded in batches through the index's own model and ranked with
:meth:`enclip.search.Searcher.search_batch`, which gives each query the hits ``enclip search`` and the server return
for it, fusion rule included. Every figure gets a 95% bootstrap interval over queries; ``metrics.json`` holds one
flat key per figure (``"title2img/R@10"``, ``"img2img_lq/blur/3/R@1"``) plus ``"_meta"``, and the returned dict
also carries the per-query values so two systems can be compared with a paired bootstrap.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from enclip.artifacts import write_json
from enclip.data.degrade import DEGRADATIONS, MAX_SEVERITY
from enclip.data.split import split_indices
from enclip.errors import EnclipError
from enclip.eval.bootstrap import bootstrap_ci
from enclip.eval.evaluator import RetrievalEvaluator
from enclip.eval.metrics import parse_metric
from enclip.eval.tasks import (
    CUSTOM,
    TASKS,
    BadLine,
    QueryGroup,
    attribute_groups,
    attrs_group,
    both_groups,
    check_degradations,
    custom_group,
    lq_groups,
    pool_both,
    sample_positions,
    title_group,
)
from enclip.fusion import check_rule
from enclip.search.query import QueryEncoder, text_shares

log = logging.getLogger(__name__)


@dataclass
class EvalCfg:
    tasks: tuple[str, ...] = TASKS  # protocol tasks to run (ignored when queries_file is given)
    max_queries: int | None = None  # use only the first N test items, in catalogue order (None = all)
    split: str = "test"  # items whose queries are asked: "test" for reporting, "val" for choosing settings
    queries_file: str | None = None  # JSONL of your own queries; when set, only the "custom" task runs
    fusion: str | None = None  # fusion rule to rank with (None = the index's default)
    hubness: float | None = None  # weight of the items' hubness penalty (None = SearchCfg's default)
    feedback: float | None = None  # weight of pseudo-relevance feedback in text queries (None = SearchCfg's default)
    bridge: float | None = None  # weight of the title bridge in text queries (None = SearchCfg's default)
    bridge_labels: float | None = None  # weight of its label supports' photos (None = SearchCfg's default)
    lq_queries: int = 500  # test items sampled (seeded) as photo queries for img2img_lq and both2img
    severities: tuple[int, ...] = (1, 2, 3, 4, 5)  # degradation severities of img2img_lq and both2img
    degradations: tuple[str, ...] = DEGRADATIONS  # degradations used by img2img_lq and both2img
    both_severity: int = 3  # severity whose both2img figures, pooled over degradations, make the headline both2img
    both_weight: float = 0.5  # text's share of the score in both2img
    batch_size: int = 256  # queries encoded per model call
    n_resamples: int = 1000  # bootstrap resamples per figure
    seed: int = 0  # seed of the photo sample, the per-item degradations and the bootstrap

    def __post_init__(self) -> None:
        self.tasks = tuple(self.tasks)
        unknown = [t for t in self.tasks if t not in TASKS]
        if unknown or not (self.tasks or self.queries_file):
            raise EnclipError(f"unknown evaluation tasks {unknown}; choose from {', '.join(TASKS)}")
        if self.max_queries is not None and self.max_queries < 1:
            raise EnclipError(f"max_queries must be at least 1, got {self.max_queries}")
        if self.lq_queries < 1 or self.batch_size < 1:
            raise EnclipError("lq_queries and batch_size must be at least 1")
        self.severities = tuple(int(s) for s in self.severities)
        if not self.severities or any(not 1 <= s <= MAX_SEVERITY for s in (*self.severities, self.both_severity)):
            raise EnclipError(f"severities must lie in 1..{MAX_SEVERITY}, got {self.severities} / {self.both_severity}")
        self.degradations = check_degradations(tuple(self.degradations))
        if not 0.0 <= self.both_weight <= 1.0:
            raise EnclipError(f"both_weight is the text's share and must lie in [0, 1], got {self.both_weight}")
        if self.fusion is not None:
            check_rule(self.fusion)

    def rescoring(self) -> dict:
        """The search settings this evaluation sets for text queries (``load_searcher`` keywords); those left at
        None keep the search's defaults."""
        return {name: value for name, value in (("hubness", self.hubness), ("feedback", self.feedback),
                                                ("bridge", self.bridge), ("bridge_labels", self.bridge_labels))
                if value is not None}


# -- building ----------------------------------------------------------------------------------------------------
def build_groups(catalogue, cfg: EvalCfg) -> tuple[list[QueryGroup], list[BadLine]]:
    """The query groups ``cfg`` asks for, from the catalogue's test items (or the user's queries file)."""
    if cfg.queries_file:
        group, bad = custom_group(cfg.queries_file, catalogue, cfg.max_queries)
        return [group], bad
    test = split_indices(catalogue.ids)[cfg.split][: cfg.max_queries]
    if not len(test):
        raise EnclipError("the catalogue has no test items (ids ending in 0); the protocol's tasks need some")
    groups = []
    if {"title2img", "title2img_dup"} & set(cfg.tasks):
        groups.append(title_group(catalogue, test, cfg.tasks))
    if "attr2img" in cfg.tasks:
        groups.extend(attribute_groups(catalogue))
    if "attrs2img" in cfg.tasks:
        shopper = attrs_group(catalogue, split_indices(catalogue.ids)[cfg.split], seed=cfg.seed)
        groups.extend([shopper] if len(shopper) else [])  # a catalogue without attribute columns has none
    photos = sample_positions(test, cfg.lq_queries, cfg.seed)
    if "img2img_lq" in cfg.tasks:
        groups.extend(lq_groups(catalogue, photos, cfg.degradations, cfg.severities, cfg.seed))
    if "both2img" in cfg.tasks:
        groups.extend(both_groups(catalogue, photos, cfg.degradations, both_severities(cfg), cfg.both_weight, cfg.seed))
    return groups, []


def both_severities(cfg: EvalCfg) -> tuple[int, ...]:
    """The severities both2img is measured at: the sweep's, and the headline's."""
    return tuple(sorted({*cfg.severities, cfg.both_severity}))


# -- encoding and ranking ----------------------------------------------------------------------------------------
def encode_rows(encoder: QueryEncoder, group: QueryGroup, rows: range) -> np.ndarray:
    """(K, B, d) query vectors for ``rows`` of ``group``, mixed exactly as ``enclip search`` mixes them."""
    images = [group.images[r]() if group.images[r] is not None else None for r in rows]
    return encoder.encode([group.texts[r] for r in rows], images, [group.weights[r] for r in rows])


def rank_group(searcher, group: QueryGroup, k: int, cfg: EvalCfg, bar=None) -> list[list[str]]:
    """The top-``k`` ranked ids of every query of ``group``, in query order."""
    rankings: list[list[str]] = []
    for start in range(0, len(group), cfg.batch_size):
        rows = range(start, min(start + cfg.batch_size, len(group)))
        vectors = encode_rows(searcher.encoder, group, rows)
        shares = text_shares([group.texts[r] for r in rows], [group.images[r] for r in rows],
                             [group.weights[r] for r in rows])
        rankings += [[hit.id for hit in hits]
                     for hits in searcher.search_batch(vectors, k=k, fusion=cfg.fusion, shares=shares)]
        if bar is not None:
            bar.update(len(rows))
    return rankings


def depth_of(group: QueryGroup) -> int:
    return max(parse_metric(name)[1] for judgement in group.judgements for name in judgement.metrics)


def score_group(group: QueryGroup, rankings: list[list[str]]) -> dict[str, np.ndarray]:
    """Per-query metric values of every judgement of ``group``, under flat keys such as ``"title2img/R@10"``."""
    scores = {}
    for judgement in group.judgements:
        values = RetrievalEvaluator(judgement.relevant, judgement.metrics, judgement.metrics[0]).per_query(rankings)
        scores.update({f"{judgement.key}/{name}": array for name, array in values.items()})
    return scores


def summarise(per_query: dict[str, np.ndarray], n_resamples: int, seed: int) -> dict[str, dict]:
    """Mean and 95% bootstrap interval of each figure."""
    return {key: bootstrap_ci(values, n_resamples=n_resamples, seed=seed).to_dict()
            for key, values in per_query.items()}


# -- reporting ---------------------------------------------------------------------------------------------------
def _split_key(key: str) -> tuple[str, str]:
    prefix, metric = key.rsplit("/", 1)
    return prefix, metric


def format_table(metrics: dict[str, dict]) -> str:
    """A readable table: one row per task (or attribute / degradation), one column per metric."""
    rows: dict[str, dict[str, dict]] = {}
    for key, value in metrics.items():
        if not key.startswith("_"):
            prefix, metric = _split_key(key)
            rows.setdefault(prefix, {})[metric] = value
    width = max([len(p) for p in rows] + [4]) + 2
    lines, header = [], None
    for prefix, figures in rows.items():
        names = list(figures)
        if names != header:
            header = names
            lines.append(f"\n{'task':<{width}}{'n':>6}  " + "".join(f"{n:<22}" for n in names))
        n = next(iter(figures.values()))["n"]
        cells = "".join(f"{f['mean']:.3f} [{f['low']:.3f},{f['high']:.3f}]".ljust(22) for f in figures.values())
        lines.append(f"{prefix:<{width}}{n:>6}  {cells}")
    return "\n".join(lines).lstrip("\n")


def _meta(searcher, index_dir: Path, cfg: EvalCfg, labels: dict[str, list[str]], bad: list[BadLine],
          seconds: float) -> dict:
    manifest = getattr(searcher, "manifest", None) or {}
    return {
        "index": str(index_dir),
        "data_fingerprint": manifest.get("data_fingerprint"),
        "model_fingerprint": manifest.get("model_fingerprint"),
        "tasks": [CUSTOM] if cfg.queries_file else list(cfg.tasks),
        "queries": {key: len(values) for key, values in labels.items()},
        "fusion": cfg.fusion or getattr(searcher, "default_fusion", None),
        "rescoring": searcher.cfg.rescoring() if hasattr(getattr(searcher, "cfg", None), "rescoring") else None,
        "seconds": round(seconds, 2),
        "cfg": asdict(cfg),
        "bad_lines": {"count": len(bad), "first": [asdict(b) for b in bad[:10]]},
    }


def _output_path(index_dir: Path, out: str | Path | None) -> Path:
    if out is None:
        return index_dir / "metrics.json"
    out = Path(out)
    if out.suffix == ".json":
        out.parent.mkdir(parents=True, exist_ok=True)
        return out
    out.mkdir(parents=True, exist_ok=True)
    return out / "metrics.json"


# -- entry point -------------------------------------------------------------------------------------------------
def run_groups(searcher, groups: list[QueryGroup], cfg: EvalCfg) -> tuple[dict[str, np.ndarray], dict]:
    """Rank and score every group; returns per-query values by flat key and the query labels by task key."""
    per_query, labels = {}, {}
    with tqdm(total=sum(len(g) for g in groups), desc="evaluate", unit="query", leave=False) as bar:
        for group in groups:
            log.debug("evaluating %s (%d queries)", group.name, len(group))
            rankings = rank_group(searcher, group, depth_of(group), cfg, bar)
            per_query.update(score_group(group, rankings))
            labels.update({j.key: list(group.labels) for j in group.judgements})
    return per_query, labels


def evaluate_index(index_dir: str | Path | None, cfg: EvalCfg | None = None, out: str | Path | None = None,
                   searcher=None) -> dict:
    """Evaluate an index, print a table, write ``metrics.json`` and return its content plus per-query values.

    The returned dict holds every flat figure key (``{"mean", "low", "high", "n"}``), ``"_meta"``, and, not
    written to disk, ``"per_query"`` (flat key → per-query values, in a fixed query order) and ``"query_labels"``
    (task key → what each query was) for paired comparisons between systems. Pass ``searcher`` to reuse one
    already loaded.
    """
    from enclip.search import load_searcher

    cfg = cfg or EvalCfg()
    started = time.perf_counter()
    if searcher is None:
        if index_dir is None:
            raise EnclipError("evaluate_index needs an index directory or a loaded searcher")
        searcher = load_searcher(index_dir, fusion=cfg.fusion, **cfg.rescoring())
    index_dir = Path(index_dir if index_dir is not None else searcher.path)
    groups, bad = build_groups(searcher.catalogue, cfg)
    per_query, labels = run_groups(searcher, groups, cfg)
    if "both2img" in cfg.tasks and not cfg.queries_file:
        pool_both(per_query, labels, cfg.degradations, cfg.both_severity)
    metrics = summarise(per_query, cfg.n_resamples, cfg.seed)
    metrics["_meta"] = _meta(searcher, index_dir, cfg, labels, bad, time.perf_counter() - started)
    path = _output_path(index_dir, out)
    write_json(path, metrics)
    print(format_table(metrics))
    if bad:
        print(f"\n{len(bad)} bad query lines skipped (first: "
              + ", ".join(f"line {b.line}: {b.reason}" for b in bad[:5]) + ")")
    print(f"\nmetrics written to {path}")
    return {**metrics, "per_query": per_query, "query_labels": labels}
