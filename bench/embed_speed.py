"""Catalogue embedding throughput (images/s, decode included): two source trees compared back to back in one run.

Each measurement runs in a fresh subprocess with ``PYTHONPATH`` set to one tree's ``src``, and the trees alternate
repeat by repeat, so machine load falls on both alike. A figure is the median over repeats, with the min–max.

Two paths are timed per tree:
- ``embed``: ``enclip.embed.catalogue.encode_catalogue`` without a trunk cache (what ``enclip index`` runs);
- ``cache``: ``enclip.embed.trunk_cache.cache_image_features`` for the clean view and one degraded view (what
  ``enclip train`` spends its trunk caching on).

    git archive 61fa509 src | tar -x -C /tmp/enclip-before     # the tree before the change
    python bench/embed_speed.py --tree before=/tmp/enclip-before/src --tree after=src --items 4096 --repeats 3
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# enclip.cli.SHARED_CATALOGUE, written out: workers run this file on other source trees, which may predate it
DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "fashion-product-images-small"


def measure(data: str, items: int, paths: list[str], chunk: int | None, batch_size: int) -> dict:
    """Runs inside the subprocess: times each path once over the first ``items`` catalogue items."""
    import numpy as np
    import torch

    from enclip.data.catalogue import load_catalogue
    from enclip.embed.catalogue import encode_catalogue
    from enclip.embed.trunk_cache import cache_image_features
    from enclip.models import ensemble as ensemble_module
    from enclip.models.ensemble import Ensemble, HeadCfg
    from enclip.models.registry import create_backbone

    if chunk is not None and hasattr(ensemble_module, "TRUNK_CHUNK"):
        ensemble_module.TRUNK_CHUNK = chunk
    catalogue = load_catalogue(data, limit=items, validate_images=False)[0]
    ensemble = Ensemble(create_backbone("offline"), HeadCfg())
    rates = {}
    with tempfile.TemporaryDirectory() as work:
        encode_catalogue(ensemble, catalogue.subset(range(64)), Path(work) / "warm", batch_size=batch_size)
        for path in paths:
            started = time.perf_counter()
            if path == "embed":
                encode_catalogue(ensemble, catalogue, Path(work) / "embed", batch_size=batch_size)
                count = len(catalogue)
            else:
                positions = np.arange(len(catalogue))
                for view in (0, 1):
                    cache_image_features(ensemble, catalogue, positions, Path(work) / "cache", view=view,
                                         batch_size=batch_size)
                count = 2 * len(catalogue)
            rates[path] = count / (time.perf_counter() - started)
    return {"rates": rates, "threads": torch.get_num_threads()}


def _run_tree(src: str, args, chunk: int | None) -> dict:
    env = {**os.environ, "PYTHONPATH": str(Path(src).resolve()), "TQDM_DISABLE": "1"}
    command = [sys.executable, __file__, "--worker", "--data", args.data, "--items", str(args.items),
               "--batch-size", str(args.batch_size), "--paths", *args.paths]
    if chunk is not None:
        command += ["--chunk", str(chunk)]
    out = subprocess.run(command, env=env, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tree", action="append", default=[], help="LABEL=SRC_DIR; repeat (first = baseline)")
    parser.add_argument("--chunk", type=int, action="append", help="TRUNK_CHUNK values to sweep (trees that have it)")
    parser.add_argument("--data", default=str(DATA))
    parser.add_argument("--items", type=int, default=4096)
    parser.add_argument("--batch-size", type=int, default=256, help="runner batch (images read and encoded at once)")
    parser.add_argument("--paths", nargs="+", default=["embed", "cache"], choices=["embed", "cache"])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", help="write the figures here")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        chunk = args.chunk[0] if args.chunk else None
        print(json.dumps(measure(args.data, args.items, args.paths, chunk, args.batch_size)))
        return 0
    variants = [(label, src, chunk) for label, _, src in (t.partition("=") for t in args.tree)
                for chunk in (args.chunk or [None])]
    found: dict[str, dict[str, list[float]]] = {}
    for repeat in range(args.repeats):
        for label, src, chunk in variants:
            name = label if chunk is None else f"{label} chunk={chunk}"
            result = _run_tree(src, args, chunk)
            for path, rate in result["rates"].items():
                found.setdefault(name, {}).setdefault(path, []).append(rate)
            print(f"repeat {repeat + 1}: {name}: " + ", ".join(f"{p} {r:.0f}/s" for p, r in result["rates"].items()),
                  flush=True)
    print(f"\n{args.items} catalogue items, runner batch {args.batch_size}, {os.cpu_count()} cores; images/s, "
          f"median (min-max) of {args.repeats}")
    print("| tree | " + " | ".join(args.paths) + " |\n|---|" + "---|" * len(args.paths))
    for name, paths in found.items():
        cells = [f"{statistics.median(v):.0f} ({min(v):.0f}-{max(v):.0f})" for v in paths.values()]
        print(f"| {name} | " + " | ".join(cells) + " |")
    if args.json:
        Path(args.json).write_text(json.dumps(found, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
