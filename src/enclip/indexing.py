"""Build a search index directory from a trained model and a catalogue.

The directory is self-describing and self-contained (STYLE 7): ``index.json`` (manifest: model, members, data
fingerprint, versions, build times), ``model/`` (a copy of the trained model), ``items.parquet`` (ids, titles,
attributes, image bytes), ``vectors/`` (the vector index over each item's concatenated member embeddings) and
``routing.npz`` (cluster centroids in the joint space, and each item's cluster). It is written atomically:
a crash leaves the previous index in place, and ``--resume`` reuses the embedding shards already written.
"""

from __future__ import annotations

import logging
import shutil
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from enclip.artifacts import atomic_dir, manifest, read_json, recover_dir, write_json
from enclip.data.catalogue import Catalogue, SkipReport
from enclip.embed.catalogue import encode_catalogue
from enclip.embed.runner import StageTimes
from enclip.errors import EnclipError
from enclip.models.device import resolve_device
from enclip.models.ensemble import EnsembleInfo, load_model, read_model_info
from enclip.vectors import IndexCfg, create_index

log = logging.getLogger(__name__)


AUTO_FLAT_LIMIT = 2**24  # "auto" keeps exact flat search up to this many stored numbers (items x K*d)


def resolve_kind(cfg: IndexCfg, items: int, dim: int) -> IndexCfg:
    """``kind="auto"``: exact flat search while it is cheap, HNSW beyond.

    Flat search costs items x K*d multiply-adds per query: a single model over 44k items (11M) answers in about
    4.5 ms on two cores, but K=5 members (57M) would spend over 20 ms in the search alone. Past ``AUTO_FLAT_LIMIT``
    an HNSW graph keeps the search near a millisecond whatever K is (recall@10 against exact search is measured by
    ``bench/speed.py`` and reported in docs/RESULTS.md); candidates are re-scored exactly per member either way.
    """
    if cfg.kind != "auto":
        return cfg
    kind = "flat" if items * dim <= AUTO_FLAT_LIMIT else "hnsw"
    log.info("index kind auto: %s for %d items x %d dimensions", kind, items, dim)
    return replace(cfg, kind=kind)


@dataclass
class IndexBuildCfg:
    index: IndexCfg = field(default_factory=lambda: IndexCfg(kind="auto"))  # vector index kind and storage precision
    batch_size: int = 256  # images encoded per batch
    shard_size: int = 4096  # images per resumable shard
    device: str = "auto"  # "auto", "cpu", "cuda"
    trunk_cache: str | None = None  # keep catalogue image trunk outputs here; models on the same trunk reuse them


def items_table(catalogue: Catalogue) -> pa.Table:
    columns = {"id": catalogue.ids, "title": catalogue.titles}
    columns.update({f"attr.{name}": values for name, values in catalogue.attributes.items()})
    columns["image"] = pa.array([catalogue.image_bytes(i) for i in range(len(catalogue))], type=pa.binary())
    return pa.table(columns)


class ArrowImages:
    """Image bytes read on demand from an Arrow column (a list of 44k Python bytes objects would cost ~100 MB more),
    plus any images appended by live index edits."""

    def __init__(self, column: pa.ChunkedArray):
        self._column = column.combine_chunks()
        self._added: list[bytes] = []

    def __len__(self) -> int:
        return len(self._column) + len(self._added)

    def __getitem__(self, i: int) -> bytes:
        if i < 0:
            i += len(self)
        return self._column[i].as_py() if i < len(self._column) else self._added[i - len(self._column)]

    def __iter__(self):
        return (self[i] for i in range(len(self)))

    def append(self, image: bytes) -> None:
        self._added.append(image)


def catalogue_from_table(table: pa.Table, source: str) -> Catalogue:
    data = table.drop_columns(["image"]).to_pydict()
    attributes = {name[5:]: values for name, values in data.items() if name.startswith("attr.")}
    return Catalogue(ids=data["id"], titles=data["title"], attributes=attributes,
                     images=ArrowImages(table.column("image")), source=source)


