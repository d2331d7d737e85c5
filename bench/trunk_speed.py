"""The frozen image trunk eager against its TorchScript-frozen CPU copy (``towers.frozen_for_cpu``), in one process.

The two variants alternate repeat by repeat (and swap order each repeat), on the same model and the same photos, so
machine load falls on both alike. Two figures per variant, images/s:
- ``trunk``: the trunk alone over the photos' preprocessed pixels, TRUNK_CHUNK images per call;
- ``cache``: ``enclip.embed.trunk_cache.cache_image_features`` for the clean view and one degraded view (what
  ``enclip train`` spends its trunk caching on: decoding, degrading and preprocessing in the reader thread too).

    OMP_NUM_THREADS=2 python bench/trunk_speed.py --items 3072 --repeats 5
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "fashion-product-images-small"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(DATA))
    parser.add_argument("--backbone", default="offline")
    parser.add_argument("--items", type=int, default=3072)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)

    import numpy as np
    import torch

    from enclip.data.catalogue import load_catalogue
    from enclip.embed.trunk_cache import cache_image_features
    from enclip.models.ensemble import Ensemble, HeadCfg
    from enclip.models.registry import create_backbone

    catalogue = load_catalogue(args.data, limit=args.items, validate_images=False)[0]
    ensemble = Ensemble(create_backbone(args.backbone), HeadCfg())
    pixels = ensemble.pixels([catalogue.image(i) for i in range(len(catalogue))])
    eager = ensemble.image_trunk(pixels[:8])
    frozen_out = ensemble.image_trunk_outputs(pixels[:8])  # builds the frozen copy
    frozen = ensemble._cpu_trunk[0]
    if frozen is None:
        raise SystemExit("this trunk has no frozen CPU copy (it stays eager); nothing to compare")
    error = float((frozen_out - eager).norm() / eager.norm())
    variants = {"eager": None, "frozen": frozen}

    def trunk_rate() -> float:
        started = time.perf_counter()
        ensemble.image_trunk_outputs(pixels)
        return len(pixels) / (time.perf_counter() - started)

    def cache_rate() -> float:
        with tempfile.TemporaryDirectory() as work:
            started = time.perf_counter()
            for view in (0, 1):
                cache_image_features(ensemble, catalogue, np.arange(len(catalogue)), Path(work), view=view)
            return 2 * len(catalogue) / (time.perf_counter() - started)

    found: dict[str, dict[str, list[float]]] = {name: {"trunk": [], "cache": []} for name in variants}
    for repeat in range(args.repeats):
        order = list(variants) if repeat % 2 == 0 else list(variants)[::-1]
        for name in order:
            ensemble._cpu_trunk[:] = [variants[name]]
            found[name]["trunk"].append(trunk_rate())
            found[name]["cache"].append(cache_rate())
        print(f"repeat {repeat + 1}: " + "; ".join(f"{n}: trunk {v['trunk'][-1]:.0f}/s, cache {v['cache'][-1]:.0f}/s"
                                                   for n, v in found.items()), flush=True)

    print(f"\n{len(catalogue)} photos, {torch.get_num_threads()} torch threads; relative difference of the outputs "
          f"{error:.1e}; images/s, median (min-max) of {args.repeats}")
    print("| trunk | trunk alone | trunk caching (clean + degraded view) |\n|---|---|---|")
    for name, paths in found.items():
        cells = [f"{statistics.median(v):.0f} ({min(v):.0f}-{max(v):.0f})" for v in paths.values()]
        print(f"| {name} | " + " | ".join(cells) + " |")
    for path in ("trunk", "cache"):
        ratios = [f / e for f, e in zip(found["frozen"][path], found["eager"][path])]
        print(f"{path}: frozen / eager per repeat {', '.join(f'{r:.2f}' for r in ratios)}; "
              f"median {statistics.median(ratios):.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
