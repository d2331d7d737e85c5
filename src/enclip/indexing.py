"""Build a search index directory from a trained model and a catalogue: embed, fit routing, write.

The directory's layout belongs to :mod:`enclip.store`; this module computes what goes in it. The write is atomic
(a crash leaves the previous index in place), and ``--resume`` reuses the embedding shards already written by the
same job (same model, catalogue and precision; shards of another job are refused).
"""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from enclip.artifacts import read_json, recover_dir
from enclip.data.catalogue import Catalogue, SkipReport
from enclip.data.split import split_indices
from enclip.embed.catalogue import encode_catalogue
from enclip.embed.item_text import encode_distinct, encode_item_texts, encode_title_bank
from enclip.embed.runner import StageTimes
from enclip.embed.space import l2_normalise, to_joint
from enclip.errors import EnclipError
from enclip.models.device import resolve_device
from enclip.models.ensemble import EnsembleInfo, load_model, read_model_info
from enclip.search_request import CHANNELS
from enclip.store import IndexDir
from enclip.store.hubness import DEFAULT_K, TitleHubness
from enclip.store.bridge import TitleBridge, label_prototypes
from enclip.store.index_dir import BRIDGE, HUBNESS, KEYWORDS, TEXT_VECTORS
from enclip.store.items import item_fields
from enclip.store.keywords import build_keywords
from enclip.vectors import IndexCfg, ItemFields, create_index

log = logging.getLogger(__name__)


AUTO_FLAT_LIMIT = 2**24  # "auto" keeps exact flat search up to this many stored numbers (items x K*d)


def resolve_kind(cfg: IndexCfg, items: int, dim: int) -> IndexCfg:
    """``kind="auto"``: exact flat search while it is cheap, HNSW beyond.

    Flat search costs items x K*d multiply-adds per query: a single model over 44k items (11M) answers in about
    4.5 ms on two cores, but K=5 members (57M) would spend over 20 ms in the search alone. Past ``AUTO_FLAT_LIMIT``
    an HNSW graph keeps the search near a millisecond whatever K is (recall@10 against exact search is measured by
    ``bench/speed.py`` and reported in docs/RESULTS.md); candidates are re-scored exactly per member either way.
    """
    if cfg.kind == "milvus" and cfg.milvus_index == "auto":  # the same choice, made inside Milvus
        return replace(cfg, milvus_index="flat" if items * dim <= AUTO_FLAT_LIMIT else "hnsw")
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
    channels: tuple[str, ...] = CHANNELS  # search channels to build ("image" always; "text" and "keyword" optional)
    engine: str = "local"  # "local" (this process) or "ray" (an actor pool on a Ray cluster; enclip[scale])
    ray_address: str | None = None  # engine "ray": the cluster's HOST:PORT; None = a local cluster on 127.0.0.1
    hubness_k: int = DEFAULT_K  # title-bank neighbours of each item's hubness penalty (0: no penalty part)
    bridge: bool = True  # build the title bridge over the training items (enclip.store.bridge)
    bridge_labels: bool = True  # and give it label supports: each attribute value's direction among training photos

    def __post_init__(self) -> None:
        if isinstance(self.hubness_k, bool) or not isinstance(self.hubness_k, int) or self.hubness_k < 0:
            raise EnclipError(f"hubness_k is how many bank titles each item's hubness penalty averages: a whole "
                              f"number, 0 to build no penalty; got {self.hubness_k!r}")


