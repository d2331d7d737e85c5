"""Speed and cost figures (EVALUATION.md, "Speed and cost"): a benchmark that prints figures, not a test.

Everything is measured on one machine in one run; each figure is the median over ``repeats`` runs, shown with
its min–max spread:

1. query latency end to end (``Searcher.encode_query`` + ``Searcher.search_vectors``, which is what
   ``Searcher.search`` does) p50/p99 for text, image and combined queries, with the encode/search split;
2. catalogue embedding throughput (images/s, decoding included) with ``enclip.embed.catalogue.encode_catalogue``;
3. build time, size on disk, single-query search latency and recall@k vs flat of the flat/hnsw/ivf index kinds
   over each index's stored vectors;
4. the same at ``--synthetic-n`` (1M) items with seeded synthetic vectors (stored as float16; the dimension is
   halved, and the output says so, until the vectors fit in memory);
5. resident memory after loading each index and after its latency run, and the process's peak RSS.

    python bench/speed.py --index runs/single/index --index runs/ensemble/index --label single --label ensemble \
        --json speed.json

The first index is the baseline the others are compared with. At full size on two cores the 1M-item hnsw and ivf
builds take tens of minutes each; ``--synthetic-kinds flat`` or ``--quick`` keeps a run short.
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import os
import platform
import resource
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

import faiss
import numpy as np
import psutil
import torch

from enclip.artifacts import library_versions
from enclip.data.catalogue import Catalogue, load_catalogue
from enclip.embed.catalogue import encode_catalogue
from enclip.embed.space import concat_members, to_joint
from enclip.errors import EnclipError
from enclip.indexing import IndexBuildCfg
from enclip.search import Searcher, load_searcher
from enclip.search.query import text_shares
from enclip.vectors import IndexCfg, VectorIndex, create_index
from enclip.vectors.base import STORAGE_DTYPES, cfg_from_params

log = logging.getLogger(__name__)

REALISTIC_QUERIES = (
    "red dress", "black leather watch for men", "white sneakers", "blue denim jeans", "women handbag",
    "floral summer top", "formal shirt for office", "running shoes", "gold earrings", "kids t-shirt",
    "green kurta", "brown leather belt", "aviator sunglasses", "navy blue track pants", "pink sandals for women",
    "grey hooded sweatshirt",
)
MODES = ("text", "image", "combined")
SYNTHETIC_CHUNK = 65536  # synthetic rows generated and added at once (bounds the float32 temporaries)


@dataclass
class SpeedCfg:
    repeats: int = 5  # runs per figure; a figure is their median, with their min–max as the spread
    queries: int = 200  # timed queries per query type (half fixed realistic texts, half sampled titles)
    warmup: int = 5  # untimed queries before each timed series
    k: int = 10  # results per query
    embed_items: int = 4096  # catalogue items encoded per throughput run
    embed_batch_size: int = 256  # images per encoding batch
    kinds: tuple[str, ...] = ("flat", "hnsw", "ivf")  # index kinds compared over the stored vectors (flat = truth)
    synthetic_n: int = 1_000_000  # synthetic catalogue size (0 skips section 4)
    synthetic_queries: int = 100  # synthetic queries timed and scored for recall
    # kinds built at synthetic size. Not HNSW by default: at the K=5 dimension (1280) a 20k build took 35 s on
    # 2 cores, so a 1M build would take about an hour; pass --synthetic-kinds flat,hnsw,ivf to measure it anyway
    synthetic_kinds: tuple[str, ...] = ("flat", "ivf")
    synthetic_build_repeats: int = 1  # builds per synthetic kind (a 1M hnsw/ivf build takes tens of minutes)
    synthetic_dim: int | None = None  # None = the largest index dimension, halved until it fits in memory
    synthetic_dtype: str = "float16"  # storage precision of the synthetic vectors
    synthetic_clusters: int = 1024  # synthetic vectors are a mixture around this many random centres
    synthetic_noise: float = 1.0  # noise norm around a centre (1.0: cosine to the centre about 0.7)
    memory_fraction: float = 0.6  # share of the available RAM the synthetic index may use
    threads: int | None = None  # faiss OpenMP threads; None = os.cpu_count()
    seed: int = 0  # query sampling, item subsets and synthetic data
    quick: bool = False  # a short run: the QUICK values for every field among them left at its full default

    def __post_init__(self) -> None:
        if self.quick:
            for name, value in QUICK.items():
                if getattr(self, name) == SpeedCfg.__dataclass_fields__[name].default:
                    setattr(self, name, value)


# --quick: fewer repeats and queries, and 100k synthetic vectors instead of 1M
QUICK = dict(repeats=3, queries=50, embed_items=1024, synthetic_n=100_000)


# -- small helpers ---------------------------------------------------------------------------------------------------
def stats(values: Sequence[float]) -> dict:
    """Median with the min–max spread of repeated measurements."""
    return {"median": float(np.median(values)), "min": float(np.min(values)), "max": float(np.max(values))}


def rss_mb() -> float:
    return psutil.Process().memory_info().rss / 2**20


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports kilobytes


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_facts() -> dict:
    """What the figures were measured on; printed above every table."""
    memory = psutil.virtual_memory()
    return {"cpu": _cpu_model(), "cores": os.cpu_count(), "ram_gb": round(memory.total / 2**30, 1),
            "available_gb": round(memory.available / 2**30, 1), "torch_threads": torch.get_num_threads(),
            "faiss_threads": faiss.omp_get_max_threads(), "load_average": [round(x, 2) for x in os.getloadavg()],
            "platform": platform.platform(),
            "versions": library_versions(), "date": time.strftime("%Y-%m-%d %H:%M:%S")}


# -- 1. query latency ------------------------------------------------------------------------------------------------
def query_sets(catalogue: Catalogue, n: int, seed: int) -> dict[str, list[dict]]:
    """``n`` text, image and combined queries: fixed realistic texts, sampled titles, sampled item photos."""
    rng = np.random.default_rng(seed)
    titled = [i for i, title in enumerate(catalogue.titles) if title.strip()]
    titles = [catalogue.titles[i] for i in rng.choice(titled, n // 2)] if titled else []
    texts = [REALISTIC_QUERIES[i % len(REALISTIC_QUERIES)] for i in range(n - len(titles))] + titles
    images = [catalogue.image_bytes(int(i)) for i in rng.choice(len(catalogue), n)]
    return {"text": [{"text": t} for t in texts], "image": [{"image": b} for b in images],
            "combined": [{"text": t, "image": b} for t, b in zip(texts, images)]}


def time_queries(searcher: Searcher, queries: list[dict], k: int) -> np.ndarray:
    """(q, 2) milliseconds spent encoding and searching each query."""
    times = np.empty((len(queries), 2))
    for i, query in enumerate(queries):
        started = time.perf_counter()
        vectors = searcher.encode_query(**query)
        encoded = time.perf_counter()
        searcher.search_vectors(vectors, k, text_share=float(text_shares([query.get("text")], [query.get("image")],
                                                                      [query.get("weight", 0.5)])[0]))
        times[i] = (encoded - started, time.perf_counter() - encoded)
    return 1000 * times


def summarise_latency(runs: list[np.ndarray]) -> dict:
    totals = [run.sum(axis=1) for run in runs]
    return {"p50_ms": stats([np.percentile(t, 50) for t in totals]),
            "p99_ms": stats([np.percentile(t, 99) for t in totals]),
            "encode_ms": stats([np.median(run[:, 0]) for run in runs]),
            "search_ms": stats([np.median(run[:, 1]) for run in runs]),
            "encode_share": stats([run[:, 0].sum() / run.sum() for run in runs])}


def measure_latency(searcher: Searcher, cfg: SpeedCfg) -> dict:
    latency = {}
    for mode, queries in query_sets(searcher.catalogue, cfg.queries, cfg.seed).items():
        time_queries(searcher, queries[: cfg.warmup], cfg.k)
        latency[mode] = summarise_latency([time_queries(searcher, queries, cfg.k) for _ in range(cfg.repeats)])
    return latency


def latency_vs_baseline(latency: dict[str, dict]) -> dict:
    """Each index's p50 per query type divided by the first (baseline) index's."""
    baseline = next(iter(latency.values()))
    return {label: {mode: figures[mode]["p50_ms"]["median"] / baseline[mode]["p50_ms"]["median"] for mode in MODES}
            for label, figures in latency.items()}


# -- 2. embedding throughput -----------------------------------------------------------------------------------------
def _encode_seconds(searcher: Searcher, catalogue: Catalogue, build_cfg: IndexBuildCfg) -> float:
    with tempfile.TemporaryDirectory() as work_dir:  # a fresh work dir: encode_catalogue resumes from shards
        started = time.perf_counter()
        encode_catalogue(searcher.model, catalogue, Path(work_dir), batch_size=build_cfg.batch_size)
        return time.perf_counter() - started


def measure_embedding(searcher: Searcher, catalogue: Catalogue | None, cfg: SpeedCfg) -> dict:
    """Images/s of encoding a seeded subset of the catalogue with the index's model (no trunk cache)."""
    source = catalogue if catalogue is not None else searcher.catalogue
    n = min(cfg.embed_items, len(source))
    subset = source.subset(np.sort(np.random.default_rng(cfg.seed).choice(len(source), n, replace=False)))
    build_cfg = IndexBuildCfg(batch_size=cfg.embed_batch_size, trunk_cache=None)
    _encode_seconds(searcher, subset.subset(range(min(n, cfg.embed_batch_size, 32))), build_cfg)  # warm-up
    rates = [n / _encode_seconds(searcher, subset, build_cfg) for _ in range(cfg.repeats)]
    return {"images_per_s": stats(rates), "items": n, "batch_size": cfg.embed_batch_size}


