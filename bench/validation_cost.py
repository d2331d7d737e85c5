"""How well a time budget's probe predicts what an end-of-epoch validation costs.

A budgeted member plans its steps from the probe's cost of a step and of a validation (``train/trainer.py:
_measure_costs``). The validation figure is extrapolated from embedding a few hundred photos and titles. Each repeat
runs in a fresh process, as a training run does: it loads the default recipe's cached trunk features and fresh
member heads, times the first chunks of photos embedded in that process (cold) and the same number right after
(warm), calls the planner's own probe, then runs and times real validations, as training does at an epoch's end.
The figures are medians over repeats.

    python bench/validation_cost.py --feature-cache bench/out/sweep18/base/feature-cache \
        --trunk-cache runs/demo/trunk-cache [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.default_member import load_default_member  # noqa: E402
from enclip.cli import SHARED_CATALOGUE  # noqa: E402


def one_process(data: str, feature_cache: str, trunk_cache: str, validations: int) -> dict:
    """In this process: the cold and warm extrapolations, the planner's probe and real validations, in seconds."""
    from enclip.models.ensemble import HEAD_CHUNK
    from enclip.train.trainer import (
        _distractor_rows,
        _embed_images,
        _measure_costs,
        _val_sample,
        validation_recall,
    )

    member = load_default_member(data, feature_cache, trunk_cache)
    ensemble, heads, train, val, cfg = member.ensemble, member.heads, member.train, member.val, member.cfg
    heads.eval()
    val_rows, distractors = _val_sample(val, cfg.train), _distractor_rows(train, cfg.train)
    images = len(val_rows) + len(distractors)

    def per_image(rows) -> float:
        started = time.perf_counter()
        _embed_images(heads, train, rows, ensemble.device)
        return (time.perf_counter() - started) / len(rows)

    sample = np.arange(4 * HEAD_CHUNK)
    cold, warm = per_image(sample[: 2 * HEAD_CHUNK]), per_image(sample[2 * HEAD_CHUNK :])
    _, probe = _measure_costs(heads, member.objective, train, member.groups, member.batches, cfg.train,
                              ensemble.device, images, len(val_rows))
    real = []
    for _ in range(validations):
        started = time.perf_counter()
        validation_recall(ensemble, 0, val, val_rows, distractors=(train, distractors))
        real.append(time.perf_counter() - started)
    return {"images": images, "cold_extrapolated": cold * images, "warm_extrapolated": warm * images,
            "planner_probe": probe, "real_validations": real}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(SHARED_CATALOGUE))
    parser.add_argument("--feature-cache", required=True, help="a finished default run's trunk-feature cache folder")
    parser.add_argument("--trunk-cache", required=True, help="the catalogue-wide clean trunk cache it was built with")
    parser.add_argument("--repeats", type=int, default=3, help="fresh processes")
    parser.add_argument("--validations", type=int, default=2, help="real validations timed per process")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(one_process(args.data, args.feature_cache, args.trunk_cache, args.validations)))
        return 0
    runs = []
    for repeat in range(args.repeats):
        out = subprocess.run([sys.executable, __file__, "--child", "--data", args.data, "--feature-cache",
                              args.feature_cache, "--trunk-cache", args.trunk_cache, "--validations",
                              str(args.validations)], check=True, capture_output=True, text=True)
        runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
        print(f"process {repeat + 1}: {json.dumps(runs[-1])}", flush=True)
    median = lambda key: statistics.median(run[key] for run in runs)  # noqa: E731
    first_real = statistics.median(run["real_validations"][0] for run in runs)
    later_real = statistics.median(s for run in runs for s in run["real_validations"][1:]) if args.validations > 1 \
        else float("nan")
    print(f"\nvalidation of {runs[0]['images']} photos, seconds (median of {args.repeats} processes):")
    print("| estimate or measure | seconds |\n|---|---|")
    for label, value in (("extrapolated from the process's first 256 photos (cold)", median("cold_extrapolated")),
                         ("extrapolated from the next 256 (warm)", median("warm_extrapolated")),
                         ("the planner's probe (`_measure_costs`)", median("planner_probe")),
                         ("a real validation, the first", first_real), ("a real validation, later ones", later_real)):
        print(f"| {label} | {value:.1f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