def routing_table(model_dir: Path, info: EnsembleInfo, catalogue: Catalogue, vectors: np.ndarray,
                  members: int) -> dict[str, np.ndarray]:
    """Cluster centroids in the joint space, from the training clusters, and each item's cluster.

    Centroids are means of the joint item vectors of each cluster's training items, so text and image queries
    can be routed alike. Without training clusters there are no centroids and every item's cluster is -1.
    """
    if not info.clusters or not (model_dir / info.clusters / "item_ids.json").exists():
        return {"centroids": np.zeros((0, vectors.shape[1]), np.float32), "item_clusters": np.full(len(vectors), -1)}
    clustered_ids = read_json(model_dir / info.clusters / "item_ids.json")["ids"]
    assignments = np.load(model_dir / info.clusters / "assignments.npy")
    positions = np.array([catalogue.index_of(i) for i in clustered_ids])
    joint = to_joint(vectors, members)
    centroids = l2_normalise(np.stack([joint[positions[assignments == c]].mean(axis=0)
                                       for c in range(assignments.max() + 1)]))
    return {"centroids": centroids, "item_clusters": np.argmax(joint @ centroids.T, axis=1)}


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
    job = {"model": ensemble.fingerprint(), "catalogue": catalogue.fingerprint(), "dtype": cfg.index.dtype}
    if cfg.engine == "ray" and not cfg.trunk_cache:
        vectors = _encode_on_ray(model_dir, catalogue, work_dir, cfg, job, times)
    else:
        vectors = encode_catalogue(ensemble, catalogue, work_dir, batch_size=cfg.batch_size,
                                   shard_size=cfg.shard_size, dtype=cfg.index.dtype, trunk_cache=cfg.trunk_cache,
                                   times=times, job=job)
    log.info("embedding: %s", times.summary())
    text_vectors = None
    if "text" in cfg.channels:
        text_vectors = encode_item_texts(ensemble, catalogue, work_dir / "item-texts", batch_size=cfg.batch_size,
                                         dtype=cfg.index.dtype, job=job)
    hubness = bridge = None
    if cfg.hubness_k or cfg.bridge:  # both read the catalogue's title bank, encoded once
        titles, bank = encode_title_bank(ensemble, catalogue, work_dir / "title-bank", batch_size=cfg.batch_size,
                                         job=job)
        if cfg.hubness_k:
            hubness = TitleHubness.build(vectors, catalogue.titles, bank, titles, len(ensemble), cfg.hubness_k)
        if cfg.bridge:
            bridge = title_bridge(catalogue, vectors, bank, titles, len(ensemble),
                                  label_texts=_label_encoder(ensemble, work_dir / "label-texts", cfg.batch_size, job)
                                  if cfg.bridge_labels else None)
    write_index(model_dir, catalogue, vectors, out_dir, cfg, skip_report=skip_report, text_vectors=text_vectors,
                hubness=hubness, bridge=bridge,
                embed_items_per_second=round(times.items / max(1e-9, times.encode + times.read), 1),
                build_seconds=round(time.perf_counter() - started, 1))
    shutil.rmtree(work_dir, ignore_errors=True)
    return out_dir


def title_hubness(ensemble, catalogue: Catalogue, vectors: np.ndarray, work_dir: Path, k: int, *,
                  batch_size: int = 256, job: dict | None = None) -> TitleHubness:
    """Each item's hubness penalty: its (n, K*d) stored ``vectors`` against the catalogue's title bank, encoded
    resumably in ``work_dir`` by ``ensemble``."""
    titles, bank = encode_title_bank(ensemble, catalogue, work_dir, batch_size=batch_size, job=job)
    return TitleHubness.build(vectors, catalogue.titles, bank, titles, len(ensemble), k)


def title_bridge(catalogue: Catalogue, vectors: np.ndarray, bank: np.ndarray, bank_titles: list[str],
                 members: int, label_texts: Callable[[list[str]], np.ndarray] | None = None,
                 label_kind: str = "probe") -> TitleBridge | None:
    """The title bridge over the catalogue's training items (None when it has none): their titles' rows of the
    title ``bank`` and their stored (n, K*d) photo ``vectors``; with ``label_texts`` (values -> (L, K*d) text
    vectors), also a label support per attribute value the training items carry (its photo vector of
    ``label_kind``, see :func:`enclip.store.bridge.label_prototypes`)."""
    supports = split_indices(catalogue.ids)["train"]
    if not len(supports):
        log.warning("no training items (see enclip.data.split): the index has no title bridge")
        return None
    labels = None
    if label_texts is not None:
        started = time.perf_counter()
        values, means = label_prototypes(vectors, catalogue.attributes, supports, members, kind=label_kind)
        log.info("title bridge: %d label supports (%s) in %.1f s", len(values), label_kind,
                 time.perf_counter() - started)
        labels = (values, label_texts(values), means) if values else None
    return TitleBridge.build(bank, bank_titles, catalogue.titles, supports, vectors, members, labels=labels)