# -- 3. and 4. index kinds -------------------------------------------------------------------------------------------
def build_timed(chunks: Iterable[np.ndarray], dim: int, index_cfg: IndexCfg, probe: np.ndarray
                ) -> tuple[VectorIndex, float]:
    """A filled index and the seconds spent adding (and, for ivf, training on the first search)."""
    index, seconds = create_index(dim, index_cfg), 0.0
    for chunk in chunks:  # generating the chunks is not timed
        started = time.perf_counter()
        index.add(chunk)
        seconds += time.perf_counter() - started
    started = time.perf_counter()
    index.search(probe, 1)  # ivf trains lazily here
    return index, seconds + time.perf_counter() - started


def search_latency(index: VectorIndex, queries: np.ndarray, cfg: SpeedCfg) -> dict:
    """p50/p99 of one query vector at a time, k results."""
    def one_run() -> np.ndarray:
        times = np.empty(len(queries))
        for i, query in enumerate(queries):
            started = time.perf_counter()
            index.search(query[None], cfg.k)
            times[i] = time.perf_counter() - started
        return 1000 * times

    for query in queries[: cfg.warmup]:
        index.search(query[None], cfg.k)
    runs = [one_run() for _ in range(cfg.repeats)]
    return {f"p{q}_ms": stats([np.percentile(run, q) for run in runs]) for q in (50, 99)}


