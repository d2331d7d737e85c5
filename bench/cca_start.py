"""How well new projections started from the CCA of the training pairs rank validation photos, before any step.

For each setting of the fit (ridge, power, training pairs used) the member's projections are set from it and scored
as the trainer scores an epoch: title→image R@10 of 2,000 validation titles against the validation photos plus
20,000 training photos (``trainer.validation_recall``). A random start is the first row. Test items are never
touched. The trunk outputs come from a feature cache that ``enclip train`` (or ``bench/recipes.py``) wrote:

    python bench/cca_start.py --cache-dir bench/out/sweep24/feature-cache/img2-colour-txt0-views1 \
        --trunk-cache bench/out/trunk-cache
"""

from __future__ import annotations

import argparse
import shlex
import time
from pathlib import Path

import numpy as np
import torch

from enclip.cli import SHARED_CATALOGUE, build_parser, run_cfg
from enclip.data.catalogue import load_catalogue
from enclip.models.ensemble import Ensemble
from enclip.models.registry import create_backbone
from enclip.train import trainer
from enclip.train.alignment import POWER, RIDGE, cca_directions, projection, projection_inputs, set_projections
from enclip.train.features import FeatureCache
from enclip.train.run import _caches, _split


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cache-dir", required=True, help="the feature cache of the recipe (one cut point)")
    parser.add_argument("--trunk-cache", required=True)
    parser.add_argument("--data", default=str(SHARED_CATALOGUE))
    parser.add_argument("--flags", default="", help="`enclip train` flags of the recipe the cache was built for")
    parser.add_argument("--ridges", type=float, nargs="+", default=[1e-3, 1e-2, 1e-1])
    parser.add_argument("--powers", type=float, nargs="+", default=[0.0, 0.5, 1.0])
    parser.add_argument("--pairs", type=int, nargs="+", default=[5000, 10000, 20000],
                        help="training pairs the fit sees, besides all of them (a seeded sample)")
    args = parser.parse_args(argv)
    torch.set_num_threads(2)
    cfg = run_cfg(build_parser().parse_args(["train", "--out", "unused", "--trunk-cache", args.trunk_cache,
                                             *shlex.split(args.flags)]))
    catalogue, _ = load_catalogue(args.data, validate_images=False)
    ensemble = Ensemble(create_backbone(cfg.backbone), cfg.train.heads)
    train, val = _caches(ensemble, catalogue, _split(catalogue), Path(args.cache_dir), cfg)
    for line in table(ensemble, train, val, cfg.train, args.ridges, args.powers, args.pairs):
        print(line, flush=True)
    return 0


def table(ensemble: Ensemble, train: FeatureCache, val: FeatureCache, cfg: trainer.TrainCfg, ridges, powers, pairs):
    """Lines of the table: the random start, then each fit of ``ensemble``'s first member (which keeps the last)."""
    member = ensemble.members[0]
    val_rows = trainer._val_sample(val, cfg)
    distractors = (train, trainer._distractor_rows(train, cfg))

    def score() -> float:
        return trainer.validation_recall(ensemble, 0, val, val_rows, distractors=distractors)

    yield (f"| start | ridge | power | training pairs | val R@10 ({len(val_rows)} titles, "
           f"{len(val_rows) + len(distractors[1])} photos) | fit s |")
    yield "|---|---|---|---|---|---|"
    yield f"| random | | | | {score():.4f} | |"
    started = time.perf_counter()
    rows = np.arange(len(train))
    x, y = projection_inputs(member, train, rows, ensemble.device)
    yield f"(the heads' inputs to their projections for {len(rows)} pairs: {time.perf_counter() - started:.1f} s)"
    dim = projection(member.image_head).out_features
    settings = [(ridge, power, len(rows)) for ridge in ridges for power in powers]
    settings += [(RIDGE, POWER, n) for n in pairs if n < len(rows)]
    for ridge, power, n in settings:
        picked = np.sort(np.random.default_rng(0).choice(len(rows), n, replace=False)) if n < len(rows) else rows
        started = time.perf_counter()
        a, b = cca_directions(x[picked], y[picked], dim, ridge=ridge, power=power)
        seconds = time.perf_counter() - started
        set_projections(member, a, b, x, y)
        chosen = " (the default)" if (ridge, power, n) == (RIDGE, POWER, len(rows)) else ""
        yield f"| cca{chosen} | {ridge:g} | {power:g} | {n} | {score():.4f} | {seconds:.1f} |"


if __name__ == "__main__":
    raise SystemExit(main())
