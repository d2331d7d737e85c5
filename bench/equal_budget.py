"""Single model against ENCLIP ensemble variants at equal training wall-clock, scored on test with paired intervals.

Every system trains the same heads for the same number of epochs in total (one member's epoch costs what a single
model's does, as they share the trunk cache), so equal epochs is equal training time; the measured seconds are
printed beside each system to check it. With ``--time-budget`` every system gets the same wall-clock time instead,
and each plans its own steps to fit it (`enclip train --time-budget`). Variants:

- ``single``: one model, E epochs (the best validation epoch is kept);
- ``seeds``: K members of E/K epochs each, different seeds and projections;
- ``snapshot``: one run of E epochs in K learning-rate cycles, each cycle's end a member;
- ``soup``: the snapshot members' weights averaged into one model (one model's query cost).

``--systems single snapshot`` trains only those (``single`` always trains: it is the baseline).

Each is indexed over the whole catalogue (photo channel) and scored on every test title (``title2img``), on
degraded test photos plus their titles (``both2img`` at severity 3) and, with ``--lq``, on degraded photos alone
(``img2img_lq`` at severities 1, 3 and 5); differences against ``single`` come with 95% paired bootstrap intervals.
``--flags "--data-fraction 0.05"`` with another ``--out`` (and ``--feature-cache`` of the full run, whose trunk
outputs it reuses) makes a limited-data point.

Query p50 is timed in this process (alternating systems, 3 passes over 200 validation titles). Finished trainings,
indexes and evaluations are reused, so an interrupted run resumes.

    python bench/equal_budget.py --out bench/out/equal --trunk-cache runs/trunk-cache --epochs 6 --members 3
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from functools import partial
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.quality import cached_evaluation, compare  # noqa: E402
from bench.recipes import open_results, run_recipe  # noqa: E402
from enclip.cli import SHARED_CATALOGUE  # noqa: E402
from enclip.data.catalogue import load_catalogue  # noqa: E402
from enclip.data.split import split_indices  # noqa: E402
from enclip.eval.evaluate import EvalCfg, evaluate_index, summarise  # noqa: E402
from enclip.eval.tasks import pool_degradations  # noqa: E402
from enclip.indexing import IndexBuildCfg, build_index  # noqa: E402
from enclip.models.soup import soup  # noqa: E402
from enclip.search import SearchCfg, load_searcher  # noqa: E402

KEYS = ("title2img/R@10", "both2img/R@10")
LQ_KEYS = tuple(f"img2img_lq/{severity}/R@10" for severity in (1, 3, 5))  # pooled over degradations


def systems(epochs: int, members: int, flags: str, budget: str | None = None,
            snapshot_flags: str = "") -> dict[str, str]:
    """Name -> `enclip train` flags, every one E epochs of training in total; or, with ``budget``, every one the same
    wall-clock time (`--time-budget`: each plans the most steps that fit, up to E epochs a member)."""
    if budget is not None:
        timed = f"{flags} --time-budget {budget} --epochs {epochs}"
        return {"single": timed, "seeds": f"{timed} --members {members} --strategy seeds",
                "snapshot": f"{timed} --members {members} --strategy snapshot {snapshot_flags}"}
    if epochs % members:
        raise SystemExit(f"--epochs {epochs} must be a multiple of --members {members} for equal budgets")
    return {"single": f"{flags} --epochs {epochs}",
            "seeds": f"{flags} --epochs {epochs // members} --members {members} --strategy seeds",
            "snapshot": f"{flags} --epochs {epochs} --members {members} --strategy snapshot {snapshot_flags}"}


LQ = EvalCfg(tasks=("img2img_lq",), severities=(1, 3, 5))


def with_pooled_lq(metrics: dict, lq: dict) -> dict:
    """``metrics`` plus ``img2img_lq/<severity>/R@10``: every degradation's photos at that severity, pooled."""
    per_query = {key: np.asarray(values) for key, values in lq["per_query"].items()}
    pooled = {key: pool_degradations(per_query, "img2img_lq", LQ.degradations, int(key.split("/")[1]), "R@10")
              for key in LQ_KEYS}
    return {**metrics, **summarise(pooled, LQ.n_resamples, LQ.seed),
            "per_query": {**metrics["per_query"], **pooled}}


