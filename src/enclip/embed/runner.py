"""Read → encode → write in shards, resumable: the runner behind feature caching and catalogue embedding.

Each shard is written atomically once complete, so an interrupted run re-encodes at most one shard. When the
encoder runs on an accelerator, a reader thread decodes and preprocesses the next batch while the current one is
encoded; on the CPU the encoder's threads already fill the cores, and reading in between batches is faster.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
from tqdm.auto import tqdm

from enclip.artifacts import atomic_file, read_json, write_json
from enclip.errors import EnclipError

log = logging.getLogger(__name__)

Reader = Callable[[np.ndarray], object]  # positions -> batch input (decoded, preprocessed)
Encoder = Callable[[object], dict[str, np.ndarray]]  # batch input -> named arrays, first axis = batch


@dataclass
class StageTimes:
    read: float = 0.0  # seconds the encoder waited for the reader (all of the reading when it is inline)
    encode: float = 0.0
    write: float = 0.0
    items: int = 0
    extra: dict = field(default_factory=dict)

    def summary(self) -> str:
        total = self.read + self.encode + self.write
        rate = self.items / total if total else 0.0
        return (f"{self.items} items in {total:.1f}s ({rate:.0f}/s): wait-for-read {self.read:.1f}s, "
                f"encode {self.encode:.1f}s, write {self.write:.1f}s")


def prefetch_pays(device) -> bool:
    """Whether to read the next batch in a thread while this one encodes on ``device``.

    On a GPU, yes: decoding overlaps the device's work. On the CPU, no: torch's threads already occupy every core,
    and a reader thread beside them stalls their parallel regions. Trunk caching on 2 cores ran 490 images/s with
    inline reads against 434 with the thread (RESULTS.md, issue 14, seventh pass).
    """
    return getattr(device, "type", str(device)) != "cpu"


def _inline(reader: Reader, batches: list[np.ndarray]) -> Iterator[tuple[np.ndarray, object]]:
    for batch in batches:
        yield batch, reader(batch)


def _batches(positions: np.ndarray, batch_size: int) -> Iterator[np.ndarray]:
    for start in range(0, len(positions), batch_size):
        yield positions[start : start + batch_size]


def _prefetch(reader: Reader, batches: list[np.ndarray], depth: int = 2) -> Iterator[tuple[np.ndarray, object]]:
    """Run ``reader`` one batch ahead in a thread; exceptions surface in the consumer."""
    slots: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def work():
        try:
            for batch in batches:
                if stop.is_set():
                    return
                slots.put((batch, reader(batch)))
        except BaseException as error:  # handed to the consumer, which re-raises it
            slots.put(error)
            return
        slots.put(None)

    thread = threading.Thread(target=work, daemon=True)
    thread.start()
    try:
        while (got := slots.get()) is not None:
            if isinstance(got, BaseException):
                raise got
            yield got
    finally:
        stop.set()


def _save_shard(path: Path, arrays: dict[str, np.ndarray]) -> None:
    with atomic_file(path) as handle:
        np.savez(handle, **arrays)


def run_sharded(
    n: int,
    reader: Reader,
    encoder: Encoder,
    work_dir: Path,
    *,
    batch_size: int = 256,
    shard_size: int = 4096,
    desc: str = "encode",
    times: StageTimes | None = None,
    job: dict | None = None,
    prefetch: bool = True,
) -> dict[str, np.ndarray]:
    """Encode positions 0..n-1 shard by shard into ``work_dir``; shards already there are reused (resume).

    ``job`` identifies what is encoded (e.g. model and catalogue fingerprints): shards of another job are refused.
    ``prefetch``: read each next batch in a thread during the encoding (see ``prefetch_pays``).
    """
    work_dir = Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    _check_layout(work_dir, n, shard_size, job or {})
    times = times if times is not None else StageTimes()
    n_shards = max(1, -(-n // shard_size))
    done = sum((work_dir / f"shard-{s:05d}.npz").exists() for s in range(n_shards))
    if done:
        log.info("%s: resuming, %d of %d shards already written", desc, done, n_shards)
    with tqdm(total=n, desc=desc, unit="item", smoothing=0.1) as bar:
        for s in range(n_shards):
            path = work_dir / f"shard-{s:05d}.npz"
            positions = np.arange(s * shard_size, min(n, (s + 1) * shard_size))
            if path.exists():
                bar.update(len(positions))
                continue
            _encode_shard(positions, reader, encoder, path, batch_size, times, bar, prefetch)
    return load_shards(work_dir, n_shards)


def _check_layout(work_dir: Path, n: int, shard_size: int, job: dict) -> None:
    """Shards are only reusable by the job that wrote them: record its size and identity, refuse a different one."""
    layout = {"items": n, "shard_size": shard_size, "job": job}
    path = work_dir / "shards.json"
    if path.exists():
        found = read_json(path)
        if found != json.loads(json.dumps(layout)):
            differ = sorted(key for key in ("items", "shard_size") if found.get(key) != layout[key])
            differ += sorted(f"job.{key}" for key in {*job, *found.get("job", {})}
                             if found.get("job", {}).get(key) != job.get(key))
            raise EnclipError(
                f"{work_dir} holds shards of another job (it differs in {', '.join(differ)}: {found} against "
                f"{layout}); run without --resume to start afresh, or delete the directory"
            )
    elif any(work_dir.glob("shard-*.npz")):
        raise EnclipError(f"{work_dir} holds shards written by an older enclip without a layout record; delete it")
    else:
        write_json(path, layout)


def _encode_shard(positions, reader, encoder, path, batch_size, times, bar, prefetch) -> None:
    parts: dict[str, list[np.ndarray]] = {}
    waited = time.perf_counter()
    for batch, inputs in (_prefetch if prefetch else _inline)(reader, list(_batches(positions, batch_size))):
        started = time.perf_counter()
        times.read += started - waited
        for name, array in encoder(inputs).items():
            parts.setdefault(name, []).append(array)
        waited = time.perf_counter()
        times.encode += waited - started
        times.items += len(batch)
        bar.update(len(batch))
    started = time.perf_counter()
    _save_shard(path, {name: np.concatenate(chunks) for name, chunks in parts.items()})
    times.write += time.perf_counter() - started
    waited = time.perf_counter()


def load_shards(work_dir: Path, n_shards: int) -> dict[str, np.ndarray]:
    parts: dict[str, list[np.ndarray]] = {}
    for s in range(n_shards):
        with np.load(Path(work_dir) / f"shard-{s:05d}.npz") as shard:
            for name in shard.files:
                parts.setdefault(name, []).append(shard[name])
    return {name: np.concatenate(chunks) for name, chunks in parts.items()}
