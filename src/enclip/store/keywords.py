"""The keyword channel: BM25 over each item's title and attribute values, with tantivy (an on-disk Lucene-like
engine with add and delete; chosen over bm25s by ``bench/keywords.py``, see docs/RESULTS.md).

The index directory holds the built keyword index read-only. Opening it makes a private working copy, so that
live changes (applied again from the change log at every start) never alter the built artefact, exactly as the
vector index is changed only in memory. The copy lives in the temp folder, named by its process; it is removed when
the index is closed or collected, and a copy whose process was killed is removed by the next index opened.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
import weakref
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from enclip.data.catalogue import Catalogue
from enclip.data.item_text import item_text
from enclip.data.item_text import words as _words
from enclip.errors import EnclipError
from enclip.vectors import Where

TOKENIZER = "en_stem"  # lower-case words with English stemming: "shoes" finds "Shoe", "trainers" finds "Trainer"
WRITER_HEAP = 64_000_000  # bytes of indexing buffer (tantivy's minimum per thread is 15 MB)


def _schema(attribute_names: Sequence[str]):
    import tantivy

    builder = tantivy.SchemaBuilder()
    builder.add_text_field("text", tokenizer_name=TOKENIZER)
    builder.add_unsigned_field("position", stored=True, indexed=True, fast=True)
    for i, _ in enumerate(attribute_names):
        builder.add_text_field(f"attr{i}", tokenizer_name="raw")  # exact values, for filters
    return builder.build()


def _document(schema, position: int, title: str, attributes: dict[str, str], names: Sequence[str]):
    import tantivy

    fields = {"text": item_text(title, attributes), "position": int(position)}
    fields.update({f"attr{i}": attributes.get(name, "") for i, name in enumerate(names)})
    return tantivy.Document.from_dict(fields, schema)  # with the schema, position is typed as unsigned


def build_keywords(directory: Path, catalogue: Catalogue) -> None:
    """Write the keyword index of every catalogue row into ``directory`` (a part of an index directory)."""
    import tantivy

    names = sorted(catalogue.attributes)
    directory.mkdir(parents=True)
    schema = _schema(names)
    index = tantivy.Index(schema, path=str(directory))
    writer = index.writer(heap_size=WRITER_HEAP, num_threads=1)
    for position in range(len(catalogue)):
        item = catalogue.item(position)
        writer.add_document(_document(schema, position, item["title"], item["attributes"], names))
    writer.commit()
    writer.wait_merging_threads()
    (directory / "attributes.txt").write_text("\n".join(names), encoding="utf-8")


WORK_PREFIX = "enclip-keywords-"  # working copies: enclip-keywords-<pid of their process>-<random>


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def _remove_orphans(root: Path) -> None:
    """Working copies left by processes that ended without their finalizer (killed): a copy is removed only when
    the process its name records no longer runs."""
    for work in root.glob(f"{WORK_PREFIX}*-*"):
        pid = work.name[len(WORK_PREFIX):].split("-", 1)[0]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(work, ignore_errors=True)


class KeywordIndex:
    """BM25 search over the items' text, filtered like the vector channels; positions are the index's rows."""

    def __init__(self, built: Path) -> None:
        import tantivy

        _remove_orphans(Path(tempfile.gettempdir()))
        self._work = Path(tempfile.mkdtemp(prefix=f"{WORK_PREFIX}{os.getpid()}-"))
        self._cleanup = weakref.finalize(self, shutil.rmtree, self._work, True)
        shutil.copytree(built, self._work, dirs_exist_ok=True)
        self.names = (self._work / "attributes.txt").read_text(encoding="utf-8").split("\n")
        self.names = [name for name in self.names if name]
        self._index = tantivy.Index.open(str(self._work))
        self._writer = None
        self._lock = threading.Lock()

    def close(self) -> None:
        self._writer = None
        self._cleanup()

    def search(self, text: str, k: int, where: Where | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(positions, BM25 scores) of the best ``k`` items for ``text``, best first; empty when no word matches."""
        query = self._query(text, where)
        if query is None:
            return np.empty(0, np.int64), np.empty(0, np.float32)
        clustered = where is not None and bool(where.clusters)  # clusters are masked after the search: fetch more
        return self._run(query, 4 * k if clustered else k, where, k)

    def score(self, text: str, positions: np.ndarray) -> np.ndarray:
        """BM25 score of ``text`` for each of the distinct ``positions`` (0 where no word matches)."""
        import tantivy

        query = self._query(text, None)
        out = np.zeros(len(positions), np.float32)
        if query is None or not len(positions):
            return out
        schema = self._index.schema
        restricted = tantivy.Query.boolean_query([
            (tantivy.Occur.Must, query),
            (tantivy.Occur.Must, tantivy.Query.term_set_query(schema, "position", [int(p) for p in positions]))])
        found, scores = self._run(restricted, len(positions), None, len(positions))
        sorter = np.argsort(positions, kind="stable")
        out[sorter[np.searchsorted(positions, found, sorter=sorter)]] = scores
        return out

    def _query(self, text: str, where: Where | None):
        import tantivy

        words = _words(text)
        if not words:
            return None
        query = self._index.parse_query(" ".join(words), ["text"])  # only plain words: no query syntax from users
        if where is None or not where.attributes:
            return query
        clauses = [(tantivy.Occur.Must, query)]
        for key, values in where.attributes.items():
            if key not in self.names:
                raise EnclipError(f"the keyword index has no attribute {key!r}; rebuild the index")
            field = f"attr{self.names.index(key)}"
            clauses.append((tantivy.Occur.Must, tantivy.Query.term_set_query(self._index.schema, field, list(values))))
        return tantivy.Query.boolean_query(clauses)

    def _run(self, query, limit: int, where: Where | None, k: int) -> tuple[np.ndarray, np.ndarray]:
        searcher = self._index.searcher()
        hits = searcher.search(query, limit=max(1, limit), count=False).hits
        positions = np.array(searcher.fast_field_values("position", [address for _, address in hits]) if hits else [],
                             dtype=np.int64)
        scores = np.array([score for score, _ in hits], dtype=np.float32)
        if where is not None and where.mask is not None and where.clusters:  # clusters are not indexed: mask them
            keep = where.mask[positions]
            positions, scores = positions[keep][:k], scores[keep][:k]
        return positions, scores

    def add(self, positions: Sequence[int], items: Sequence[dict]) -> None:
        """Index new rows (live additions)."""
        with self._lock:
            writer = self._writer_open()
            for position, item in zip(positions, items):
                writer.add_document(_document(self._index.schema, position, str(item.get("title", "")),
                                              dict(item.get("attributes") or {}), self.names))
            self._commit(writer)

    def remove(self, positions: Sequence[int]) -> None:
        """Drop rows (live removals)."""
        with self._lock:
            import tantivy

            writer = self._writer_open()
            schema = self._index.schema
            for position in positions:  # a query, not a raw term: only a query types the value as unsigned
                writer.delete_documents_by_query(tantivy.Query.term_query(schema, "position", int(position)))
            self._commit(writer)

    def _writer_open(self):
        if self._writer is None:
            self._writer = self._index.writer(heap_size=WRITER_HEAP, num_threads=1)
        return self._writer

    def _commit(self, writer) -> None:
        writer.commit()
        self._index.reload()