def query_p50(indexes: dict[str, Path], titles: list[str], passes: int = 3) -> dict[str, float]:
    """Median ms per text search of each index, systems alternating within each pass."""
    searchers = {name: load_searcher(path) for name, path in indexes.items()}
    times: dict[str, list[float]] = {name: [] for name in searchers}
    for _ in range(passes):
        for title in titles:
            for name, searcher in searchers.items():
                started = time.perf_counter()
                searcher.search(text=title, k=10)
                times[name].append((time.perf_counter() - started) * 1000)
    return {name: float(np.median(values)) for name, values in times.items()}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(SHARED_CATALOGUE))
    parser.add_argument("--out", default="bench/out/equal")
    parser.add_argument("--trunk-cache", default="bench/out/trunk-cache", help="catalogue-wide clean trunk cache")
    parser.add_argument("--epochs", type=int, default=6, help="training epochs every system gets in total (with "
                        "--time-budget: the most a member may train)")
    parser.add_argument("--time-budget", help="give every system this wall-clock training time instead of equal "
                        "epochs (e.g. 15m; trunk caching counts, so share --feature-cache between systems)")
    parser.add_argument("--members", type=int, default=3)
    parser.add_argument("--flags", default="", help="further `enclip train` flags every system shares")
    parser.add_argument("--snapshot-flags", default="", help="further flags of the snapshot system only, e.g. "
                        "\"--cycle-shares 0.75 0.25 --restart-lr 0.25\"")
    parser.add_argument("--max-queries", type=int, help="test titles (default: all)")
    parser.add_argument("--feature-cache", type=Path, help="trunk-feature caches to share (default: OUT/feature-cache)")
    parser.add_argument("--systems", nargs="+", choices=("single", "seeds", "snapshot"),
                        default=("single", "seeds", "snapshot"), help="which to train (single always; soup with "
                        "snapshot)")
    parser.add_argument("--lq", action="store_true", help="also score degraded photos alone (img2img_lq, severities "
                        "1, 3, 5)")
    args = parser.parse_args(argv)
    out, results_path, results = open_results(args.out)
    catalogue = load_catalogue(args.data)[0]
    models = {}
    if args.time_budget and "cache" not in results:
        # the trunk caching every system reuses is done first (a run of a few steps on 0.2% of the items), so that the
        # first system's budget does not pay for what the others get for free
        results["cache"] = run_recipe(catalogue, "cache", f"{args.flags} --epochs 1 --data-fraction 0.002".split(),
                                      out, args.trunk_cache, args.feature_cache)
        results_path.write_text(json.dumps(results, indent=1))
    for name, flags in systems(args.epochs, args.members, args.flags, args.time_budget, args.snapshot_flags).items():
        if name != "single" and name not in args.systems:
            continue
        if name not in results:
            results[name] = run_recipe(catalogue, name, flags.split(), out, args.trunk_cache, args.feature_cache)
            results_path.write_text(json.dumps(results, indent=1))
        models[name] = out / "runs" / name
    if "snapshot" in models:
        models["soup"] = out / "runs" / "soup"
        if not (models["soup"] / "model.json").exists():
            soup(models["snapshot"], models["soup"])
        results.setdefault("soup", {"epochs_seconds": results["snapshot"]["epochs_seconds"],
                                     "steps": results["snapshot"].get("steps"), "flags": "enclip soup"})
    cfg = EvalCfg(tasks=("title2img", "both2img"), max_queries=args.max_queries, severities=(3,), both_severity=3)
    metrics, indexes = {}, {}
    for name, model in models.items():
        indexes[name] = out / "index" / name
        if not (indexes[name] / "index.json").exists():
            build_index(model, catalogue, indexes[name], IndexBuildCfg(trunk_cache=args.trunk_cache,
                                                                         channels=("image",)))
        path = indexes[name] / "test-metrics.json"
        metrics[name] = cached_evaluation(path, partial(evaluate_index, indexes[name], cfg, out=path),
                                          rescoring=SearchCfg().rescoring())
        if args.lq:  # photos alone: no re-scoring setting touches them, so an earlier evaluation stands
            path = indexes[name] / "lq-metrics.json"
            metrics[name] = with_pooled_lq(metrics[name], cached_evaluation(
                path, partial(evaluate_index, indexes[name], LQ, out=path)))
    titles = [catalogue.titles[p] for p in split_indices(catalogue.ids)["val"][:200]]
    p50 = query_p50(indexes, titles)
    keys = KEYS + (LQ_KEYS if args.lq else ())
    header = " | ".join(f"{key} [95%] | vs single [95% paired]" for key in keys)
    lines = [f"| system | steps | training s (epochs + validation) | {header} | query p50 ms |",
             "|---|---|---|" + "---|---|" * len(keys) + "---|"]
    for name in models:
        cells = []
        for key in keys:
            m = metrics[name][key]
            d = compare(metrics[name], metrics["single"], key)
            cells += [f"{m['mean']:.3f} [{m['low']:.3f}, {m['high']:.3f}]",
                      "–" if name == "single" else f"{d['mean']:+.3f} [{d['low']:+.3f}, {d['high']:+.3f}]"]
        seconds = results[name]["epochs_seconds"]
        lines.append(f"| {name} | {_steps(results[name])} | {seconds:.0f} | " + " | ".join(cells)
                     + f" | {p50[name]:.1f} |")
    print("\n".join(lines))
    (out / "table.md").write_text("\n".join(lines) + "\n")
    return 0


def _steps(result: dict) -> str:
    """The steps a system trained, one figure per run ('1146 + 1164 + 1265' for independent members); '?' for a
    run whose history did not count them."""
    steps = result.get("steps") or [None]
    return " + ".join("?" if count is None else str(count) for count in steps)


if __name__ == "__main__":
    raise SystemExit(main())
