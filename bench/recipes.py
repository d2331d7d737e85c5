"""Training-recipe ablation on the validation split: each recipe is a set of `enclip train` flags.

Every recipe trains one model on the whole train split from shared trunk caches (one per cut point), and the
table reports its validation title→image R@10 per epoch (2,000 validation titles against the validation images
plus 20,000 training images, as the trainer scores it), the best epoch and the seconds per epoch. With
``--eval-val`` it also scores each recipe on validation items against the whole catalogue: shopper queries
(``attrs2img``, ``attr2img``) and a degraded validation photo plus its title (``both2img`` at severity 3), so that
a recipe cannot win on titles while it loses on poor photos unseen. Test items are never touched. Finished recipes
are reused from the output folder, so an interrupted run resumes.

    python bench/recipes.py --out bench/out/recipes --recipe "default=" \
        --recipe "aux=--aux-weight 0.5 --aux-columns gender articleType baseColour usage season"
"""

from __future__ import annotations

import argparse
import json
import logging
import shlex
import time
from pathlib import Path

from enclip.artifacts import read_json
from enclip.cli import SHARED_CATALOGUE, build_parser, run_cfg
from enclip.data.catalogue import load_catalogue
from enclip.eval.tasks import ATTRIBUTE_TASK_KEYS
from enclip.train.run import train_system


def run_recipe(catalogue, name: str, flags: list[str], out: Path, trunk_cache: str,
               feature_cache: Path | None = None) -> dict:
    """Train one recipe (or reuse its finished run) and return its validation history. Feature caches live under
    ``feature_cache`` (default ``out/feature-cache``), one per cut, shared by the recipes that use it."""
    model_dir = out / "runs" / name
    args = build_parser().parse_args(["train", "--out", str(model_dir), "--trunk-cache", trunk_cache,
                                      *flags])
    cfg = run_cfg(args)
    colour = "-colour" if cfg.train.heads.colour else ""  # trunk outputs with the thumbnail channels
    tokens = f"-tok{cfg.train.heads.token_bag}" if cfg.train.heads.token_bag else ""  # text outputs with token ids
    heads = (f"img{cfg.train.heads.trainable_image}{colour}-txt{cfg.train.heads.trainable_text}{tokens}"
             f"-views{cfg.train.views}")
    if cfg.backbone.image_width is not None:  # another input shape: other trunk outputs, shared with no square cut
        heads += f"-{cfg.backbone.image_size}x{cfg.backbone.image_width}"
    feature_cache = feature_cache or out / "feature-cache"
    cfg.cache_dir = str(feature_cache / heads)  # recipes with the same cut share their trunk outputs
    _share_image_views(feature_cache, heads)
    started = time.perf_counter()
    train_system(catalogue, model_dir, cfg, resume=True)
    import torch

    # one history per trained run: a member each, or the one trajectory of a snapshot ensemble
    history = [torch.load(checkpoint, weights_only=False)["state"]["history"]
               for checkpoint in sorted(model_dir.glob("members/*/checkpoint.pt"))]
    manifest = read_json(model_dir / "ensemble.json")
    curve = [entry["val_R@10"] for entry in history[0]]  # None: an epoch not validated (--validate last)
    best = max(v for v in curve if v is not None)
    return {"flags": " ".join(flags), "val_R@10": curve, "best": best, "best_epoch": 1 + curve.index(best),
            "epoch_seconds": [entry["seconds"] for entry in history[0]],
            "train_seconds": manifest.get("train_seconds"),  # caching included
            "epochs_seconds": round(sum(entry["seconds"] for run in history for entry in run), 1),  # every run
            # steps each run trained (None: a run from before histories counted them)
            "steps": [sum(entry["steps"] for entry in run) if all("steps" in entry for entry in run) else None
                      for run in history],
            "wall_seconds_this_call": time.perf_counter() - started}


VAL_TASKS = ("attrs2img", "attr2img", "both2img")  # what --eval-val scores on validation items
BOTH_SEVERITY = 3  # the both2img headline's severity (docs/EVALUATION.md)


