"""Load a product catalogue (ids, titles, attributes, images) from the forms it is shared in, reporting bad rows.

Three forms are read: a folder of Hugging Face parquet shards (or a hub id resolving to one), a Kaggle folder
(``styles.csv`` + ``images/<id>.jpg``), and a generic ``.csv``/``.jsonl``/``.parquet`` table mapped with
``ColumnMap``. Every reader produces the same columnar table; one assembly step then screens rows, decodes every
image and builds the ``Catalogue`` plus a ``SkipReport`` that counts each dropped or converted row by reason:
real catalogues always hold a few broken rows, and one of them must never sink the other 44,000.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from enclip.artifacts import write_json
from enclip.data.images import ImageDecodeError, decode_image
from enclip.data.readers import TABLE_SUFFIXES, ColumnMap, _read_file, _read_folder, _resolve_source, _Table, _text
from enclip.errors import EnclipError

logger = logging.getLogger(__name__)

__all__ = ["Catalogue", "ColumnMap", "SkipReport", "SKIP_REASONS", "TABLE_SUFFIXES", "load_catalogue"]

SKIP_REASONS: tuple[str, ...] = (
    "malformed_row", "missing_id", "duplicate_id", "empty_title", "missing_image", "image_outside_folder",
    "not_an_image", "undecodable_image", "truncated_image", "decompression_bomb",
)  # fmt: skip
_VALIDATION_CHUNK = 512  # images per thread-pool task: big enough that pool overhead is negligible


@dataclass
class Catalogue:
    ids: list[str]  # unique product ids, as strings
    titles: list[str]  # product titles, aligned with ids
    attributes: dict[str, list[str]]  # attribute column -> values aligned with ids; missing -> ""
    images: list[bytes | Path]  # encoded image bytes, or a path read lazily
    source: str = ""  # where it came from (path or hub id)
    _positions: dict[str, int] | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        lengths = {len(self.ids), len(self.titles), len(self.images), *map(len, self.attributes.values())}
        if len(lengths) > 1:
            raise ValueError(f"catalogue columns have different lengths: {sorted(lengths)}")

    def __len__(self) -> int:
        return len(self.ids)

    def image_bytes(self, i: int) -> bytes:
        image = self.images[i]
        if isinstance(image, Path):
            try:
                return image.read_bytes()
            except OSError as err:
                raise EnclipError(f"cannot read the image of item {self.ids[i]} at {image}: {err}") from err
        return image

    def image(self, i: int) -> Image.Image:
        """The item's photo as RGB (decoded on each call; the catalogue keeps only encoded bytes)."""
        try:
            return decode_image(self.image_bytes(i))[0]
        except ImageDecodeError as err:
            raise ImageDecodeError(err.reason, f"the image of item {self.ids[i]} is unusable: {err}") from err

    def item(self, i: int) -> dict:
        return {"id": self.ids[i], "title": self.titles[i], "attributes": {k: v[i] for k, v in self.attributes.items()}}

    def index_of(self, item_id: str) -> int:
        if self._positions is None or len(self._positions) != len(self.ids):
            self._positions = {item_id: i for i, item_id in enumerate(self.ids)}
        position = self._positions.get(str(item_id))
        if position is None:
            raise EnclipError(f"item id {item_id!r} is not in the catalogue ({len(self)} items from {self.source!r})")
        return position

    def subset(self, indices: Sequence[int]) -> Catalogue:
        """A new catalogue holding the given rows in the given order (inputs are left untouched)."""
        rows = [int(i) for i in indices]
        if any(i < 0 or i >= len(self) for i in rows):
            raise IndexError(f"subset indices must lie in [0, {len(self)})")
        return Catalogue(
            ids=[self.ids[i] for i in rows],
            titles=[self.titles[i] for i in rows],
            attributes={name: [values[i] for i in rows] for name, values in self.attributes.items()},
            images=[self.images[i] for i in rows],
            source=self.source,
        )

    def fingerprint(self) -> str:
        """Short content hash recorded in every artefact's manifest, to tell which catalogue built it.

        Covers ids, titles, attributes and image bytes (or paths, for lazily read images); not ``source``, so
        the same data loaded from two copies has one fingerprint.
        """
        digest = hashlib.sha256(b"enclip-catalogue-v1")
        digest.update(json.dumps([self.ids, self.titles, sorted(self.attributes.items())]).encode("utf-8"))
        for image in self.images:
            payload = image if isinstance(image, bytes) else str(image).encode("utf-8")
            digest.update(b"b" if isinstance(image, bytes) else b"p")
            digest.update(len(payload).to_bytes(8, "little"))
            digest.update(payload)
        return digest.hexdigest()[:16]

    def attribute_values(self) -> dict[str, list[str]]:
        """Sorted distinct non-empty values per attribute, e.g. for search filters."""
        return {name: sorted({v for v in values if v}) for name, values in self.attributes.items()}