def routing_table(model_dir: Path, info: EnsembleInfo, catalogue: Catalogue, vectors: np.ndarray,
                  members: int) -> dict[str, np.ndarray]:
    """Cluster centroids in the joint (concatenated) space, from the training clusters, and each item's cluster.

    Centroids are means of the fused item vectors of each cluster's training items, so text and image queries
    can be routed alike. Without training clusters, each member gets a pseudo-cluster of its own (uniform routing).
    """
    if not info.clusters or not (model_dir / info.clusters / "item_ids.json").exists():
        return {"centroids": np.zeros((0, vectors.shape[1]), np.float32), "item_clusters": np.full(len(vectors), -1)}
    clustered_ids = read_json(model_dir / info.clusters / "item_ids.json")["ids"]
    assignments = np.load(model_dir / info.clusters / "assignments.npy")
    positions = np.array([catalogue.index_of(i) for i in clustered_ids])
    fused = vectors.astype(np.float32) / np.sqrt(members)
    centroids = np.stack([fused[positions[assignments == c]].mean(axis=0) for c in range(assignments.max() + 1)])
    centroids /= np.maximum(np.linalg.norm(centroids, axis=1, keepdims=True), 1e-12)
    return {"centroids": centroids.astype(np.float32), "item_clusters": np.argmax(fused @ centroids.T, axis=1)}


def copy_model(model_dir: Path, target: Path) -> None:
    """Copy what loading needs (manifests, heads, clusters); not caches, checkpoints or contact sheets."""
    ignore = shutil.ignore_patterns("cache", "checkpoint.pt*", "*.png", "*.tmp")
    shutil.copytree(model_dir, target, ignore=ignore)


def build_index(model_dir: str | Path, catalogue: Catalogue, out_dir: str | Path, cfg: IndexBuildCfg | None = None,
                resume: bool = True, skip_report: SkipReport | None = None) -> Path:
    """Embed ``catalogue`` with the model in ``model_dir`` and write a search index to ``out_dir``."""
    cfg = cfg or IndexBuildCfg()
    model_dir, out_dir = Path(model_dir), Path(out_dir)
    recover_dir(out_dir)
    work_dir = out_dir.parent / f".{out_dir.name}.work"
    if not resume:
        shutil.rmtree(work_dir, ignore_errors=True)
    started = time.perf_counter()
    ensemble, info = load_model(model_dir, device=str(resolve_device(cfg.device)))
    times = StageTimes()
    vectors = encode_catalogue(ensemble, catalogue, work_dir, batch_size=cfg.batch_size, shard_size=cfg.shard_size,
                               dtype=cfg.index.dtype, trunk_cache=cfg.trunk_cache, times=times)
    log.info("embedding: %s", times.summary())
    write_index(model_dir, catalogue, vectors, out_dir, cfg, skip_report=skip_report,
                embed_items_per_second=round(times.items / max(1e-9, times.encode + times.read), 1),
                build_seconds=round(time.perf_counter() - started, 1))
    shutil.rmtree(work_dir, ignore_errors=True)
    return out_dir


def write_index(model_dir: Path, catalogue: Catalogue, vectors: np.ndarray, out_dir: Path,
                cfg: IndexBuildCfg | None = None, skip_report: SkipReport | None = None, **extra) -> Path:
    """Write an index directory atomically from already computed (n, K*d) item vectors."""
    cfg = cfg or IndexBuildCfg()
    model_dir, out_dir = Path(model_dir), Path(out_dir)
    info = read_model_info(model_dir)
    members = len(info.members)
    routing = routing_table(model_dir, info, catalogue, vectors, members)
    backbone = read_json(model_dir / info.members[0] / "model.json")["backbone"]
    index_cfg = resolve_kind(cfg.index, len(vectors), vectors.shape[1])
    with atomic_dir(out_dir) as tmp:
        index = create_index(vectors.shape[1], index_cfg)
        index.add(vectors)
        index.save(tmp / "vectors")
        pq.write_table(items_table(catalogue), tmp / "items.parquet")
        np.savez(tmp / "routing.npz", **routing)
        copy_model(model_dir, tmp / "model")
        if skip_report is not None:
            skip_report.write(tmp / "skip_report.json")
        write_json(tmp / "index.json", manifest(
            "index", members=members, member_dim=vectors.shape[1] // members, items=len(catalogue),
            fusion=info.fusion, strategy=info.strategy, weights=info.weights, data_fingerprint=catalogue.fingerprint(),
            model_fingerprint=info.data_fingerprint, source=catalogue.source, backbone=backbone,
            index=asdict(index_cfg), **extra,
        ))
    return out_dir


def check_index_dir(path: Path) -> Path:
    path = Path(path)
    if not (path / "index.json").exists():
        raise EnclipError(f"{path} is not an enclip index (no index.json); build one with `enclip index`")
    return path
