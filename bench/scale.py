"""Scale-out figures: the Ray embedding engine against the local one, and the Milvus store against faiss.

Two parts, each timed in this one run so that machine load falls on both sides alike:

- ``embed``: catalogue images/s of ``enclip.embed.catalogue.encode_catalogue`` (the local engine) and of
  ``enclip.embed.ray_engine.encode_catalogue_ray`` on a local Ray cluster (127.0.0.1, one actor per core, one torch
  thread each), same model, same images, decode included. The Ray figure counts from submitting the job to the
  last shard written, so it includes starting the workers and loading the model in each; the per-worker figures
  are each actor's own encoding rate. The vectors of both engines are compared.
- ``store``: one-query search p50 and recall@10 against exact search, for faiss (flat, HNSW) and Milvus Lite
  (FLAT, HNSW) over the same seeded, clustered, L2-normalised vectors of the K=5 shape (5 x 256 = 1280 numbers),
  with the build time of each (Milvus: insert + flush + index build).

    python bench/scale.py --items 4096 --repeats 3 --store-sizes 44441   # both parts
    python bench/scale.py --skip-embed --store-sizes 44441             # the store part only

Prints a markdown table per part and writes ``bench/out/scale.json``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from enclip.cli import SHARED_CATALOGUE

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "out" / "scale.json"
DIM = 5 * 256  # the K=5 ensemble's stored vector


def embed_part(items: int, shard_size: int, batch_size: int, repeats: int) -> dict:
    """Local and Ray engines alternating, ``repeats`` times each (so changing machine load falls on both)."""
    import faiss  # noqa: F401  (imported before torch, as enclip does)
    import torch

    from enclip.data.catalogue import load_catalogue
    from enclip.embed.catalogue import encode_catalogue
    from enclip.embed.ray_engine import RayEmbedCfg, RayEmbedReport, encode_catalogue_ray
    from enclip.models.ensemble import Ensemble, HeadCfg
    from enclip.models.registry import create_backbone
    from enclip.ray_cluster import ray_session

    catalogue = load_catalogue(SHARED_CATALOGUE, limit=items, validate_images=False)[0]
    torch.manual_seed(0)
    ensemble = Ensemble(create_backbone("offline"), HeadCfg())
    cpus = os.cpu_count() or 1
    local_rates, ray_rates, workers, difference = [], [], [], 0.0
    with tempfile.TemporaryDirectory() as work, ray_session(cpus=cpus):
        work = Path(work)
        ensemble.save_member(0, work / "model")  # the default model's shape: trunk + one member's heads
        encode_catalogue(ensemble, catalogue.subset(range(64)), work / "warm", batch_size=batch_size)
        for repeat in range(repeats):
            started = time.perf_counter()
            local = encode_catalogue(ensemble, catalogue, work / f"local{repeat}", batch_size=batch_size,
                                     shard_size=shard_size)
            local_rates.append(len(catalogue) / (time.perf_counter() - started))
            report = RayEmbedReport()
            cfg = RayEmbedCfg(workers=cpus, cpus_per_worker=1, batch_size=batch_size, shard_size=shard_size)
            on_ray = encode_catalogue_ray(work / "model", catalogue, work / f"ray{repeat}", cfg, report=report)
            ray_rates.append(report.items_per_second)
            workers += [round(stats.items / stats.seconds, 1) for stats in report.workers.values()]
            difference = max(difference, float(np.abs(local - on_ray).max()))
            print(json.dumps({"repeat": repeat, "local": round(local_rates[-1], 1), "ray": round(ray_rates[-1], 1)}),
                  flush=True)
    local_median, ray_median = statistics.median(local_rates), statistics.median(ray_rates)
    return {"items": len(catalogue), "shard_size": shard_size, "batch_size": batch_size, "cpus": cpus,
            "repeats": repeats, "local_images_per_s": [round(r, 1) for r in local_rates],
            "ray_images_per_s": [round(r, 1) for r in ray_rates], "local_median": round(local_median, 1),
            "ray_median": round(ray_median, 1), "ray_share_of_local": round(ray_median / local_median, 3),
            "ray_worker_images_per_s": workers, "max_abs_difference": difference}


def clustered(n: int, seed: int, centres: np.ndarray) -> np.ndarray:
    rng = np.random.default_rng(seed)
    out = np.empty((n, DIM), np.float32)
    for start in range(0, n, 50_000):
        m = min(n, start + 50_000) - start
        block = centres[rng.integers(0, len(centres), m)] + rng.standard_normal((m, DIM), np.float32) / np.sqrt(DIM)
        out[start : start + m] = block / np.linalg.norm(block, axis=1, keepdims=True)
    return out


def timed_queries(index, queries: np.ndarray, k: int = 10) -> tuple[float, np.ndarray]:
    """Median one-query latency (ms) and every query's top-k positions."""
    index.search(queries[:3], k)  # warm
    latencies, found = [], []
    for query in queries:
        started = time.perf_counter()
        found.append(index.search(query[None, :], k)[1][0])
        latencies.append(1000 * (time.perf_counter() - started))
    return statistics.median(latencies), np.stack(found)


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(f) & set(t)) / len(t) for f, t in zip(found, truth)]))


