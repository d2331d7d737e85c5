"""The index directory's layout, written and read here and nowhere else.

An index directory is self-describing and self-contained (STYLE 7)::

    index.json        manifest: model, members, data fingerprint, versions, build figures
    model/            a copy of the trained model (what loading needs; no caches or checkpoints)
    items.parquet     ids, titles, attributes (``attr.NAME``) and image bytes
    vectors/          the vector index over each item's concatenated member embeddings (the image channel)
    text_vectors/     the same over each item's text (title + attributes) by the text tower (item-text channel)
    keywords/         a BM25 index of each item's text (keyword channel)
    hubness/          each item's hubness penalty and the title bank it was measured on (enclip.store.hubness)
    bridge/           the training items' titles and photo vectors, for text queries (enclip.store.bridge)
    routing.npz       cluster centroids in the joint space, and each item's cluster
    skip_report.json  catalogue rows that could not be used, by reason

It is replaced atomically (:func:`enclip.artifacts.atomic_dir`): readers see the old complete directory or the new
one. The admin change log is deliberately *not* inside: it lives beside the directory (``INDEX.changes.jsonl``), so
rebuilding an index never deletes acknowledged changes; the service replays them onto the new index.
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from enclip.artifacts import atomic_dir, fsync_path, manifest, read_json, recover_dir, write_json
from enclip.errors import EnclipError
from enclip.store.items import LiveCatalogue, items_table
from enclip.vectors import VectorIndex, load_index

log = logging.getLogger(__name__)

MANIFEST = "index.json"
MODEL = "model"
ITEMS = "items.parquet"
VECTORS = "vectors"
ROUTING = "routing.npz"
SKIP_REPORT = "skip_report.json"
TEXT_VECTORS = "text_vectors"  # optional part: the item-text channel
KEYWORDS = "keywords"  # optional part: the keyword channel
HUBNESS = "hubness"  # optional part: each item's hubness penalty for text queries
BRIDGE = "bridge"  # optional part: training titles and their photo vectors, for text queries

LEGACY_CHANGELOG = "changes.jsonl"  # where enclip < 0.2 kept the admin log, inside the replaced directory

Writer = Callable[[Path], None]  # writes one more part of the directory into the given temporary directory


def changelog_path(index: str | Path) -> Path:
    """Where the admin change log of the index at ``index`` lives: beside it, outside what a rebuild replaces."""
    index = Path(index)
    return index.parent / f"{index.name}.changes.jsonl"


class IndexDir:
    """A built index directory, opened for reading. ``IndexDir.open(path)`` repairs an interrupted swap first."""

    def __init__(self, path: Path, manifest: dict):
        self.path = path
        self.manifest = manifest

    @classmethod
    def open(cls, path: str | Path) -> IndexDir:
        path = Path(path)
        recover_dir(path)  # a crash between the swap's two renames leaves the old copy under a backup name
        if not (path / MANIFEST).exists():
            raise EnclipError(f"{path} is not an enclip index (no {MANIFEST}); build one with `enclip index`")
        _move_legacy_changelog(path)
        return cls(path, read_json(path / MANIFEST))

    @property
    def changelog_path(self) -> Path:
        return changelog_path(self.path)

    @property
    def model_dir(self) -> Path:
        return self.path / MODEL

    def load_items(self) -> LiveCatalogue:
        return LiveCatalogue.from_table(pq.read_table(self.path / ITEMS), str(self.path))

    def load_vectors(self) -> VectorIndex:
        return load_index(self.path / VECTORS)

    def load_text_vectors(self) -> VectorIndex | None:
        """The item-text channel's vectors, or None for an index built without it."""
        return load_index(self.path / TEXT_VECTORS) if (self.path / TEXT_VECTORS).is_dir() else None

    def load_keywords(self):
        """The keyword channel (a private working copy), or None for an index built without it."""
        if not (self.path / KEYWORDS).is_dir():
            return None
        from enclip.store.keywords import KeywordIndex

        return KeywordIndex(self.path / KEYWORDS)

    def load_hubness(self):
        """Each item's hubness penalty (:class:`enclip.store.hubness.TitleHubness`), or None for an index without it."""
        if not (self.path / HUBNESS).is_dir():
            return None
        from enclip.store.hubness import TitleHubness

        return TitleHubness.load(self.path / HUBNESS)

    def load_bridge(self):
        """The title bridge (:class:`enclip.store.bridge.TitleBridge`), or None for an index without it."""
        if not (self.path / BRIDGE).is_dir():
            return None
        from enclip.store.bridge import TitleBridge

        return TitleBridge.load(self.path / BRIDGE)

    def load_routing(self) -> tuple[np.ndarray, np.ndarray]:
        """(centroids (c, K*d), item_clusters (n,)); no centroids and clusters -1 when the model has none."""
        with np.load(self.path / ROUTING) as routing:
            return routing["centroids"], routing["item_clusters"]

    def part(self, name: str) -> Path:
        """The path of an optional part (e.g. a channel's files); it may not exist in older indexes."""
        return self.path / name

    @staticmethod
    def write(out: str | Path, *, model_dir: Path, catalogue, vectors: VectorIndex, routing: dict[str, np.ndarray],
              fields: dict, skip_report=None, parts: dict[str, Writer] | None = None) -> IndexDir:
        """Write a complete index directory at ``out``, atomically replacing any previous one.

        ``fields`` go into the manifest; ``parts`` maps extra part names to functions that write them (channels).
        """
        out = Path(out)
        recover_dir(out)
        if out.exists():
            _move_legacy_changelog(out)
        with atomic_dir(out) as tmp:
            vectors.save(tmp / VECTORS)
            pq.write_table(items_table(catalogue), tmp / ITEMS)
            np.savez(tmp / ROUTING, **routing)
            copy_model(model_dir, tmp / MODEL)
            for name, write_part in (parts or {}).items():
                write_part(tmp / name)
            if skip_report is not None:
                skip_report.write(tmp / SKIP_REPORT)
            write_json(tmp / MANIFEST, manifest("index", items=len(catalogue), parts=sorted(parts or {}), **fields))
        return IndexDir.open(out)


def copy_model(model_dir: Path, target: Path) -> None:
    """Copy what loading needs (manifests, heads, clusters); not caches, checkpoints or contact sheets."""
    ignore = shutil.ignore_patterns("cache", "checkpoint.pt*", "*.png", "*.tmp", ".*.tmp-*")
    shutil.copytree(model_dir, target, ignore=ignore)


def _move_legacy_changelog(path: Path) -> None:
    """Carry an admin log kept inside the directory (older layout) out beside it, before a rebuild can replace it."""
    inside, beside = path / LEGACY_CHANGELOG, changelog_path(path)
    if not inside.exists():
        return
    if beside.exists():
        raise EnclipError(f"{path} has two admin change logs, {inside} and {beside}; merge them by hand (append "
                          f"the lines of the first to the second, renumbering seq) and delete {inside}")
    os.rename(inside, beside)
    fsync_path(path)
    fsync_path(path.parent)
    log.warning("moved the admin change log out of the index directory to %s, where rebuilds cannot delete it", beside)
