"""Hybrid product search against each channel alone, on queries that are not copies of item text.

    python bench/hybrid.py --index runs/demo/index [--out bench/out/hybrid] [--val 300] [--test 1000] [--hubness W]

Query sets (seeded, from validation items to fit and test items to report; relevant items from the catalogue):
- ``attrs2img``: shopper phrasings of attribute combinations ("navy blue shirts for men"): every item matching
  all the named attributes is relevant; P@10 and nDCG@10.
- ``synonyms``: words shoppers use that the catalogue does not ("sneakers", "trainers", "tee", "purse", "specs",
  "shades", "jumper"), with colour and who: items of the meant types (and that colour / gender); nDCG@10.
- ``paraphrase``: test titles with the brand dropped, the words reordered, or one word misspelt: the items with
  that exact title are relevant; R@10.

Systems: photo-only (the image channel: what enclip searched before hybrid), keyword-only (BM25), item-text-only,
hybrid with equal weights (RRF), hybrid as search runs it by default (``HybridCfg()``), and hybrid with channel
weights, fusion rule and depth fitted on validation.
Every query's channel candidates are computed once (``Searcher.channel_candidates``, depth 100) and each system is
a fusion of them, exactly as ``Searcher.search`` fuses (smaller depths keep each channel's top-d only). Also
prints text-query latency p50 (median of repeats) for photo-only and all three channels in the same run.
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from enclip.data.split import split_indices  # noqa: E402
from enclip.eval.bootstrap import bootstrap_ci, paired_bootstrap_diff  # noqa: E402
from enclip.eval.metrics import compute_metrics  # noqa: E402
from enclip.eval.shopper_queries import build_shopper_queries  # noqa: E402
from enclip.search import load_searcher  # noqa: E402
from enclip.search.channels import Candidates, HybridCfg  # noqa: E402

SYNONYMS = {  # shopper word -> catalogue article types it means
    "sneakers": ("Casual Shoes", "Sports Shoes"), "trainers": ("Sports Shoes", "Casual Shoes"),
    "tee": ("Tshirts",), "purse": ("Handbags", "Clutches"), "specs": ("Sunglasses",),
    "shades": ("Sunglasses",), "jumper": ("Sweaters",),
}
WHO = {"Men": "men", "Women": "women", "Boys": "boys", "Girls": "girls"}
METRICS = {"attrs2img": ("P@10", "nDCG@10"), "synonyms": ("nDCG@10",), "paraphrase": ("R@10",)}
PRIMARY = {"attrs2img": "nDCG@10", "synonyms": "nDCG@10", "paraphrase": "R@10"}
DEPTH = 100


@dataclass
class Query:
    text: str
    relevant: frozenset[str]


def synonym_queries(catalogue, positions: np.ndarray, n: int, seed: int) -> list[Query]:
    """'{colour} {word} for {who}' and shorter forms for items of the types a synonym means."""
    types = np.asarray(catalogue.attributes["articleType"], dtype=str)
    colours = np.asarray(catalogue.attributes["baseColour"], dtype=str)
    genders = np.asarray(catalogue.attributes["gender"], dtype=str)
    rng = np.random.default_rng([seed, 10])
    by_word = {word: [p for p in positions if types[p] in meant] for word, meant in SYNONYMS.items()}
    queries, asked = [], set()
    for _ in range(20 * n):
        if len(queries) >= n:
            break
        word = list(SYNONYMS)[int(rng.integers(len(SYNONYMS)))]
        if not by_word[word]:
            continue
        p = by_word[word][int(rng.integers(len(by_word[word])))]
        form = int(rng.integers(3))
        colour = colours[p].lower() if form in (0, 1) and colours[p] not in ("", "NA") else None
        who = WHO.get(genders[p]) if form in (0, 2) else None
        text = " ".join(filter(None, [colour, word, f"for {who}" if who else None]))
        if text in asked:
            continue
        asked.add(text)
        keep = np.isin(types, SYNONYMS[word])
        keep &= (colours == colours[p]) if colour else True
        keep &= (genders == genders[p]) if who else True
        queries.append(Query(text, frozenset(catalogue.ids[i] for i in np.flatnonzero(keep))))
    return queries


def damaged_titles(catalogue, positions: np.ndarray, n: int, seed: int) -> list[Query]:
    """Titles with the brand (first word) dropped, the words reordered, or one word misspelt."""
    rng = np.random.default_rng([seed, 11])
    same_title: dict[str, set[str]] = {}
    for item_id, title in zip(catalogue.ids, catalogue.titles):
        same_title.setdefault(title, set()).add(item_id)
    queries = []
    for p in rng.permutation(positions)[:n]:
        title = catalogue.titles[int(p)]
        words = title.split()
        if len(words) < 3:
            continue
        damage = int(rng.integers(3))
        if damage == 0:
            text = " ".join(words[1:])
        elif damage == 1:
            text = " ".join(words[i] for i in rng.permutation(len(words)))
        else:
            long = [i for i, w in enumerate(words) if len(w) >= 4 and w.isalpha()]
            if not long:
                continue
            i = long[int(rng.integers(len(long)))]
            j = 1 + int(rng.integers(len(words[i]) - 2))
            word = words[i]
            words[i] = word[:j] + word[j + 1] + word[j] + word[j + 2:]
            text = " ".join(words)
        queries.append(Query(text, frozenset(same_title[title])))
    return queries


def query_sets(catalogue, split: str, n: int, seed: int) -> dict[str, list[Query]]:
    positions = split_indices(catalogue.ids)[split]
    shopper = [Query(q.text, q.relevant) for q in build_shopper_queries(catalogue, positions, n, seed)]
    return {"attrs2img": shopper, "synonyms": synonym_queries(catalogue, positions, n, seed),
            "paraphrase": damaged_titles(catalogue, positions, n, seed)}


def at_depth(c: Candidates, depth: int) -> Candidates:
    """The candidates a search with a smaller depth would have: each channel's top ``depth``, re-scored alike."""
    found = {channel: positions[:depth] for channel, positions in c.found.items()}
    keep = np.isin(c.union, np.concatenate(list(found.values())))
    return Candidates(c.union[keep], found, {ch: s[keep] for ch, s in c.scores.items()}, c.member_scores[:, :, keep])