def store_part(n: int, n_queries: int, work: Path) -> list[dict]:
    import faiss

    from enclip.vectors import IndexCfg, ItemFields, create_index
    from enclip.vectors.milvus import release_lite

    faiss.omp_set_num_threads(1)  # as the searcher runs one-query searches
    centres = np.random.default_rng(1234).standard_normal((500, DIM)).astype(np.float32)
    vectors = clustered(n, seed=0, centres=centres)
    queries = clustered(n_queries, seed=1, centres=centres)
    truth = faiss.IndexFlatIP(DIM)
    truth.add(vectors)
    want = truth.search(queries, 10)[1]
    del truth
    genders = ["Men", "Women"] * (n // 2) + ["Men"] * (n % 2)
    fields = ItemFields(ids=[str(i) for i in range(n)], attributes={"gender": genders},
                        clusters=[0] * n)
    rows = []
    uri = str(work / f"milvus-{n}.db")
    for label, cfg in (("faiss flat", IndexCfg(kind="flat")), ("faiss hnsw", IndexCfg(kind="hnsw")),
                       ("milvus FLAT", IndexCfg(kind="milvus", milvus_uri=uri, milvus_index="flat")),
                       ("milvus HNSW", IndexCfg(kind="milvus", milvus_uri=uri, milvus_index="hnsw"))):
        started = time.perf_counter()
        index = create_index(DIM, cfg)
        index.add(vectors, fields)
        if cfg.kind == "milvus":
            index.wait_for_index()
        build = time.perf_counter() - started
        p50, found = timed_queries(index, queries)
        rows.append({"items": n, "store": label, "build_s": round(build, 1), "p50_ms": round(p50, 2),
                     "recall_at_10": round(recall(found, want), 4)})
        print(json.dumps(rows[-1]), flush=True)
        if cfg.kind == "milvus":
            index.drop()
            index.close()
        del index
    release_lite(uri)
    return rows


def markdown(results: dict) -> str:
    lines = []
    if "embed" in results:
        e = results["embed"]
        lines += [f"Embedding {e['items']} catalogue images ({e['cpus']} cores, shards of {e['shard_size']}; the two "
                  f"engines alternating, {e['repeats']} runs each; median, then every run):", "",
                  "| engine | images/s | share of local |", "|---|---|---|",
                  f"| local (one process, {e['cpus']} torch threads) | {e['local_median']} "
                  f"({', '.join(map(str, e['local_images_per_s']))}) | 1.00 |",
                  f"| Ray, local cluster ({e['cpus']} workers x 1 CPU), end to end | {e['ray_median']} "
                  f"({', '.join(map(str, e['ray_images_per_s']))}) | {e['ray_share_of_local']:.2f} |",
                  f"| one Ray worker (its own encoding rate) | {', '.join(map(str, e['ray_worker_images_per_s']))} | |",
                  "", f"Largest difference between the engines' vectors: {e['max_abs_difference']:.2e}", ""]
    if "store" in results:
        lines += ["| items | store | build s | p50 ms | recall@10 |", "|---|---|---|---|---|"]
        lines += [f"| {r['items']:,} | {r['store']} | {r['build_s']} | {r['p50_ms']} | {r['recall_at_10']:.3f} |"
                  for r in results["store"]]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=8192, help="catalogue images embedded by each engine")
    parser.add_argument("--shard-size", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3, help="runs of each engine, alternating")
    parser.add_argument("--store-sizes", type=int, nargs="*", default=[44441], help="vectors per store run")
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--skip-embed", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    results: dict = {"command": "python bench/scale.py " + " ".join(argv if argv is not None else sys.argv[1:])}
    if not args.skip_embed:
        results["embed"] = embed_part(args.items, args.shard_size, args.batch_size, args.repeats)
        print(json.dumps(results["embed"]), flush=True)
    if args.store_sizes:
        with tempfile.TemporaryDirectory() as work:
            results["store"] = [row for n in args.store_sizes for row in store_part(n, args.queries, Path(work))]
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(results, indent=2))
    print(markdown(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
