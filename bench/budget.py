"""Equal-budget comparison at one data share: one model trained K·E epochs against K members of E epochs each.

    python bench/budget.py --fraction 0.1 --members 5 --epochs 10 --out bench/out/budget-f0.1 \
        --caches bench/out/full/cache

The full suite gives each member 2 epochs, where one model's validation curve is still steep; this asks whether
the ensemble wins once members are trained near saturation, which is cheap to reach on a small share of the data.
Systems, caches and metrics are the suite's (``bench/quality.py``), so figures are comparable with its report.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.quality import Bench, BenchCfg, System, compare, figure  # noqa: E402
from enclip.cli import default_data  # noqa: E402
from enclip.data.catalogue import load_catalogue  # noqa: E402
from enclip.train.trainer import TrainCfg  # noqa: E402


def run(bench: Bench, fraction: float, members: int, epochs: int, strategy: str) -> str:
    tag = f"f{fraction}-e{epochs}"
    systems = {"single": System(f"single-{tag}", 1, "seeds", epochs, fraction),
               f"single-{members}x": System(f"single-{members}x-{tag}", 1, "seeds", members * epochs, fraction),
               "enclip": System(f"ens-{strategy}-{tag}", members, strategy, epochs, fraction)}
    results = {label: bench.evaluate(system.name, bench.index(system), ("title2img",))
               for label, system in systems.items()}
    rows = [f"Test title2img R@10 at {fraction:.0%} of the train split; members: {members} × {epochs} epochs "
            f"({strategy}, mean fusion).", "", "| system | epochs | R@10 [95% bootstrap] |", "|---|---|---|"]
    for label, system in systems.items():
        f = figure(results[label], "title2img/R@10")
        interval = f"{f['mean']:.3f} [{f['low']:.3f}, {f['high']:.3f}]"
        rows.append(f"| {label} | {system.members} × {system.epochs} | {interval} |")
    rows += ["", "| comparison | paired difference [95%] |", "|---|---|"]
    for other in ("single", f"single-{members}x"):
        d = compare(results["enclip"], results[other], "title2img/R@10")
        rows.append(f"| enclip − {other} | {d['mean']:+.3f} [{d['low']:+.3f}, {d['high']:+.3f}] |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--fraction", type=float, default=0.1, help="share of the train split")
    parser.add_argument("--members", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=10, help="epochs of one member")
    parser.add_argument("--strategy", default="bagging", choices=["seeds", "bagging", "cluster"])
    parser.add_argument("--out", type=Path, default=Path("bench/out/budget"))
    parser.add_argument("--caches", type=Path, help="a suite run's cache folder to reuse (linked, not copied)")
    parser.add_argument("--data", default=default_data())
    args = parser.parse_args(argv)
    if not 0 < args.fraction <= 1 or args.members < 2 or args.epochs < 1:
        parser.error("need 0 < --fraction <= 1, --members >= 2 and --epochs >= 1")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    args.out.mkdir(parents=True, exist_ok=True)
    if args.caches and not (args.out / "cache").exists():
        (args.out / "cache").symlink_to(args.caches.resolve(), target_is_directory=True)
    catalogue, _ = load_catalogue(args.data)
    # a lighter per-epoch validation than the suite's (it only picks each model's best epoch): at a small share of
    # the data, scoring 2,000 titles against 22,000 images every epoch would cost more than the epoch itself
    train = TrainCfg(val_items=1000, val_distractors=2000)
    print(run(Bench(catalogue, BenchCfg(out=args.out, train=train)), args.fraction, args.members, args.epochs,
              args.strategy))
    return 0


if __name__ == "__main__":
    sys.exit(main())
