"""Embed a catalogue on a Ray cluster: the local engine's shards, encoded by a pool of actors across nodes.

The catalogue is cut into the runner's shards (``shard-00000.npz``.., the same positions, names and format as
:func:`enclip.embed.runner.run_sharded`), and the shards not yet on disk become the rows of a Ray Data dataset. An
actor pool (``map_batches``) loads the model once per worker and encodes one shard per call; the driver writes each
shard atomically as it arrives. So a killed worker costs only its shard in flight, which Ray runs again elsewhere,
and an interrupted job resumes from the shards on disk (``--resume``), with either engine. A shard is written
under its own name, so a shard encoded twice is written twice with the same content, never duplicated; the result is
assembled from the shard files and checked complete.

Workers need the model directory at the same path (shared storage, or the same machine); image bytes travel with
the dataset rows, so the catalogue itself needs no shared storage.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from enclip.data.catalogue import Catalogue
from enclip.embed.runner import _check_layout, _save_shard, load_shards
from enclip.errors import EnclipError
from enclip.ray_cluster import import_ray, ray_session

log = logging.getLogger(__name__)

ACTOR_START_TIMEOUT = 600  # seconds the whole pool may take to start (import torch, load the model)


@dataclass
class RayEmbedCfg:
    address: str | None = None  # Ray cluster to use (HOST:PORT of the head); None = a local cluster on 127.0.0.1
    workers: int | None = None  # actors in the pool; None = one per CPU of the cluster
    cpus_per_worker: float = 1.0  # CPUs each actor reserves (its torch threads)
    batch_size: int = 256  # images encoded per forward pass, as in the local engine
    shard_size: int = 1024  # images per shard (one actor call); smaller shards balance the workers better


@dataclass
class WorkerStats:
    items: int = 0
    seconds: float = 0.0  # encoding time inside the worker (decode + forward passes)
    shards: list[int] = field(default_factory=list)


@dataclass
class RayEmbedReport:
    """What the job did: the figures behind the benchmark and the tests."""

    items: int = 0  # items encoded by this job (resumed shards excluded)
    seconds: float = 0.0  # wall time from submitting the dataset to the last shard written
    workers: dict[str, WorkerStats] = field(default_factory=dict)  # "node:pid" -> what that actor encoded
    nodes: set[str] = field(default_factory=set)  # Ray node ids that encoded something

    @property
    def items_per_second(self) -> float:
        return self.items / self.seconds if self.seconds else 0.0


class ShardEncoder:
    """Ray Data actor: loads the model once, then turns one shard of image bytes into its vectors per call."""

    def __init__(self, model_dir: str, batch_size: int, dtype: str, threads: int) -> None:
        import torch

        from enclip.models.ensemble import load_model

        torch.set_num_threads(max(1, threads))
        self.model, _ = load_model(model_dir, device="cpu")
        self.batch_size = batch_size
        self.dtype = np.float16 if dtype == "float16" else np.float32
        ray = import_ray()
        self.worker = f"{ray.get_runtime_context().get_node_id()}:{os.getpid()}"

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        started = time.perf_counter()
        outputs = [self._encode(list(images)) for images in batch["images"]]
        seconds = time.perf_counter() - started
        return {"shard": np.asarray(batch["shard"], dtype=np.int64), "vectors": np.stack(outputs),  # one shard a call
                "worker": np.array([self.worker] * len(outputs)), "seconds": np.full(len(outputs), seconds)}

    def _encode(self, images: list[bytes]) -> np.ndarray:
        from enclip.data.images import decode_image

        chunks = []
        for start in range(0, len(images), self.batch_size):
            pictures = [decode_image(bytes(data))[0] for data in images[start : start + self.batch_size]]
            members = self.model.encode_pixels(self.model.pixels(pictures))  # as encode_catalogue does
            chunks.append(members.permute(1, 0, 2).reshape(len(pictures), -1).cpu().numpy().astype(self.dtype))
        return np.concatenate(chunks)


def shard_path(work_dir: Path, shard: int) -> Path:
    return Path(work_dir) / f"shard-{shard:05d}.npz"  # the runner's shard names


def encode_catalogue_ray(model_dir: str | Path, catalogue: Catalogue, work_dir: str | Path,
                         cfg: RayEmbedCfg | None = None, *, dtype: str = "float32", job: dict | None = None,
                         report: RayEmbedReport | None = None) -> np.ndarray:
    """(n, K*d) image embeddings of every catalogue item, equal to :func:`enclip.embed.catalogue.encode_catalogue`'s,
    encoded on a Ray cluster; shards already in ``work_dir`` (from either engine) are reused."""
    cfg = cfg or RayEmbedCfg()
    work_dir = Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    n = len(catalogue)
    _check_layout(work_dir, n, cfg.shard_size, job or {})
    n_shards = max(1, -(-n // cfg.shard_size))
    pending = [s for s in range(n_shards) if not shard_path(work_dir, s).exists()]
    report = report if report is not None else RayEmbedReport()
    if pending:
        log.info("Ray embedding: %d of %d shards to encode (%d already written)", len(pending), n_shards,
                 n_shards - len(pending))
        with ray_session(cfg.address) as ray:
            _run(ray, str(Path(model_dir).resolve()), catalogue, work_dir, pending, cfg, dtype, report)
    missing = [s for s in range(n_shards) if not shard_path(work_dir, s).exists()]
    if missing:
        raise EnclipError(f"Ray embedding finished without shards {missing[:10]}; run again with --resume")
    vectors = load_shards(work_dir, n_shards)["vectors"]
    if len(vectors) != n:
        raise EnclipError(f"{work_dir} holds {len(vectors)} vectors for {n} items; delete it and run again")
    return vectors


def _run(ray, model_dir: str, catalogue: Catalogue, work_dir: Path, pending: list[int], cfg: RayEmbedCfg,
         dtype: str, report: RayEmbedReport) -> None:
    rows = [{"shard": s, "images": [catalogue.image_bytes(i) for i in _positions(s, cfg.shard_size, len(catalogue))]}
            for s in pending]
    workers = cfg.workers or max(1, int(ray.cluster_resources().get("CPU", 1) // cfg.cpus_per_worker))
    workers = min(workers, len(pending))
    ray.data.DataContext.get_current().wait_for_min_actors_s = ACTOR_START_TIMEOUT  # every worker starts before the
    # first shard is handed out, so a fast worker does not take the whole job while the others load the model
    dataset = ray.data.from_items(rows, override_num_blocks=len(rows)).map_batches(
        ShardEncoder, batch_size=1, num_cpus=cfg.cpus_per_worker,
        compute=ray.data.ActorPoolStrategy(min_size=1, max_size=workers, initial_size=workers),
        fn_constructor_kwargs={"model_dir": model_dir, "batch_size": cfg.batch_size, "dtype": dtype,
                               "threads": max(1, int(cfg.cpus_per_worker))})
    # a lost actor is restarted and its shard retried: Ray Data's actors default to max_restarts=-1, max_task_retries=-1
    started = time.perf_counter()
    for batch in dataset.iter_batches(batch_size=1, batch_format="numpy", prefetch_batches=0):
        shard, vectors = int(batch["shard"][0]), np.asarray(batch["vectors"][0])
        expected = len(_positions(shard, cfg.shard_size, len(catalogue)))
        if len(vectors) != expected:
            raise EnclipError(f"shard {shard} came back with {len(vectors)} vectors, not {expected}")
        _save_shard(shard_path(work_dir, shard), {"vectors": vectors})
        stats = report.workers.setdefault(str(batch["worker"][0]), WorkerStats())
        stats.items += expected
        stats.seconds += float(batch["seconds"][0])
        stats.shards.append(shard)
        report.nodes.add(str(batch["worker"][0]).split(":")[0])
        report.items += expected
    report.seconds += time.perf_counter() - started


def _positions(shard: int, shard_size: int, n: int) -> range:
    return range(shard * shard_size, min(n, (shard + 1) * shard_size))