def size_on_disk_mb(index: VectorIndex) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        index.save(Path(tmp) / "vectors")
        return sum(f.stat().st_size for f in Path(tmp).rglob("*") if f.is_file()) / 2**20


def recall_at_k(found: np.ndarray, truth: np.ndarray) -> float:
    """Mean share of each query's exact top-k that the approximate search also returned."""
    shares = [len(set(f[f >= 0]) & set(t[t >= 0])) / max(1, int((t >= 0).sum())) for f, t in zip(found, truth)]
    return float(np.mean(shares))


def measure_kind(chunks: Callable[[], Iterable[np.ndarray]], dim: int, index_cfg: IndexCfg, queries: np.ndarray,
                 cfg: SpeedCfg, build_repeats: int, disk: bool) -> tuple[dict, np.ndarray]:
    """Build figures, search latency and the top-k found for ``queries``, for one index kind."""
    builds, grown, index = [], [], None
    for _ in range(build_repeats):
        index = None  # drop the previous build before the next one (1M-row indexes are gigabytes)
        before = rss_mb()
        index, seconds = build_timed(chunks(), dim, index_cfg, queries[:1])
        builds.append(seconds)
        grown.append(max(0.0, rss_mb() - before))
    figures = {"build_s": stats(builds), "rss_growth_mb": stats(grown), **search_latency(index, queries, cfg)}
    if disk:
        figures["size_mb"] = size_on_disk_mb(index)
    return figures, index.search(queries, cfg.k)[1]


def measure_kinds(chunks: Callable[[], Iterable[np.ndarray]], dim: int, base: IndexCfg, queries: np.ndarray,
                  cfg: SpeedCfg, kinds: Sequence[str], build_repeats: int, disk: bool) -> dict:
    """Figures per kind; recall@k of each kind against flat (exact), which is measured first."""
    results, truth = {}, None
    for kind in sorted(kinds, key=lambda name: name != "flat"):
        figures, found = measure_kind(chunks, dim, replace(base, kind=kind), queries, cfg, build_repeats, disk)
        truth = found if kind == "flat" else truth
        results[kind] = {**figures, "recall_at_k": recall_at_k(found, truth)} if truth is not None else figures
    return results


