"""One command for the whole benchmark suite: quality, limited data, low quality, speed → docs/RESULTS.md.

    python bench/run_all.py            # full protocol (118 minutes measured on 2 cores)
    python bench/run_all.py --quick    # small budgets and samples (19 minutes measured on 2 cores)

Artefacts (models, indexes, caches, per-system metrics) go to --out and are reused when the command is run again,
so an interrupted run resumes. The report is written to docs/RESULTS-quick.md or docs/RESULTS-full.md plus plots
in docs/, and the raw figures to OUT/results.json.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import sys
import time
from dataclasses import replace
from pathlib import Path

import psutil
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import report  # noqa: E402
from bench.quality import (  # noqa: E402
    Bench,
    BenchCfg,
    cluster_balance,
    run_limited_data,
    run_quality,
    systems_for,
    training_costs,
)
from enclip.cli import default_data  # noqa: E402
from enclip.data.catalogue import load_catalogue  # noqa: E402

DOCS = Path(__file__).resolve().parent.parent / "docs"


REPORTED_CFG = ("members", "epochs", "train_share", "max_queries", "lq_queries", "severities")  # what the report reads


def quick_cfg(out: Path) -> BenchCfg:
    return BenchCfg(members=3, epochs=2, train_share=0.15, fractions=(0.25, 0.5, 1.0), max_queries=1000,
                    lq_queries=150, severities=(1, 3, 5), val_queries=1000, out=out)


def machine() -> str:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    return (f"{os.cpu_count()} cores ({cpu}), {psutil.virtual_memory().total / 2**30:.0f} GiB RAM, "
            f"torch {torch.__version__} with {torch.get_num_threads()} threads, no GPU")


def write_report(path: Path, results: dict, cfg: BenchCfg, command: str, name: str) -> None:
    q, k = results["quality"], cfg.members
    severities = cfg.severities
    report.plot_low_quality(q, k, DOCS / f"low_quality-{name}.png", severities)
    both = report.has_task_by_severity(q, "both2img")
    if both:
        report.plot_low_quality(q, k, DOCS / f"low_quality_both-{name}.png", severities, task="both2img")
    sections = [
        f"# Benchmark results ({name})\n",
        f"Command: `{command}`  \nMachine: {machine()}  \nDate: {time.strftime('%Y-%m-%d')}; "
        f"wall time {results['seconds'] / 60:.1f} min ({_durations(results['section_seconds'])}; of the quality and "
        f"limited-data sections: {_durations(results['phase_seconds'])}, first trunk caching included).\n",
        f"Budgets: one member = {cfg.epochs} epochs on {cfg.train_share:.0%} of the train split; ensembles have "
        f"K={k} members; `single-{k}x` trains one model for {k * cfg.epochs} epochs (the ensemble's total budget). "
        f"Test queries: {cfg.max_queries or 'all 4,443'} titles; {cfg.lq_queries} photos per degradation and severity. "
        "Intervals are 95% bootstrap over queries (1,000 resamples). Settings were chosen on validation queries. "
        "The headline `both2img` is a photo degraded at severity 3 plus its title, pooled over the six "
        "degradations.\n",
        "## Headline (test split)\n", report.headline_table(q, k), "",
        f"Chosen default on validation: **{q['chosen']['system']}** with **{q['chosen']['fusion']}** fusion.\n",
        report.diff_table(q), "",
        "## Ablations: strategies and fusion rules (title2img R@10)\n", report.ablation_table(q), "",
        "## Each member alone\n", report.members_table(q), "",
        "## Member diversity (200 validation titles, whole catalogue)\n", report.diversity_table(q), "",
        *(["## Cluster balance (ens-cluster)\n", report.cluster_table(q["clusters"]), ""] if q.get("clusters") else []),
        "## Attribute queries (attr2img)\n", report.attribute_table(q, k), "",
    ]
    if "data" in results:
        report.plot_data(results["data"], DOCS / f"limited_data-{name}.png")
        sections += ["## Limited data (title2img R@10, test)\n", report.data_table(results["data"]), "",
                     f"![limited data](limited_data-{name}.png)\n"]
    sections += ["## Low-quality photos (img2img_lq R@10, test)\n", report.lq_table(q, k, severities), "",
                 f"![low quality](low_quality-{name}.png)\n"]
    if both:
        sections += ["## Degraded photo plus title (both2img R@10, text share 0.5, test)\n",
                     report.lq_table(q, k, severities, task="both2img"), "",
                     f"![degraded photo plus title](low_quality_both-{name}.png)\n"]
    if results.get("training"):
        systems = [*systems_for(cfg), *(f"{n}-f{f}" for n in systems_for(cfg) for f in cfg.fractions if f != 1)]
        sections += ["## Training time\n", "Wall time of each system's training run; the first system trained "
                     "(`single`) also pays for the trunk caching that every later system reuses.\n",
                     report.training_table(results["training"], systems), ""]
    if "speed" in results:
        sections += ["## Speed and cost\n", results["speed"]["markdown"], ""]
    path.write_text("\n".join(sections))
    splice(DOCS / "RESULTS.md", name, "\n".join(sections))


def splice(results_md: Path, name: str, text: str) -> bool:
    """Put ``text`` (headings one level down) between ``<!-- bench NAME start -->`` and ``<!-- bench NAME end -->``
    in ``results_md``, keeping everything around the markers; False when the file has no such markers."""
    start, end = f"<!-- bench {name} start -->", f"<!-- bench {name} end -->"
    if not results_md.exists():
        return False
    current = results_md.read_text()
    if start not in current or end not in current.split(start, 1)[1]:
        return False
    before, rest = current.split(start, 1)
    after = rest.split(end, 1)[1]
    demoted = "\n".join("#" + line if line.startswith("#") else line for line in text.splitlines())
    tmp = results_md.with_suffix(".md.tmp")
    tmp.write_text(f"{before}{start}\n{demoted}\n{end}{after}")
    tmp.replace(results_md)
    return True


def _durations(seconds: dict[str, float]) -> str:
    return ", ".join(f"{name} {value / 60:.1f} min" for name, value in seconds.items())


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", type=Path)
    parser.add_argument("--data", default=default_data())
    parser.add_argument("--skip", nargs="*", default=[], choices=["data", "speed"])
    parser.add_argument("--members", type=int, help="override the ensemble size K")
    parser.add_argument("--epochs", type=int, help="override the epochs of one member")
    parser.add_argument("--strategies", nargs="+", choices=["seeds", "bagging", "cluster"],
                        help="override the ensemble strategies compared")
    parser.add_argument("--max-queries", type=int, help="override the number of test title queries")
    parser.add_argument("--lq-queries", type=int, help="override the photos per degradation and severity")
    parser.add_argument("--severities", type=int, nargs="+", help="override the degradation severities")
    parser.add_argument("--val-queries", type=int, help="override the validation queries (all: reuse full caches)")
    parser.add_argument("--name", help="report name (docs/RESULTS-NAME.md); default quick or full")
    parser.add_argument("--report-only", action="store_true",
                        help="write the report again from OUT/results.json of a finished run, measuring nothing")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("faiss").setLevel(logging.WARNING)
    out = args.out or Path("bench/out") / ("quick" if args.quick else "full")
    cfg = quick_cfg(out) if args.quick else BenchCfg(out=out)
    cfg = replace(cfg, members=args.members or cfg.members, epochs=args.epochs or cfg.epochs,
                  strategies=tuple(args.strategies or cfg.strategies),
                  max_queries=args.max_queries or cfg.max_queries, lq_queries=args.lq_queries or cfg.lq_queries,
                  severities=tuple(args.severities or cfg.severities), val_queries=args.val_queries or cfg.val_queries)
    name = args.name or ("quick" if args.quick else "full")
    if args.report_only:
        return rewrite_report(out, cfg, name, f"python bench/run_all.py{' --quick' * args.quick} --out {out}")
    started = time.perf_counter()
    catalogue, skipped = load_catalogue(args.data)
    logging.info(skipped.summary_line())
    bench = Bench(catalogue, cfg)
    sections: dict[str, float] = {}
    results: dict = {"quality": run_quality(bench), "section_seconds": sections}
    sections["quality"] = time.perf_counter() - started
    if "data" not in args.skip:
        results["data"] = run_limited_data(bench, results["quality"]["chosen"])
        sections["limited data"] = time.perf_counter() - started - sum(sections.values())
    if "speed" not in args.skip:
        from bench.speed import SpeedCfg, measure_all

        indexes = {"single": out / "indexes" / "single",
                   f"enclip (K={cfg.members})": out / "indexes" / results["quality"]["chosen"]["system"]}
        speed_cfg = SpeedCfg(quick=True) if args.quick else SpeedCfg()
        results["speed"] = measure_all(indexes, catalogue, speed_cfg)
        sections["speed"] = time.perf_counter() - started - sum(sections.values())
    results["seconds"] = time.perf_counter() - started
    results["phase_seconds"] = dict(bench.seconds)
    results["training"] = training_costs(out)
    results["bench_cfg"] = {name: getattr(cfg, name) for name in REPORTED_CFG}
    results["command"] = ("python bench/run_all.py " + " ".join(argv if argv is not None else sys.argv[1:])).strip()
    (out / "results.json").write_text(json.dumps(_jsonable(results), indent=1))
    write_report(DOCS / f"RESULTS-{name}.md", results, cfg, results["command"], name)
    print(f"report written to docs/RESULTS-{name}.md")
    return 0


def rewrite_report(out: Path, cfg: BenchCfg, name: str, command: str) -> int:
    """The report of a finished run again (e.g. after a change to its layout), from the figures it saved."""
    path = out / "results.json"
    if not path.exists():
        raise SystemExit(f"error: {path} not found: --report-only needs a finished run in --out (run without it)")
    results = json.loads(path.read_text())
    saved = results.get("bench_cfg", {})  # runs from before it was saved: the flags given now must match the run's
    cfg = replace(cfg, **{name: tuple(v) if isinstance(v, list) else v for name, v in saved.items()})
    quality = results["quality"]
    model = out / "models" / "ens-cluster"
    if "clusters" not in quality and (model / "clusters" / "summary.json").exists():  # runs from before the table
        quality["clusters"] = cluster_balance(model)
    results["training"] = training_costs(out) or results.get("training", {})  # the saved models are the truth
    if "data" in results:  # json keys are strings; the report wants the fractions back as numbers
        results["data"] = {system: {float(f): v for f, v in curve.items()} for system, curve in results["data"].items()}
    results.setdefault("command", command)  # runs from before the command was saved
    write_report(DOCS / f"RESULTS-{name}.md", results, cfg, results["command"], name)
    print(f"report written again to docs/RESULTS-{name}.md from {path}")
    return 0


def _jsonable(obj):
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items() if k not in ("per_query", "query_labels")}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if hasattr(obj, "tolist"):
        return obj.tolist()
    return obj


if __name__ == "__main__":
    sys.exit(main())