@dataclass
class SkipReport:
    skipped: dict[str, list[str]]  # reason -> row identifiers (id, or "line N"/"row N" when the id is unusable)
    converted: dict[str, list[str]]  # original image mode -> ids kept after conversion to RGB
    total_rows: int  # data rows read from the source (within limit); always kept + skipped
    kept: int  # rows in the resulting catalogue
    repaired: dict[str, list[str]] = field(default_factory=dict)  # "not_utf8" -> lines read with U+FFFD for bad bytes

    def summary_line(self) -> str:
        skipped = sum(map(len, self.skipped.values()))
        converted = sum(map(len, self.converted.values()))
        line = f"catalogue: {self.kept} of {self.total_rows} rows kept; skipped {skipped}"
        if skipped:
            order = [r for r in SKIP_REASONS if r in self.skipped] + sorted(set(self.skipped) - set(SKIP_REASONS))
            line += " (" + ", ".join(f"{r} {len(self.skipped[r])}" for r in order if self.skipped[r]) + ")"
        line += f"; converted {converted} to RGB"
        if converted:
            modes = sorted(self.converted, key=lambda m: (-len(self.converted[m]), m))
            line += " (" + ", ".join(f"{m} {len(self.converted[m])}" for m in modes) + ")"
        for reason, labels in sorted(self.repaired.items()):
            shown = ", ".join(labels[:5]) + (f" and {len(labels) - 5} more" if len(labels) > 5 else "")
            line += f"; repaired {len(labels)} ({reason}: {shown})"
        return line

    def to_dict(self) -> dict:
        return {
            "total_rows": self.total_rows,
            "kept": self.kept,
            "skipped_counts": {reason: len(rows) for reason, rows in self.skipped.items()},
            "converted_counts": {mode: len(ids) for mode, ids in self.converted.items()},
            "repaired_counts": {reason: len(rows) for reason, rows in self.repaired.items()},
            "skipped": {reason: list(rows) for reason, rows in self.skipped.items()},
            "converted": {mode: list(ids) for mode, ids in self.converted.items()},
            "repaired": {reason: list(rows) for reason, rows in self.repaired.items()},
        }

    def write(self, path: Path) -> None:
        """Write as JSON atomically, so a crash never leaves a half-written report beside a run's outputs."""
        write_json(path, self.to_dict())


# ---- assembly --------------------------------------------------------------------------------------------------


class _OutsideFolder:
    """``_image_ref``'s answer for a path that leaves the catalogue's folder while images are confined to it."""


OUTSIDE_FOLDER = _OutsideFolder()


def _image_ref(value: Any, base_dir: Path, confine: bool = False) -> bytes | Path | _OutsideFolder | None:
    """Normalise an image cell to bytes or an existing file's Path; None when there is no image.

    With ``confine``, a path that resolves outside ``base_dir`` (absolute, ``..``, a symlink out) is refused before
    it is looked at, so a catalogue cannot make enclip read, or reveal the existence of, files elsewhere.
    """
    if isinstance(value, dict):
        data = value.get("bytes")
        if isinstance(data, (bytes, bytearray, memoryview)) and len(data):
            return bytes(data)
        return _image_ref(value.get("path"), base_dir, confine)
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value) if len(value) else None
    if isinstance(value, str) and value.strip():
        value = Path(value.strip())
    if not isinstance(value, Path):
        return None
    try:
        value = value.expanduser()
        path = value if value.is_absolute() else base_dir / value
        if confine and not path.resolve().is_relative_to(base_dir.resolve()):
            return OUTSIDE_FOLDER
        return path if path.is_file() else None
    except (OSError, ValueError, RuntimeError):  # NUL byte, name too long, symlink loop, ~nobody: no usable file
        return None


def _check_columns(table: _Table, columns: ColumnMap) -> list[str]:
    """Fail early, naming the missing column and how to map it; return the attribute columns to keep."""
    present = list(table.data)
    roles = {"id": columns.id, "title": columns.title, "image": columns.image}
    for role, name in roles.items():
        if name not in table.data:
            raise EnclipError(
                f"the catalogue {table.origin} has no {name!r} column for the product {role}. Its columns are: "
                f"{', '.join(present) or '(none)'}. Map yours with ColumnMap(id=..., title=..., image=...) or on "
                "the command line with --columns id=...,title=...,image=..."
            )
    if columns.attributes is None:
        return [name for name in present if name not in roles.values()]
    unknown = [name for name in columns.attributes if name not in table.data]
    if unknown:
        raise EnclipError(
            f"attribute columns {unknown} are not in {table.origin}; its columns are: {', '.join(present)}"
        )
    return list(columns.attributes)