def fused_text_queries(searcher: Searcher, texts: list[str]) -> np.ndarray:
    """Text queries in the index's joint space, members weighted equally (the ``mean`` fusion query)."""
    parts = [searcher.model.encode_texts(texts[i : i + 64]) for i in range(0, len(texts), 64)]
    members = np.concatenate(parts, axis=1)  # (K, q, d)
    return to_joint(concat_members(members), len(members))


def measure_stored_kinds(searcher: Searcher, cfg: SpeedCfg) -> dict:
    """Section 3: every kind rebuilt over the index's own stored vectors, queried with encoded text queries."""
    vectors = searcher.index.reconstruct(np.arange(len(searcher.index)))
    base = cfg_from_params(searcher.manifest.get("index", {}))
    texts = [q["text"] for q in query_sets(searcher.catalogue, cfg.queries, cfg.seed)["text"]]
    queries = fused_text_queries(searcher, texts)
    return measure_kinds(lambda: [vectors], vectors.shape[1], base, queries, cfg, cfg.kinds, cfg.repeats, disk=True)


def synthetic_vectors(n: int, centres: np.ndarray, noise: float, seed: int, stream: int) -> Iterator[np.ndarray]:
    """Seeded unit vectors scattered around ``centres`` (clustered like real embeddings), chunk by chunk."""
    dim = centres.shape[1]
    for start in range(0, n, SYNTHETIC_CHUNK):
        rng = np.random.default_rng([seed, stream, start])
        rows = min(SYNTHETIC_CHUNK, n - start)
        chunk = centres[rng.integers(len(centres), size=rows)]
        chunk = chunk + rng.standard_normal((rows, dim), dtype=np.float32) * np.float32(noise / np.sqrt(dim))
        yield chunk / np.linalg.norm(chunk, axis=1, keepdims=True)


def synthetic_dim(index_dim: int, cfg: SpeedCfg) -> tuple[int, str]:
    """The index dimension, halved until one synthetic index fits in ``memory_fraction`` of the available RAM."""
    if cfg.synthetic_dim:
        return cfg.synthetic_dim, f"dimension {cfg.synthetic_dim} set by --synthetic-dim (index dimension {index_dim})"
    itemsize = np.dtype(STORAGE_DTYPES[cfg.synthetic_dtype]).itemsize
    links = 2 * IndexCfg().hnsw_m * 4 if "hnsw" in cfg.synthetic_kinds else 0

    def needed(dim: int) -> float:  # enclip's buffer (grown geometrically) + faiss's float32 copy + hnsw links
        return cfg.synthetic_n * (dim * (1.5 * itemsize + 4) + links)

    budget, dim = cfg.memory_fraction * psutil.virtual_memory().available, index_dim
    while dim > 64 and needed(dim) > budget:
        dim //= 2
    note = "" if dim == index_dim else (f"dimension reduced from {index_dim} to {dim}: {needed(index_dim) / 2**30:.1f}"
                                         f" GB would exceed {budget / 2**30:.1f} GB of available memory")
    return dim, note


