"""Milvus as the vector store: the concatenated item vectors and their filter fields live in a Milvus collection.

The same code reaches embedded Milvus Lite (``milvus_uri`` is a ``.db`` file; one process at a time) and a Milvus
server or cluster (``http://host:19530``; a token is read from ``ENCLIP_MILVUS_TOKEN``, never stored). One row per
item: its position (the primary key, so positions stay the catalogue order as in the in-process backends), its
catalogue id, one VARCHAR per attribute, its cluster and its vector. Filters (:class:`Where`) become Milvus
expressions in which every value is a quoted, escaped literal, so a filter value can never change the expression;
attribute names map to fixed field names (``attr_0``..), so no user text names a field either.

Only what the search needs stays in this process (row counts and the field map). ``save`` writes an
``index_info.json`` that points at the URI and collection, and ``load`` reopens it. Rows added after the last save
are deleted by the first change made after reopening, because the service's changelog replays them (at positions
that may differ); until then searches ignore them.
"""

from __future__ import annotations

import logging
import os
import secrets
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np

from enclip.artifacts import read_json, write_json
from enclip.errors import EnclipError
from enclip.vectors.base import (
    INFO_FILE,
    IndexCfg,
    ItemFields,
    VectorIndex,
    Where,
    _check_k,
    _padded,
    cfg_from_params,
)

try:
    from pymilvus import DataType, MilvusClient
except ImportError as error:  # pragma: no cover - exercised only without the extra
    raise EnclipError("the Milvus store needs pymilvus and milvus-lite: pip install 'enclip[scale]'") from error

log = logging.getLogger(__name__)

POSITION, ITEM_ID, CLUSTER, VECTOR = "position", "item_id", "cluster", "vector"
MILVUS_INDEXES = {"flat": "FLAT", "hnsw": "HNSW"}
MAX_TEXT = 65535  # VARCHAR max_length, in bytes
MAX_TOPK = 16384  # Milvus refuses larger limits
WRITE_BATCH = 2000  # rows per insert call (bounded gRPC message size)
READ_BATCH = 1000  # primary keys per get call
TOKEN_ENV = "ENCLIP_MILVUS_TOKEN"


def quote(value: str) -> str:
    """``value`` as a Milvus string literal: backslash, double quote and line breaks escaped, so nothing in the value
    can end the literal (other characters are allowed raw by the expression grammar)."""
    escaped = (str(value).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\r", "\\r")
               .replace("\t", "\\t"))
    return f'"{escaped}"'


def where_expression(where: Where, field_names: dict[str, str]) -> str | None:
    """The Milvus filter for ``where``'s attributes and clusters (keys ANDed, values ORed); None when it allows
    nothing (a key without values). Keys are mapped to our own field names; unknown keys are an error."""
    parts = []
    for key, values in sorted(where.attributes.items()):
        if key not in field_names:
            raise EnclipError(f"unknown filter {key!r}; filterable attributes: {', '.join(sorted(field_names))}")
        if not values:
            return None
        parts.append(f"{field_names[key]} in [{', '.join(quote(v) for v in values)}]")
    if where.clusters is not None:
        if not len(where.clusters):
            return None
        parts.append(f"{CLUSTER} in [{', '.join(str(int(c)) for c in where.clusters)}]")
    return " and ".join(parts)


def positions_expression(allowed: np.ndarray, n: int) -> str:
    """The filter allowing exactly the ``allowed`` positions of 0..n-1, written the shorter way round."""
    if 2 * len(allowed) <= n:
        return f"{POSITION} in [{', '.join(map(str, allowed.tolist()))}]"
    excluded = np.setdiff1d(np.arange(n), allowed)
    return f"{POSITION} not in [{', '.join(map(str, excluded.tolist()))}]" if len(excluded) else ""


def connect(uri: str) -> MilvusClient:
    """A client for embedded Milvus Lite (a ``.db`` path) or a server (an http(s) URL)."""
    try:
        return MilvusClient(uri=uri, token=os.environ.get(TOKEN_ENV, ""))
    except Exception as error:  # pymilvus raises several types for an unreachable or locked store
        raise EnclipError(f"cannot open Milvus at {uri}: {error}") from error


