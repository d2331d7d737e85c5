"""Durable log of catalogue changes made through the admin API.

The in-memory index is rebuilt from its artefacts at start-up, so every admin change must also live on
disk. Each change is one JSON line carrying a sequence number; it is flushed and fsync'd *before* the index is
touched and before the client is answered, so an acknowledged change survives any crash, and `replay` re-applies
the whole log when the service starts again. A crash in the middle of an append leaves a torn last line: it was
never acknowledged, so it is ignored (with a warning) and cut off before the next append.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from enclip.artifacts import fsync_path
from enclip.errors import EnclipError

log = logging.getLogger(__name__)

UPSERT = "upsert"
DELETE = "delete"


class MutableCatalogue(Protocol):
    """The part of the searcher that replay needs."""

    def add_items(self, items: list[dict], images: list[bytes]) -> None: ...
    def remove_items(self, ids: list[str]) -> None: ...
    def item(self, item_id: str) -> dict: ...


@dataclass(frozen=True)
class LogContents:
    """What a changelog file holds: its intact records, and where the intact part ends."""

    records: list[dict]  # complete records, in file order
    good_bytes: int  # length of the intact prefix; anything after it is a torn append
    torn: bool  # True when a partial last line was found


def upsert_record(item: dict, image: bytes) -> dict:
    """The record for adding or replacing one item (without its sequence number)."""
    return {"op": UPSERT, "item": item, "image_b64": base64.b64encode(image).decode("ascii")}


def delete_record(item_id: str) -> dict:
    """The record for removing one item (without its sequence number)."""
    return {"op": DELETE, "id": item_id}


def read_log(path: Path) -> LogContents:
    """Parse a changelog, tolerating only a torn *last* line.

    An append is acknowledged only after its whole line, newline included, is on disk, so a last line that lacks
    its newline or does not parse was never acknowledged and is dropped. A damaged line anywhere else means the
    file was edited or the disk is failing; skipping it would lose acknowledged changes, so that is an error.
    """
    if not path.exists():
        return LogContents(records=[], good_bytes=0, torn=False)
    data = path.read_bytes()
    lines = data.split(b"\n")  # the final element is b"" when the file ends with a newline
    records: list[dict] = []
    position = 0
    for number, line in enumerate(lines[:-1]):
        record = _parse_line(line)
        if record is None:
            if number == len(lines) - 2 and not lines[-1]:
                return _torn(path, records, position)
            raise EnclipError(f"changelog {path} is damaged at line {number + 1} (not its last line); "
                              "restore it from a backup, or move it aside to start without the logged changes")
        records.append(record)
        position += len(line) + 1
    if lines[-1]:
        return _torn(path, records, position)
    return LogContents(records=records, good_bytes=position, torn=False)


def _torn(path: Path, records: list[dict], good_bytes: int) -> LogContents:
    log.warning("changelog %s: ignoring a torn last record at byte %d (a crash during an append; it was never "
                "acknowledged)", path, good_bytes)
    return LogContents(records=records, good_bytes=good_bytes, torn=True)


def _parse_line(line: bytes) -> dict | None:
    """One record, or None when the line is not a complete, well-formed record."""
    try:
        record = json.loads(line)
    except (ValueError, UnicodeDecodeError):
        return None
    if not isinstance(record, dict) or not isinstance(record.get("seq"), int):
        return None
    if record.get("op") == UPSERT and isinstance(record.get("item"), dict) and "image_b64" in record:
        return record
    if record.get("op") == DELETE and isinstance(record.get("id"), str):
        return record
    return None


class Changelog:
    """Append-only, fsync'd JSONL log; `append` is safe to call from several threads."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        contents = read_log(self.path)
        if contents.torn:
            self._cut_torn_tail(contents.good_bytes)
        self.last_seq = contents.records[-1]["seq"] if contents.records else 0

    def _cut_torn_tail(self, good_bytes: int) -> None:
        """Drop a torn append so the next record starts on a line of its own."""
        with open(self.path, "r+b") as handle:
            handle.truncate(good_bytes)
            handle.flush()
            os.fsync(handle.fileno())

    def append(self, record: dict) -> int:
        """Write one record durably and return its sequence number (strictly increasing)."""
        with self._lock:
            seq = self.last_seq + 1
            line = json.dumps({"seq": seq, **record}, separators=(",", ":"), ensure_ascii=True) + "\n"
            is_new = not self.path.exists()
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "ab") as handle:
                handle.write(line.encode("ascii"))
                handle.flush()
                os.fsync(handle.fileno())
            if is_new:
                fsync_path(self.path.parent)  # the new file's directory entry
            self.last_seq = seq
            return seq


def net_changes(records: list[dict]) -> tuple[dict[str, dict], list[str]]:
    """Fold a log into its net effect: the last upsert of each surviving id, and the ids whose last word is delete.

    Replaying the net effect instead of every record means each image is encoded once, however often it was
    re-uploaded.
    """
    last: dict[str, dict] = {}
    for record in records:
        item_id = record["item"]["id"] if record["op"] == UPSERT else record["id"]
        last.pop(item_id, None)  # keep dict order = order of each id's final change
        last[item_id] = record
    upserts = {item_id: rec for item_id, rec in last.items() if rec["op"] == UPSERT}
    deletes = [item_id for item_id, rec in last.items() if rec["op"] == DELETE]
    return upserts, deletes


def replay(searcher: MutableCatalogue, path: Path | None) -> int:
    """Re-apply a changelog to a freshly loaded searcher; returns how many records the log held."""
    if path is None:
        return 0
    records = read_log(Path(path)).records
    if not records:
        return 0
    upserts, deletes = net_changes(records)
    present = [item_id for item_id in deletes if _exists(searcher, item_id)]
    if present:
        searcher.remove_items(present)
    if upserts:
        _apply_upserts(searcher, list(upserts.values()))
    log.info("changelog %s: replayed %d records (%d upserts, %d deletes)", path, len(records), len(upserts),
             len(present))
    return len(records)


def _apply_upserts(searcher: MutableCatalogue, records: list[dict]) -> None:
    """Add all upserts in one batch; if the searcher refuses the batch, add them one by one and skip refusals.

    One record the searcher rejects must not keep the service from starting with all the others.
    """
    items = [rec["item"] for rec in records]
    images = [base64.b64decode(rec["image_b64"]) for rec in records]
    try:
        searcher.add_items(items, images)
        return
    except EnclipError as error:
        log.warning("changelog replay: batch of %d upserts refused (%s); retrying one by one", len(items), error)
    for record, item, image in zip(records, items, images):
        try:
            searcher.add_items([item], [image])
        except EnclipError as error:
            log.warning("changelog replay: skipping record #%s for item %s: %s", record["seq"], item["id"], error)


def _exists(searcher: MutableCatalogue, item_id: str) -> bool:
    try:
        searcher.item(item_id)
    except EnclipError:
        return False
    return True