def ranking(searcher, c: Candidates, system) -> list[str]:
    """Top-10 ids of one system: a channel alone (its own list) or a hybrid config."""
    if isinstance(system, str):
        return [searcher.catalogue.ids[int(p)] for p in c.found[system][:10]]
    sub = at_depth(c, system.depth)
    fused = sub.fused(system)
    return [searcher.catalogue.ids[int(sub.union[o])] for o in np.argsort(-fused, kind="stable")[:10]]


def evaluate(searcher, candidates: dict[str, list[Candidates]], sets: dict[str, list[Query]],
             system) -> dict[str, dict[str, np.ndarray]]:
    out = {}
    for name, queries in sets.items():
        ranked = [ranking(searcher, c, system) for c in candidates[name]]
        out[name] = compute_metrics(ranked, [q.relevant for q in queries], METRICS[name])
    return out


def objective(per_query: dict[str, dict[str, np.ndarray]]) -> float:
    return float(np.mean([per_query[name][PRIMARY[name]].mean() for name in per_query]))


def fit(searcher, candidates, sets) -> tuple[HybridCfg, float, list]:
    """Grid search on validation: channel weights, fusion rule and depth."""
    trials = []
    grid = itertools.product((0.5, 1.0, 2.0), (0.0, 0.5, 1.0, 2.0), (0.0, 0.5, 1.0, 2.0), ("rrf", "sum"), (30, 100))
    for w_image, w_text, w_keyword, rule, depth in grid:
        cfg = HybridCfg(weights={"image": w_image, "text": w_text, "keyword": w_keyword}, fusion=rule, depth=depth)
        trials.append((objective(evaluate(searcher, candidates, sets, cfg)), cfg))
    best_score, best = max(trials, key=lambda t: t[0])
    return best, best_score, trials