def resolve_uri(uri: str | None) -> str:
    if not uri:
        raise EnclipError("the milvus store needs a URI: a .db file for embedded Milvus Lite or http://host:19530")
    if uri.startswith(("http://", "https://", "tcp://", "unix:")):
        return uri
    if not uri.endswith(".db"):
        raise EnclipError(f"milvus URI {uri!r} is neither a server URL (http://host:19530) nor a .db file for Lite")
    return str(Path(uri).expanduser().resolve())


def release_lite(uri: str) -> None:
    """Stop the embedded Milvus Lite server of ``uri`` in this process, so another process may open its files."""
    if uri.endswith(".db"):
        from milvus_lite.server_manager import server_manager_instance

        server_manager_instance.release_server(uri)


@contextmanager
def _quiet_lite_timestamps(uri: str) -> Iterator[None]:
    """pymilvus asks for a timestamp while waiting for a new index, which Milvus Lite does not implement: its gRPC
    server logs a traceback for every collection created, and pymilvus carries on. Keep that out of the user's log."""
    grpc_server = logging.getLogger("grpc._server")
    level = grpc_server.level
    if uri.endswith(".db"):
        grpc_server.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        grpc_server.setLevel(level)


class MilvusIndex(VectorIndex):
    """Inner-product search in a Milvus collection, FLAT (exact) or HNSW, with filters evaluated by Milvus."""

    kind = "milvus"

    def __init__(self, dim: int, cfg: IndexCfg | None = None) -> None:
        super().__init__(dim, cfg)
        if self.cfg.milvus_index not in MILVUS_INDEXES:
            raise EnclipError(f"milvus index {self.cfg.milvus_index!r} is not supported; use one of "
                              f"{sorted(MILVUS_INDEXES)}")
        self.cfg = replace(self.cfg, milvus_uri=resolve_uri(self.cfg.milvus_uri))
        self.uri = self.cfg.milvus_uri
        self.client = connect(self.uri)
        self.collection = f"{self.cfg.milvus_collection}_{time.strftime('%Y%m%d%H%M%S')}_{secrets.token_hex(3)}"
        self.field_names: dict[str, str] = {}  # attribute -> Milvus field
        self._live = 0  # rows in the collection
        self._saved_n: int | None = None  # rows when reopened; rows past it are stale until the first change

    # ----- the VectorIndex interface ------------------------------------------------------------------------------

    @property
    def n_removed(self) -> int:
        return self._n - self._live

    def add(self, vectors: np.ndarray, fields: ItemFields | None = None) -> None:
        rows = self._check_rows(vectors)
        if fields is None or len(fields) != len(rows):
            raise EnclipError("the milvus store needs the ids, attributes and clusters of the rows it adds "
                              f"(ItemFields for {len(rows)} rows, got {None if fields is None else len(fields)})")
        if not len(rows):
            return
        if not self.client.has_collection(self.collection):
            self._create_collection(sorted(fields.attributes))
        self._drop_stale_rows()
        for start in range(0, len(rows), WRITE_BATCH):  # batch by batch: Python lists of floats cost 6x the array
            self.client.insert(self.collection, self._records(rows, fields, start, min(len(rows), start + WRITE_BATCH)))
        self.client.flush(self.collection)
        self._n += len(rows)
        self._live += len(rows)

    def remove(self, positions: np.ndarray) -> None:
        positions = np.unique(self._check_positions(positions, "remove"))
        if not len(positions):
            return
        self._drop_stale_rows()
        for start in range(0, len(positions), READ_BATCH):
            self.client.delete(self.collection, ids=positions[start : start + READ_BATCH].tolist())
        self.client.flush(self.collection)
        self._live = self._count()

    def reconstruct(self, positions: np.ndarray | int) -> np.ndarray:
        """Stored vectors at ``positions`` (float32). Removed rows are deleted from Milvus, so asking for one fails."""
        index = self._check_positions(positions, "reconstruct")
        flat = np.atleast_1d(index)
        wanted = np.unique(flat)
        found: dict[int, list[float]] = {}
        for start in range(0, len(wanted), READ_BATCH):
            chunk = wanted[start : start + READ_BATCH].tolist()
            for row in self.client.get(self.collection, ids=chunk, output_fields=[VECTOR]):
                found[int(row[POSITION])] = row[VECTOR]
        missing = [int(p) for p in wanted if int(p) not in found]
        if missing:
            raise EnclipError(f"rows {missing[:5]} are not in the Milvus collection {self.collection} (removed?)")
        out = np.asarray([found[int(p)] for p in flat], dtype=np.float32).reshape(len(flat), self.dim)
        return out[0] if np.ndim(index) == 0 else out

    def search(
        self, queries: np.ndarray, k: int, allowed: np.ndarray | Where | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        queries = self._check_queries(queries)
        k = _check_k(k)
        expression = self._expression(allowed)
        empty = np.empty((len(queries), 0), np.float32), np.empty((len(queries), 0), np.int64)
        if expression is None or self._live == 0 or len(queries) == 0:
            return _padded(*empty, k)
        limit = min(k, MAX_TOPK)
        params = {"metric_type": "IP", "params": {"ef": max(self.cfg.hnsw_ef_search, limit)}
                  if self.cfg.milvus_index == "hnsw" else {}}
        results = self.client.search(self.collection, data=queries.tolist(), limit=limit, filter=expression,
                                     search_params=params, anns_field=VECTOR, output_fields=[])
        scores = np.full((len(queries), limit), -np.inf, dtype=np.float32)
        positions = np.full((len(queries), limit), -1, dtype=np.int64)
        for q, hits in enumerate(results):
            ranked = sorted((-float(h['distance']), int(h[POSITION])) for h in hits if int(h[POSITION]) < self._n)
            for j, (negative, position) in enumerate(ranked[:limit]):
                scores[q, j], positions[q, j] = -negative, position
        return _padded(scores, positions, k)

    def _search(self, queries, k, candidates):  # search() talks to Milvus directly
        raise NotImplementedError

    def save(self, directory: Path) -> None:
        """Make every row durable and indexed, then write index_info.json pointing at the URI and collection."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        if self.client.has_collection(self.collection):
            self.client.flush(self.collection)
            self.wait_for_index()
        info = self._info([])
        info.update(uri=self.uri, collection=self.collection, fields=self.field_names)
        write_json(directory / INFO_FILE, info)

    @classmethod
    def load(cls, directory: Path, mmap: bool = False) -> MilvusIndex:
        directory = Path(directory)
        info = read_json(directory / INFO_FILE)
        if info.get("kind") != cls.kind:
            raise EnclipError(f"{directory} holds a {info.get('kind')!r} index, not {cls.kind!r}; use load_index()")
        cfg = cfg_from_params({**info.get("params", {}), "milvus_uri": info["uri"]})
        index = cls(int(info["dim"]), cfg)
        index.collection, index.field_names = info["collection"], dict(info.get("fields", {}))
        index._n = index._saved_n = int(info["n"])
        if index._n and not index.client.has_collection(index.collection):
            raise EnclipError(f"the Milvus collection {index.collection} at {index.uri} is gone; rebuild the index")
        if index._n:
            index.client.load_collection(index.collection)
            index._live = index._count(f"{POSITION} < {index._n}")  # rows added after the save are not counted
        return index

    # ----- Milvus specifics ---------------------------------------------------------------------------------------

    def close(self) -> None:
        """Close the client; for Milvus Lite also stop its in-process server, releasing the data directory."""
        self.client.close()
        release_lite(self.uri)

    def drop(self) -> None:
        """Delete the collection and everything in it."""
        if self.client.has_collection(self.collection):
            self.client.drop_collection(self.collection)
        self._n = self._live = 0

    def wait_for_index(self, timeout: float = 600.0) -> None:
        """Block until the vector index covers every row. Milvus Lite builds indexes in a background thread after a
        flush (searches are exact until then, approximate after); a server reports pending rows."""
        deadline = time.monotonic() + timeout
        if self.uri.endswith(".db"):
            self._drain_lite_background(timeout)
            self.client.release_collection(self.collection)
            self.client.load_collection(self.collection)  # Lite builds any missing segment index inside load
            return
        while time.monotonic() < deadline:
            described = self.client.describe_index(self.collection, VECTOR) or {}
            if not described.get("pending_index_rows") and described.get("indexed_rows", 0) >= described.get(
                    "total_rows", 0):
                return
            time.sleep(1.0)
        raise EnclipError(f"Milvus did not finish indexing {self.collection} within {timeout:.0f} s")

    def _drain_lite_background(self, timeout: float) -> None:
        """Wait for Milvus Lite's background compaction and index build (a Lite internal: no public API says when
        it is done; without it results turn from exact to approximate a few seconds after a flush)."""
        from milvus_lite.server_manager import server_manager_instance

        entry = server_manager_instance._servers.get(os.path.abspath(self.uri))
        collection = entry[1].get_collection(self.collection) if entry else None
        wait = getattr(collection, "_wait_for_bg", None)
        if wait is None:
            log.warning("cannot wait for Milvus Lite's background index build; results may change shortly")
            return
        wait(timeout=timeout)

    def _create_collection(self, attributes: list[str]) -> None:
        self.field_names = {name: f"attr_{i}" for i, name in enumerate(attributes)}
        schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
        schema.add_field(POSITION, DataType.INT64, is_primary=True)
        schema.add_field(ITEM_ID, DataType.VARCHAR, max_length=MAX_TEXT)
        for field in self.field_names.values():
            schema.add_field(field, DataType.VARCHAR, max_length=MAX_TEXT)
        schema.add_field(CLUSTER, DataType.INT64)
        schema.add_field(VECTOR, DataType.FLOAT_VECTOR, dim=self.dim)
        index_params = self.client.prepare_index_params()
        build = ({"M": self.cfg.hnsw_m, "efConstruction": self.cfg.hnsw_ef_construction}
                 if self.cfg.milvus_index == "hnsw" else {})
        index_params.add_index(field_name=VECTOR, index_type=MILVUS_INDEXES[self.cfg.milvus_index],
                               metric_type="IP", params=build)
        with _quiet_lite_timestamps(self.uri):
            self.client.create_collection(self.collection, schema=schema, index_params=index_params,
                                          consistency_level="Strong")
        log.info("created Milvus collection %s at %s (%s)", self.collection, self.uri, self.cfg.milvus_index)

    def _records(self, rows: np.ndarray, fields: ItemFields, start: int, stop: int) -> list[dict]:
        """Rows start..stop of an add as Milvus records, at positions len(self)+start..."""
        unknown = sorted(set(fields.attributes) - set(self.field_names))
        if unknown:
            raise EnclipError(f"attributes {unknown} are not fields of the Milvus collection {self.collection}")
        clusters = fields.clusters if fields.clusters is not None else [-1] * len(rows)
        columns = {field: fields.attributes.get(name, [""] * len(rows)) for name, field in self.field_names.items()}
        vectors = rows[start:stop].astype(np.float32).tolist()
        records = []
        for i in range(start, stop):
            record = {POSITION: self._n + i, ITEM_ID: str(fields.ids[i]), CLUSTER: int(clusters[i]),
                      VECTOR: vectors[i - start]}
            record.update({field: str(values[i]) for field, values in columns.items()})
            records.append(record)
        return records

    def _drop_stale_rows(self) -> None:
        """Before the first change after reopening, delete rows added after the last save (see the module doc)."""
        if self._saved_n is None:
            return
        stale = self.client.query(self.collection, filter=f"{POSITION} >= {self._saved_n}", output_fields=[POSITION])
        if stale:
            log.info("Milvus: deleting %d rows added after the index was saved (the changelog re-adds them)",
                     len(stale))
            self.client.delete(self.collection, ids=[int(row[POSITION]) for row in stale])
            self.client.flush(self.collection)
        self._saved_n = None
        self._live = self._count()

    def _count(self, expression: str = "") -> int:
        result = self.client.query(self.collection, filter=expression, output_fields=["count(*)"])
        return int(result[0]["count(*)"])

    def _expression(self, allowed: np.ndarray | Where | None) -> str | None:
        """The filter expression for ``allowed`` ("" = every row; None = no row)."""
        if isinstance(allowed, Where):
            if allowed.attributes or allowed.clusters is not None:
                return where_expression(allowed, self.field_names)
            allowed = allowed.mask
        if allowed is None:
            return ""
        allowed = np.asarray(allowed)
        if allowed.dtype == bool:
            if allowed.shape != (self._n,):
                raise EnclipError(f"allowed mask must have one entry per row ({self._n}), got shape {allowed.shape}")
            positions = np.flatnonzero(allowed)
        elif allowed.size == 0:
            return None
        else:
            positions = np.unique(self._check_positions(allowed.reshape(-1), "allow"))
        return positions_expression(positions, self._n) if len(positions) else None

    def _info(self, files: list[str]) -> dict:
        info = super()._info(files)
        info["params"] = asdict(self.cfg)
        return info