def measure_synthetic(index_dim: int, cfg: SpeedCfg) -> dict:
    """Section 4: the index kinds at ``synthetic_n`` seeded synthetic vectors."""
    dim, note = synthetic_dim(index_dim, cfg)
    centres = np.random.default_rng([cfg.seed, 2]).standard_normal((cfg.synthetic_clusters, dim), dtype=np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    queries = np.concatenate(list(synthetic_vectors(cfg.synthetic_queries, centres, cfg.synthetic_noise, cfg.seed, 1)))

    def chunks() -> Iterator[np.ndarray]:
        return synthetic_vectors(cfg.synthetic_n, centres, cfg.synthetic_noise, cfg.seed, 0)

    kinds = measure_kinds(chunks, dim, IndexCfg(dtype=cfg.synthetic_dtype), queries, cfg, cfg.synthetic_kinds,
                          cfg.synthetic_build_repeats, disk=False)
    data = f"mixture around {cfg.synthetic_clusters} random centres, noise {cfg.synthetic_noise}"
    return {"n": cfg.synthetic_n, "dim": dim, "index_dim": index_dim, "dtype": cfg.synthetic_dtype,
            "queries": len(queries), "build_repeats": cfg.synthetic_build_repeats, "data": data, "note": note,
            "vectors_mb": cfg.synthetic_n * dim * np.dtype(cfg.synthetic_dtype).itemsize / 2**20, "kinds": kinds}


# -- one index, then everything --------------------------------------------------------------------------------------
def describe(searcher: Searcher) -> dict:
    return {"path": str(searcher.path), "members": searcher.members, "dim": searcher.index.dim, "items": len(searcher),
            "fusion": searcher.default_fusion, "backbone": searcher.manifest.get("backbone", {}).get("name"),
            "kind": searcher.manifest.get("index", {}).get("kind")}


def measure_index(path: Path, catalogue: Catalogue | None, cfg: SpeedCfg) -> dict:
    """Sections 1, 2, 3 and 5 for one index directory."""
    before = rss_mb()
    searcher = load_searcher(path)
    memory = {"rss_before_load_mb": before, "rss_after_load_mb": rss_mb()}
    log.info("%s: query latency", path)
    latency = measure_latency(searcher, cfg)
    memory["rss_after_latency_mb"] = rss_mb()
    log.info("%s: embedding throughput", path)
    embedding = measure_embedding(searcher, catalogue, cfg)
    log.info("%s: index kinds", path)
    return {"info": describe(searcher), "latency": latency, "memory": memory, "embedding": embedding,
            "index_kinds": measure_stored_kinds(searcher, cfg)}


def measure_all(index_dirs: dict[str, Path], catalogue: Catalogue | None = None, cfg: SpeedCfg | None = None) -> dict:
    """Every speed and cost figure for the labelled index directories (the first is the baseline), as a
    json-serialisable dict whose ``markdown`` entry holds them as tables (see ``render_markdown``)."""
    cfg = cfg or SpeedCfg()
    faiss.omp_set_num_threads(cfg.threads or os.cpu_count() or 1)
    result: dict = {"machine": machine_facts(), "config": asdict(cfg)}
    per_index = {}
    for label, path in index_dirs.items():
        per_index[label] = measure_index(Path(path), catalogue, cfg)
        gc.collect()
    for section in ("info", "latency", "embedding", "index_kinds"):
        result["indexes" if section == "info" else section] = {k: v[section] for k, v in per_index.items()}
    result["latency_vs_baseline"] = latency_vs_baseline(result["latency"])
    if cfg.synthetic_n:
        log.info("synthetic index kinds at %d items", cfg.synthetic_n)
        result["synthetic"] = measure_synthetic(max(v["dim"] for v in result["indexes"].values()), cfg)
    result["memory"] = {"per_index": {k: v["memory"] for k, v in per_index.items()},
                        "final_rss_mb": rss_mb(), "peak_rss_mb": peak_rss_mb()}
    result["markdown"] = render_markdown(result)
    return result


# -- markdown --------------------------------------------------------------------------------------------------------
def fmt(figure: dict | float | None, digits: int = 1) -> str:
    if figure is None:
        return "–"
    if isinstance(figure, dict):
        low, high = f"{figure['min']:.{digits}f}", f"{figure['max']:.{digits}f}"
        return f"{figure['median']:.{digits}f} ({low}–{high})"
    return f"{figure:.{digits}f}"


def _table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


def machine_line(machine: dict) -> str:
    return (f"**Machine:** {machine['cpu']}, {machine['cores']} cores, {machine['ram_gb']} GB RAM; torch threads "
            f"{machine['torch_threads']}, faiss threads {machine['faiss_threads']}; load average at start "
            f"{machine['load_average'][0]} (a busy machine inflates the figures); {machine['date']}. "
            "Figures: median (min–max) over repeats.")


def _latency_rows(result: dict) -> Iterator[list[str]]:
    for label, modes in result["latency"].items():
        info = result["indexes"][label]
        for mode in MODES:
            f = modes[mode]
            yield [label, str(info["members"]), str(info["items"]), mode, fmt(f["p50_ms"]), fmt(f["p99_ms"]),
                   fmt(f["encode_ms"]), fmt(f["search_ms"]), fmt(f["encode_share"]["median"], 2),
                   fmt(result["latency_vs_baseline"][label][mode], 2)]


def _kind_rows(kinds: dict, label: str | None = None, disk: bool = True) -> Iterator[list[str]]:
    for kind, f in kinds.items():
        size = [fmt(f["size_mb"])] if disk else [fmt(f["rss_growth_mb"]["median"], 0)]
        yield ([label] if label else []) + [kind, fmt(f["build_s"], 2), *size, fmt(f["p50_ms"], 2),
                                            fmt(f["p99_ms"], 2), fmt(f.get("recall_at_k"), 3)]


def render_markdown(result: dict) -> str:
    """The machine line, then one table per section, baseline first."""
    k, parts = result["config"]["k"], [machine_line(result["machine"])]
    parts += ["### Query latency (end to end: encode + search, ms)", _table(
        ["index", "members", "items", "query", "p50 ms", "p99 ms", "encode ms", "search ms", "encode share",
         "p50 × baseline"], _latency_rows(result))]
    parts += ["### Catalogue embedding throughput (decode included)", _table(
        ["index", "members", "items encoded", "batch", "images/s"],
        ([label, str(result["indexes"][label]["members"]), str(f["items"]), str(f["batch_size"]),
          fmt(f["images_per_s"])] for label, f in result["embedding"].items()))]
    rows = [row for label, kinds in result["index_kinds"].items() for row in _kind_rows(kinds, label)]
    parts += [f"### Index kinds over the stored vectors (one query vector, k={k})", _table(
        ["index", "kind", "build s", "size MB", "search p50 ms", "search p99 ms", f"recall@{k} vs flat"], rows)]
    if "synthetic" in result:
        parts += _synthetic_markdown(result["synthetic"], k)
    parts += _memory_markdown(result["memory"])
    return "\n\n".join(parts) + "\n"


def _synthetic_markdown(synthetic: dict, k: int) -> list[str]:
    title = (f"### Synthetic index at {synthetic['n']:,} items (dim {synthetic['dim']}, {synthetic['dtype']} storage, "
             f"{synthetic['data']}; {synthetic['queries']} queries, builds × {synthetic['build_repeats']})")
    note = [f"Note: {synthetic['note']}."] if synthetic["note"] else []
    return [title, *note, _table(["kind", "build s", "RSS growth MB", "search p50 ms", "search p99 ms",
                                  f"recall@{k} vs flat"], _kind_rows(synthetic["kinds"], disk=False))]


def _memory_markdown(memory: dict) -> list[str]:
    rows = ([label, fmt(m["rss_after_load_mb"], 0), fmt(m["rss_after_latency_mb"], 0)]
            for label, m in memory["per_index"].items())
    return ["### Memory (resident set size)", _table(["index", "RSS after load MB", "RSS after latency run MB"], rows),
            f"Peak RSS of the whole run (ru_maxrss): {memory['peak_rss_mb']:.0f} MB."]


# -- command line ----------------------------------------------------------------------------------------------------
def parse_cfg(args: argparse.Namespace) -> SpeedCfg:
    given = {name: getattr(args, name) for name in ("repeats", "queries", "synthetic_n", "synthetic_dim", "threads")}
    if args.synthetic_kinds:
        given["synthetic_kinds"] = tuple(args.synthetic_kinds.split(","))
    return SpeedCfg(quick=args.quick, **{name: value for name, value in given.items() if value is not None})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--index", action="append", required=True, type=Path, help="index directory (repeatable)")
    parser.add_argument("--label", action="append", help="name of each --index, in order (default: folder name)")
    parser.add_argument("--catalogue", help="catalogue to time the embedding on (default: the index's own items)")
    parser.add_argument("--repeats", type=int)
    parser.add_argument("--queries", type=int)
    parser.add_argument("--synthetic-n", type=int)
    parser.add_argument("--synthetic-dim", type=int)
    parser.add_argument("--synthetic-kinds", help="comma-separated, e.g. flat,hnsw")
    parser.add_argument("--threads", type=int, help="faiss threads (default: all cores)")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("--quick", action="store_true",
                        help="fewer repeats/queries, 1024 images, 100k synthetic (flat and ivf)")
    args = parser.parse_args(argv)
    labels = args.label or [path.name for path in args.index]
    if len(labels) != len(args.index) or len(set(labels)) != len(labels):
        parser.error("give one distinct --label per --index")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    cfg = parse_cfg(args)
    try:
        catalogue = load_catalogue(args.catalogue, limit=cfg.embed_items)[0] if args.catalogue else None
        result = measure_all(dict(zip(labels, args.index)), catalogue, cfg)
    except EnclipError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    print(result["markdown"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