def latency(searcher, texts: list[str], channels, repeats: int = 3) -> float:
    medians = []
    for _ in range(repeats):
        times = []
        for text in texts:
            started = time.perf_counter()
            searcher.search(text=text, k=10, channels=channels)
            times.append(1000 * (time.perf_counter() - started))
        medians.append(statistics.median(times))
    return statistics.median(medians)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--index", required=True, type=Path)
    parser.add_argument("--out", type=Path, default=Path("bench/out/hybrid"))
    parser.add_argument("--val", type=int, default=300, help="validation queries per set (fitting)")
    parser.add_argument("--test", type=int, default=1000, help="test queries per set (reporting)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--hubness", type=float, help="weight of the photo channel's hubness penalty (default: "
                        "SearchCfg's; 0: plain cosines)")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    searcher = load_searcher(args.index, **({} if args.hubness is None else {"hubness": args.hubness}))
    catalogue = searcher.catalogue
    sets = {split: query_sets(catalogue, split, n, args.seed) for split, n in (("val", args.val), ("test", args.test))}
    started = time.perf_counter()
    candidates = {split: {name: [searcher.channel_candidates(q.text, depth=DEPTH) for q in queries]
                          for name, queries in by_name.items()} for split, by_name in sets.items()}
    print(f"channel candidates for {sum(len(q) for s in sets.values() for q in s.values())} queries in "
          f"{time.perf_counter() - started:.0f} s")
    best, best_score, trials = fit(searcher, candidates["val"], sets["val"])
    equal = HybridCfg(weights={"image": 1.0, "text": 1.0, "keyword": 1.0}, fusion="rrf", depth=DEPTH)
    default = HybridCfg()  # what search uses unless told otherwise
    print(f"fitted on validation: {best} (objective {best_score:.3f}; equal-weight rrf "
          f"{objective(evaluate(searcher, candidates['val'], sets['val'], equal)):.3f}; the default "
          f"{objective(evaluate(searcher, candidates['val'], sets['val'], default)):.3f})")
    systems = {"photo-only": "image", "keyword-only": "keyword", "item-text-only": "text",
               "hybrid (equal rrf)": equal, "hybrid (default)": default, "hybrid (fitted)": best}
    results = {name: evaluate(searcher, candidates["test"], sets["test"], system) for name, system in systems.items()}
    report = table(results, sets["test"])
    texts = [q.text for q in sets["test"]["paraphrase"][:200]]
    searcher.cfg.hybrid = replace(best)
    timing = {"photo-only": latency(searcher, texts, "image"),
              "hybrid (all three channels)": latency(searcher, texts, None)}
    report += ("\n\nText query latency p50 (ms, median of 3 repeats over 200 test queries, in-process, "
               f"{len(catalogue)} items): " + ", ".join(f"{k} {v:.1f}" for k, v in timing.items()))
    print(report)
    (args.out / "report.md").write_text(report + "\n")
    np.savez(args.out / "per_query.npz", **{f"{system}/{name}/{metric}": values for system, by in results.items()
                                            for name, per in by.items() for metric, values in per.items()})
    (args.out / "results.json").write_text(json.dumps({
        "fitted": {"weights": best.weights, "fusion": best.fusion, "depth": best.depth, "objective": best_score},
        "latency_ms": timing, "queries": {s: {n: len(q) for n, q in by.items()} for s, by in sets.items()},
        "figures": {system: {name: {m: float(v.mean()) for m, v in per.items()} for name, per in by.items()}
                    for system, by in results.items()}}, indent=2))
    return 0


def table(results: dict, sets: dict[str, list[Query]]) -> str:
    lines = ["| system | " + " | ".join(f"{name} {metric} (n={len(sets[name])})" for name in METRICS
                                       for metric in METRICS[name]) + " |",
             "|---|" + "---|" * sum(len(m) for m in METRICS.values())]
    for system, by_name in results.items():
        cells = []
        for name in METRICS:
            for metric in METRICS[name]:
                ci = bootstrap_ci(by_name[name][metric], n_resamples=1000, seed=0)
                cells.append(f"{ci.mean:.3f} [{ci.low:.3f}, {ci.high:.3f}]")
        lines.append(f"| {system} | " + " | ".join(cells) + " |")
    lines.append("\nPaired differences, hybrid (fitted) minus each channel alone [95% paired bootstrap]:")
    for baseline in ("photo-only", "keyword-only", "item-text-only"):
        parts = []
        for name in METRICS:
            metric = PRIMARY[name]
            d = paired_bootstrap_diff(results["hybrid (fitted)"][name][metric], results[baseline][name][metric])
            parts.append(f"{name} {metric} {d.mean:+.3f} [{d.low:+.3f}, {d.high:+.3f}]")
        lines.append(f"- vs {baseline}: " + "; ".join(parts))
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
