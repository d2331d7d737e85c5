"""Equal-budget runs that differ only in their training seeds, pooled: each system's paired difference against the
single model of its own run, averaged over the runs query by query.

    python bench/equal_budget.py --out bench/out/eq-s0 ... --flags="--seed 0"
    python bench/equal_budget.py --out bench/out/eq-s1 ... --flags="--seed 1"
    python bench/pooled.py bench/out/eq-s0 bench/out/eq-s1 [--lq]

One run's interval resamples queries only, so it says nothing of how much another training of the same systems
would differ. Pooling averages each query's difference over the runs' trainings before resampling queries; it is
still an interval over queries, drawn from a few trainings, so every run's own difference is printed beside it,
and so is an interval over trainings: the runs' differences as a sample of n trainings, mean ± t(0.975, n − 1) ·
sd / √n (wide for a few runs: with two, t is 12.7). Every run must be a finished `bench/equal_budget.py` output
scored on the same queries (checked).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import NoReturn

import numpy as np
from scipy import stats

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.equal_budget import KEYS, LQ_KEYS, with_pooled_lq  # noqa: E402
from bench.quality import cached_evaluation, compare  # noqa: E402
from enclip.eval.bootstrap import paired_bootstrap_diff  # noqa: E402

BASELINE = "single"
# what fixes the queries an evaluation scored (its seed draws the degraded photos); the index path may differ
QUERY_SETTINGS = ("split", "seed", "max_queries", "lq_queries", "tasks", "severities", "degradations", "both_weight",
                  "both_severity")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("runs", nargs="+", type=Path, help="finished bench/equal_budget.py --out folders")
    parser.add_argument("--lq", action="store_true", help="also pool the degraded photos alone (the runs used --lq)")
    args = parser.parse_args(argv)
    if len(args.runs) < 2:
        raise SystemExit("give two or more equal-budget runs to pool (one run's own table is in its table.md)")
    runs = [load_run(out, args.lq) for out in args.runs]
    check_same_queries(args.runs, runs)
    systems = [name for name in runs[0] if name != BASELINE and all(name in run for run in runs)]
    keys = KEYS + (LQ_KEYS if args.lq else ())
    names = "".join(f"{out}: single → system | − single | " for out in args.runs)
    print(f"| system | figure | {names}pooled over {len(runs)} runs: single → system, − single | "
          f"over the {len(runs)} trainings (t) |")
    print("|---|---|" + "---|---|" * len(runs) + "---|---|")
    for name in systems:
        for key in keys:
            cells, diffs = [], []
            for run in runs:
                level, d = run[name][key], compare(run[name], run[BASELINE], key)
                cells += [f"{run[BASELINE][key]['mean']:.3f} → {level['mean']:.3f}", _interval(d)]
                diffs.append(d["mean"])
            pooled = pool(runs, name, key)
            print(f"| {name} | {key} | " + " | ".join(cells) + f" | {pooled['single']:.3f} → {pooled['system']:.3f}, "
                  f"{_interval(pooled['diff'])} | {_interval(over_trainings(diffs))} |")
    return 0


def load_run(out: Path, lq: bool) -> dict[str, dict]:
    """System name -> its evaluated metrics with per-query values, as `bench/equal_budget.py` left them."""
    metrics = {}
    for index in sorted(path for path in (out / "index").glob("*") if (path / "test-metrics.json").exists()):
        found = cached_evaluation(index / "test-metrics.json", lambda: _unfinished(out))
        if lq:
            lq_found = cached_evaluation(index / "lq-metrics.json", lambda: _unfinished(out, " --lq"))
            found = with_pooled_lq(found, lq_found)
        metrics[index.name] = found
    if BASELINE not in metrics:
        _unfinished(out)
    return metrics


def check_same_queries(outs: list[Path], runs: list[dict[str, dict]]) -> None:
    """Refuse runs scored on different queries: their per-query differences cannot be averaged."""
    def settings(run: dict) -> dict:
        cfg = run[BASELINE]["_meta"]["cfg"]
        return {key: cfg.get(key) for key in QUERY_SETTINGS}

    first = settings(runs[0])
    for out, run in zip(outs[1:], runs[1:]):
        other = settings(run)
        differing = sorted(key for key in QUERY_SETTINGS if other[key] != first[key])
        if differing:
            raise SystemExit(f"{out} was scored on other queries than {outs[0]} (evaluation settings "
                             f"{', '.join(differing)} differ); pool runs of one protocol only")


def pool(runs: list[dict[str, dict]], name: str, key: str) -> dict:
    """Both systems' per-query values averaged over the runs, and their paired bootstrap difference."""
    system = np.mean([np.asarray(run[name]["per_query"][key], dtype=np.float64) for run in runs], axis=0)
    single = np.mean([np.asarray(run[BASELINE]["per_query"][key], dtype=np.float64) for run in runs], axis=0)
    return {"system": float(system.mean()), "single": float(single.mean()),
            "diff": paired_bootstrap_diff(system, single).to_dict()}


def over_trainings(diffs: list[float], level: float = 0.95) -> dict:
    """Student's t interval of the mean of the runs' differences, each run one training of both systems."""
    values = np.asarray(diffs, dtype=np.float64)
    half = stats.t.ppf(0.5 + level / 2, len(values) - 1) * values.std(ddof=1) / np.sqrt(len(values))
    return {"mean": float(values.mean()), "low": float(values.mean() - half), "high": float(values.mean() + half)}


def _unfinished(out: Path, flags: str = "") -> NoReturn:
    raise SystemExit(f"{out} has no finished evaluation to pool; run bench/equal_budget.py --out {out}{flags} to the "
                     "end first")


def _interval(d: dict) -> str:
    return f"{d['mean']:+.3f} [{d['low']:+.3f}, {d['high']:+.3f}]"


if __name__ == "__main__":
    raise SystemExit(main())