def _label_encoder(ensemble, work_dir: Path, batch_size: int, job: dict) -> Callable[[list[str]], np.ndarray]:
    """Attribute values -> their (L, K*d) member text vectors, encoded as text queries are (resumably)."""
    return lambda values: encode_distinct(ensemble, np.asarray(values, dtype=str), work_dir, batch_size=batch_size,
                                          job=job, desc="embed attribute values")


def _encode_on_ray(model_dir: Path, catalogue: Catalogue, work_dir: Path, cfg: IndexBuildCfg, job: dict,
                   times: StageTimes) -> np.ndarray:
    """The catalogue's vectors from the Ray engine, into the same resumable shards the local engine writes."""
    from enclip.embed.ray_engine import RayEmbedCfg, RayEmbedReport, encode_catalogue_ray

    report = RayEmbedReport()
    ray_cfg = RayEmbedCfg(address=cfg.ray_address, batch_size=cfg.batch_size, shard_size=cfg.shard_size)
    vectors = encode_catalogue_ray(model_dir, catalogue, work_dir, ray_cfg, dtype=cfg.index.dtype, job=job,
                                   report=report)
    times.items, times.encode = report.items, report.seconds
    return vectors


def write_index(model_dir: Path, catalogue: Catalogue, vectors: np.ndarray, out_dir: Path,
                cfg: IndexBuildCfg | None = None, skip_report: SkipReport | None = None,
                text_vectors: np.ndarray | None = None, hubness: TitleHubness | None = None,
                bridge: TitleBridge | None = None, **extra) -> Path:
    """Write an index directory atomically from already computed (n, K*d) item vectors (and item-text vectors, the
    items' hubness penalties and the title bridge)."""
    cfg = cfg or IndexBuildCfg()
    model_dir, out_dir = Path(model_dir), Path(out_dir)
    info = read_model_info(model_dir)
    members = len(info.members)
    backbone = read_json(model_dir / info.members[0] / "model.json")["backbone"]
    index_cfg = resolve_kind(cfg.index, len(vectors), vectors.shape[1])
    routing = routing_table(model_dir, info, catalogue, vectors, members)
    fields_of_rows = item_fields(catalogue, range(len(catalogue)), routing["item_clusters"])
    index = create_index(vectors.shape[1], index_cfg)
    index.add(vectors, fields_of_rows)
    fields = dict(members=members, member_dim=vectors.shape[1] // members, fusion=info.fusion, strategy=info.strategy,
                  data_fingerprint=catalogue.fingerprint(),
                  model_fingerprint=info.data_fingerprint, source=catalogue.source, backbone=backbone,
                  index=asdict(index_cfg), **extra)
    parts = _channel_parts(catalogue, text_vectors, index_cfg, cfg.channels, fields_of_rows)
    if hubness is not None:
        parts[HUBNESS] = hubness.save
    if bridge is not None:
        parts[BRIDGE] = bridge.save
    IndexDir.write(out_dir, model_dir=model_dir, catalogue=catalogue, vectors=index,
                   routing=routing, fields=fields, skip_report=skip_report, parts=parts)
    return out_dir


def _channel_parts(catalogue: Catalogue, text_vectors: np.ndarray | None, index_cfg: IndexCfg,
                   channels: tuple[str, ...], fields_of_rows: ItemFields | None = None) -> dict:
    """Writers of the optional channel parts the index directory gets (see enclip.store.index_dir)."""
    unknown = set(channels) - set(CHANNELS)
    if unknown:
        raise EnclipError(f"unknown channels {sorted(unknown)}; choose from {', '.join(CHANNELS)}")
    parts = {}
    if text_vectors is not None and "text" in channels:
        text_index = create_index(text_vectors.shape[1], index_cfg)
        text_index.add(text_vectors, fields_of_rows)
        parts[TEXT_VECTORS] = text_index.save
    if "keyword" in channels:
        parts[KEYWORDS] = lambda directory: build_keywords(directory, catalogue)
    return parts
