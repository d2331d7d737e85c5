"""Training steps under glibc's default allocator settings against fixed thresholds, in alternating subprocesses.

A training step allocates and frees activations of tens of megabytes. With glibc's defaults, blocks that large are
mapped fresh from the kernel and unmapped when freed, and freed heap is trimmed back, so later steps pay page faults
for memory they just gave back (`make demo` counted 4.7 million minor page faults). Fixed thresholds
(``MALLOC_MMAP_THRESHOLD_``, ``MALLOC_TRIM_THRESHOLD_``, ``MALLOC_TOP_PAD_``) keep it in the heap. Each variant runs
in a fresh process (glibc reads them at start) that loads the default recipe's heads and cached trunk features, then
times real training steps; variants alternate, and the figure is the median over repeats of each process's mean
step after the first ``--warmup`` steps.

    python bench/allocator.py --feature-cache bench/out/equal-10m/feature-cache/img2-txt1-views1 \
        --trunk-cache runs/demo/trunk-cache [--steps 60 --repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.default_member import load_default_member  # noqa: E402
from enclip.cli import SHARED_CATALOGUE  # noqa: E402

TUNED = {"MALLOC_MMAP_THRESHOLD_": str(32 << 20), "MALLOC_TRIM_THRESHOLD_": str(16 << 30),
         "MALLOC_TOP_PAD_": str(512 << 20)}
VARIANTS = {"glibc defaults": {}, "fixed thresholds": TUNED}


def time_steps(data: str, feature_cache: str, trunk_cache: str, steps: int) -> list[float]:
    """Seconds of each of ``steps`` real training steps of the default recipe, in this process."""
    import torch

    from enclip.train.trainer import _param_groups, _step, training_image_encoder

    member = load_default_member(data, feature_cache, trunk_cache)
    heads, objective, cfg = member.heads, member.objective, member.cfg
    optimizer = torch.optim.AdamW(_param_groups(heads, cfg.train) + [{"params": objective.parameters()}])
    encode_image = training_image_encoder(heads.image_head, "off", 0)
    rng = np.random.default_rng([0, 0, 3])
    heads.train()
    times = []
    for rows in member.batches[:steps]:
        started = time.perf_counter()
        _step(heads, encode_image, member.train, member.groups, rows, rng, optimizer, cfg.train,
              member.ensemble.device, objective)
        times.append(time.perf_counter() - started)
    return times


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(SHARED_CATALOGUE))
    parser.add_argument("--feature-cache", required=True,
                        help="a finished run's trunk-feature cache of the default cut")
    parser.add_argument("--trunk-cache", required=True, help="the catalogue-wide clean trunk cache it was built with")
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--warmup", type=int, default=5, help="first steps of each process left out of its mean")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(time_steps(args.data, args.feature_cache, args.trunk_cache, args.steps)))
        return 0
    means: dict[str, list[float]] = {name: [] for name in VARIANTS}
    for repeat in range(args.repeats):
        for name, env in VARIANTS.items():
            command = [sys.executable, __file__, "--child", "--data", args.data, "--feature-cache",
                       args.feature_cache, "--trunk-cache", args.trunk_cache, "--steps", str(args.steps)]
            output = subprocess.run(command, env={**os.environ, **env}, capture_output=True, text=True, check=True)
            times = json.loads(output.stdout.strip().splitlines()[-1])[args.warmup:]
            means[name].append(float(np.mean(times)))
            print(f"repeat {repeat + 1}, {name}: mean {means[name][-1]:.3f} s a step, "
                  f"p90 {np.percentile(times, 90):.3f}, max {max(times):.3f}", flush=True)
    print(f"\n| allocator | s per training step (median of {args.repeats} processes; per process) |\n|---|---|")
    for name, values in means.items():
        print(f"| {name} | {np.median(values):.3f} ({', '.join(f'{v:.3f}' for v in values)}) |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