def validation_scores(catalogue, model_dir: Path, index_dir: Path, trunk_cache: str) -> dict:
    """Validation items' attrs2img (P@10, nDCG@10), attr2img P@10 (each attribute value as the query) and both2img
    R@10 (a validation photo degraded at severity 3, pooled over the degradations, plus its title), photo channel
    only, from an index built off the trunk cache."""
    from enclip.eval.evaluate import EvalCfg, evaluate_index
    from enclip.indexing import IndexBuildCfg, build_index

    if not (index_dir / "index.json").exists():
        build_index(model_dir, catalogue, index_dir, IndexBuildCfg(trunk_cache=trunk_cache, channels=("image",)))
    metrics = evaluate_index(index_dir, EvalCfg(tasks=VAL_TASKS, split="val", severities=(BOTH_SEVERITY,),
                                                both_severity=BOTH_SEVERITY, n_resamples=200),
                             out=index_dir / "val-metrics.json")
    keys = ("attrs2img/P@10", "attrs2img/nDCG@10", *(f"attr2img/{name}/P@10" for name in ATTRIBUTE_TASK_KEYS),
            "both2img/R@10")
    return {key: round(metrics[key]["mean"], 4) for key in keys if key in metrics}


def _share_image_views(root: Path, heads: str) -> None:
    """Caches that differ only in the text cut hold the same image trunk outputs: link them instead of recomputing
    (same image cut, views, seed and augmentation; the text side is cached apart, under distinct-texts)."""
    image_cut = heads.split("-txt")[0]
    views = heads.split("-views")[1]
    target = root / heads
    for other in sorted(root.glob(f"{image_cut}-txt*-views{views}")):
        if other.name == heads:
            continue
        for split in ("train", "val"):
            for view in sorted((other / split).glob("image-view*")):
                link = target / split / view.name
                if not link.exists():
                    link.parent.mkdir(parents=True, exist_ok=True)
                    link.symlink_to(view.resolve(), target_is_directory=True)


def open_results(folder: str) -> tuple[Path, Path, dict]:
    """The output folder, its ``results.json`` and what earlier runs recorded there (finished recipes are reused)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    results_path = out / "results.json"
    return out, results_path, json.loads(results_path.read_text()) if results_path.exists() else {}


def table(results: dict) -> str:
    lines = ["| recipe | flags | val R@10 per epoch | best (epoch) | s per epoch (median) "
             "| val attrs2img P@10 / nDCG@10 | attr2img P@10 (" + ", ".join(ATTRIBUTE_TASK_KEYS) + ") "
             f"| val both2img R@10 (severity {BOTH_SEVERITY}) |",
             "|---|---|---|---|---|---|---|---|"]
    for name, r in results.items():
        seconds = sorted(r["epoch_seconds"])[len(r["epoch_seconds"]) // 2]
        curve = ", ".join("-" if v is None else f"{v:.3f}" for v in r["val_R@10"])
        scores = r.get("val_scores") or r.get("val_attrs2img")  # (the older key: results without both2img)
        attr = " / ".join(f"{scores[f'attr2img/{n}/P@10']:.2f}" for n in ATTRIBUTE_TASK_KEYS
                          if f"attr2img/{n}/P@10" in (scores or {}))
        attrs = f"{scores['attrs2img/P@10']:.3f} / {scores['attrs2img/nDCG@10']:.3f}" if scores else "-"
        both = f"{scores['both2img/R@10']:.3f}" if "both2img/R@10" in (scores or {}) else "-"
        lines.append(f"| {name} | `{r['flags'] or '(defaults)'}` | {curve} | {r['best']:.4f} ({r['best_epoch']}) "
                     f"| {seconds:.0f} | {attrs} | {attr or '-'} | {both} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(SHARED_CATALOGUE))
    parser.add_argument("--out", default="bench/out/recipes")
    parser.add_argument("--trunk-cache", default="bench/out/trunk-cache", help="catalogue-wide clean trunk cache")
    parser.add_argument("--recipe", action="append", required=True, help="NAME=FLAGS (enclip train flags)")
    parser.add_argument("--eval-val", action="store_true",
                        help="also score attrs2img, attr2img and both2img (severity 3) on validation items")
    parser.add_argument("--feature-cache", type=Path, help="trunk-feature caches to share (default: OUT/feature-cache)")
    args = parser.parse_args(argv)
    out, results_path, results = open_results(args.out)
    catalogue = load_catalogue(args.data)[0]
    for spec in args.recipe:
        name, _, flags = spec.partition("=")
        if name in results and results[name]["flags"] == " ".join(shlex.split(flags)):
            continue
        results[name] = run_recipe(catalogue, name, shlex.split(flags), out, args.trunk_cache, args.feature_cache)
        results_path.write_text(json.dumps(results, indent=1))
        print(table({name: results[name]}), flush=True)
    for spec in args.recipe if args.eval_val else []:
        name = spec.partition("=")[0]
        if "both2img/R@10" not in results[name].get("val_scores", {}):
            results[name]["val_scores"] = validation_scores(catalogue, out / "runs" / name, out / "index" / name,
                                                            args.trunk_cache)
            results_path.write_text(json.dumps(results, indent=1))
    print(table(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