def _screen_rows(ids: list[str], titles: list[str], images: list, labels: list[str], skipped: dict) -> list[int]:
    """Rows passing the cheap checks. The first row with an id wins even if later dropped, so duplicates are
    reported the same way whatever their images hold."""
    seen: set[str] = set()
    kept = []
    for row, (item_id, title, image) in enumerate(zip(ids, titles, images)):
        if not item_id:
            skipped.setdefault("missing_id", []).append(labels[row])
            continue
        if item_id in seen:
            reason = "duplicate_id"
        elif not title:
            reason = "empty_title"
        else:
            reason = "missing_image" if image is None else "image_outside_folder" if image is OUTSIDE_FOLDER else None
        seen.add(item_id)
        if reason:
            skipped.setdefault(reason, []).append(item_id)
        else:
            kept.append(row)
    return kept


def _check_image(image: bytes | Path) -> tuple[str | None, str | None]:
    """(skip reason or None, original mode if converted or None) for one image."""
    try:
        data = image if isinstance(image, bytes) else image.read_bytes()
    except OSError:
        return "missing_image", None
    try:
        return None, decode_image(data)[1]
    except ImageDecodeError as err:
        return err.reason, None


def _check_images(images: list[bytes | Path], workers: int) -> list[tuple[str | None, str | None]]:
    """Decode every image; threads help because PIL releases the GIL while decoding."""
    chunks = [images[i : i + _VALIDATION_CHUNK] for i in range(0, len(images), _VALIDATION_CHUNK)]
    if workers <= 1 or len(chunks) <= 1:
        return [_check_image(image) for image in images]
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="enclip-decode") as pool:
        return [result for chunk in pool.map(lambda c: [_check_image(i) for i in c], chunks) for result in chunk]


def _assemble(
    table: _Table, columns: ColumnMap, validate: bool, workers: int, source: str, confine: bool = False
) -> tuple[Catalogue, SkipReport]:
    attribute_names = _check_columns(table, columns)
    ids = [_text(v) for v in table.data[columns.id]]
    titles = [_text(v) for v in table.data[columns.title]]
    images = [_image_ref(v, table.base_dir, confine) for v in table.data[columns.image]]
    skipped: dict[str, list[str]] = {"malformed_row": list(table.malformed)} if table.malformed else {}
    rows = _screen_rows(ids, titles, images, table.labels, skipped)
    converted: dict[str, list[str]] = {}
    if validate:
        checked = _check_images([images[row] for row in rows], workers)
        for row, (reason, mode) in zip(rows, checked):
            if reason:
                skipped.setdefault(reason, []).append(ids[row])
            elif mode:
                converted.setdefault(mode, []).append(ids[row])
        rows = [row for row, (reason, _) in zip(rows, checked) if reason is None]
    total = len(table.labels) + len(table.malformed)
    report = SkipReport(skipped=skipped, converted=converted, total_rows=total, kept=len(rows),
                        repaired={reason: list(labels) for reason, labels in table.repaired.items()})
    if not rows:
        raise EnclipError(f"the catalogue {source} has no usable rows ({report.summary_line()}); "
                          "fix the rows by the skip reasons above, or check --columns")  # fmt: skip
    catalogue = Catalogue(
        ids=[ids[row] for row in rows],
        titles=[titles[row] for row in rows],
        attributes={name: [_text(table.data[name][row]) for row in rows] for name in attribute_names},
        images=[images[row] for row in rows],
        source=source,
    )
    return catalogue, report


def load_catalogue(
    source: str | Path,
    columns: ColumnMap | None = None,
    *,
    validate_images: bool = True,
    limit: int | None = None,
    workers: int = 2,
    confine_images: bool = False,
) -> tuple[Catalogue, SkipReport]:
    """Load a catalogue from a parquet folder, hub id, Kaggle folder or table, with a report of skipped rows.

    ``limit`` reads only the first rows of the source (for quick runs). With ``validate_images`` every image is
    decoded once (``workers`` threads) so that broken ones are reported now rather than crashing training later.
    With ``confine_images``, image paths must stay inside the catalogue's folder; rows whose path is absolute
    elsewhere or climbs out with ``..`` are skipped as ``image_outside_folder`` (use it for catalogues you did not
    write yourself).
    Raises ``EnclipError`` for an unreadable source, a missing required column, or no usable row.
    """
    if limit is not None and limit < 1:
        raise EnclipError(f"limit must be a positive number of rows, got {limit}; leave it unset to load every row")
    started = time.perf_counter()
    columns = columns or ColumnMap()
    path = _resolve_source(source)
    table = _read_folder(path, columns, limit) if path.is_dir() else _read_file(path, limit)
    read_seconds = time.perf_counter() - started
    origin = str(source) if not Path(source).expanduser().exists() else str(path)
    catalogue, report = _assemble(table, columns, validate_images, workers, origin, confine_images)
    assemble_seconds = time.perf_counter() - started - read_seconds
    logger.debug("read %s in %.1f s, screened and validated in %.1f s", origin, read_seconds, assemble_seconds)
    return catalogue, report
