"""Load a product catalogue (ids, titles, attributes, images) from the forms it is shared in, reporting bad rows.

Three forms are read: a folder of Hugging Face parquet shards (or a hub id resolving to one), a Kaggle folder
(``styles.csv`` + ``images/<id>.jpg``), and a generic ``.csv``/``.jsonl``/``.parquet`` table mapped with
``ColumnMap``. Every reader produces the same columnar table; one assembly step then screens rows, decodes every
image and builds the ``Catalogue`` plus a ``SkipReport`` that counts each dropped or converted row by reason:
real catalogues always hold a few broken rows, and one of them must never sink the other 44,000.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import math
import os
import re
import tempfile
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from enclip.data.images import ImageDecodeError, decode_image
from enclip.errors import EnclipError

logger = logging.getLogger(__name__)

SKIP_REASONS: tuple[str, ...] = (
    "malformed_row", "missing_id", "duplicate_id", "empty_title", "missing_image",
    "not_an_image", "undecodable_image", "truncated_image", "decompression_bomb",
)  # fmt: skip
TABLE_SUFFIXES: tuple[str, ...] = (".csv", ".jsonl", ".ndjson", ".parquet")
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*$")
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
    total_rows: int  # data rows read from the source (within limit)
    kept: int  # rows in the resulting catalogue

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
        return line

    def to_dict(self) -> dict:
        return {
            "total_rows": self.total_rows,
            "kept": self.kept,
            "skipped_counts": {reason: len(rows) for reason, rows in self.skipped.items()},
            "converted_counts": {mode: len(ids) for mode, ids in self.converted.items()},
            "skipped": {reason: list(rows) for reason, rows in self.skipped.items()},
            "converted": {mode: list(ids) for mode, ids in self.converted.items()},
        }

    def write(self, path: Path) -> None:
        """Write as JSON atomically, so a crash never leaves a half-written report beside a run's outputs."""
        path = Path(path)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                json.dump(self.to_dict(), fh, indent=2)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


@dataclass
class ColumnMap:
    id: str = "id"  # column holding the product id
    title: str = "productDisplayName"  # column holding the product title
    image: str = "image"  # paths (relative to the table's folder), bytes, or {"bytes":..,"path":..} structs
    attributes: tuple[str, ...] | None = None  # attribute columns to keep; None = every other column


@dataclass
class _Table:
    """What every reader returns: columns as lists, plus a label per row for reporting."""

    data: dict[str, list[Any]]  # column -> values, one per well-formed row
    labels: list[str]  # "line N" / "row N" of each well-formed row
    malformed: list[str]  # labels of rows that could not be parsed at all
    base_dir: Path  # relative image paths resolve from here
    origin: str  # the file(s) read, for error messages


# ---- readers ---------------------------------------------------------------------------------------------------


def _read_parquet(files: list[Path], limit: int | None) -> _Table:
    import pyarrow as pa
    import pyarrow.parquet as pq

    tables, rows = [], 0
    for file in files:
        if limit is not None and rows >= limit:
            break
        try:
            table = pq.read_table(file)
        except (OSError, pa.ArrowException) as err:
            raise EnclipError(f"cannot read parquet file {file}: {err}; is it a complete parquet file?") from err
        tables.append(table)
        rows += table.num_rows
    try:
        table = pa.concat_tables(tables, promote_options="permissive")
    except pa.ArrowException as err:
        raise EnclipError(f"the parquet shards in {files[0].parent} have incompatible columns: {err}") from err
    if limit is not None:
        table = table.slice(0, limit)
    data = {name: table.column(name).to_pylist() for name in table.column_names}
    labels = [f"row {i + 1}" for i in range(table.num_rows)]
    return _Table(data, labels, [], files[0].parent, ", ".join(str(f) for f in files))


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as err:
        raise EnclipError(f"{path} is not UTF-8 text ({err}); re-save it as UTF-8") from err
    except OSError as err:
        raise EnclipError(f"cannot read {path}: {err}") from err


def _collect(header: list[str], parsed: Iterator[tuple[str, dict | None]], limit: int | None, base_dir: Path,
             origin: str) -> _Table:  # fmt: skip
    """Gather (label, record-or-None-if-malformed) pairs into columns, stopping after ``limit`` rows."""
    records, labels, malformed, columns = [], [], [], dict.fromkeys(header)
    for label, record in parsed:
        if limit is not None and len(labels) + len(malformed) >= limit:
            break
        if record is None:
            malformed.append(label)
            continue
        columns.update(dict.fromkeys(record))
        records.append(record)
        labels.append(label)
    data = {name: [record.get(name) for record in records] for name in columns}
    return _Table(data, labels, malformed, base_dir, origin)


def _read_csv(path: Path, limit: int | None) -> _Table:
    reader = csv.reader(_read_text(path).splitlines())
    header = [name.strip() for name in next(reader, [])]

    def parsed() -> Iterator[tuple[str, dict | None]]:
        for row in reader:
            if any(cell.strip() for cell in row):
                yield f"line {reader.line_num}", dict(zip(header, row)) if len(row) == len(header) else None

    return _collect(header, parsed(), limit, path.parent, str(path))


def _json_object(line: str) -> dict | None:
    try:
        record = json.loads(line)
    except json.JSONDecodeError:
        return None
    return record if isinstance(record, dict) else None


def _read_jsonl(path: Path, limit: int | None) -> _Table:
    lines = enumerate(_read_text(path).splitlines(), start=1)
    parsed = ((f"line {number}", _json_object(line)) for number, line in lines if line.strip())
    return _collect([], parsed, limit, path.parent, str(path))


def _image_files_by_stem(folder: Path) -> dict[str, Path]:
    """One directory listing instead of 44k stat calls; a .jpg wins when an id has several files."""
    found: dict[str, Path] = {}
    with os.scandir(folder) as entries:
        for entry in entries:
            stem, suffix = os.path.splitext(entry.name)
            if entry.is_file() and (stem not in found or suffix.lower() == ".jpg"):
                found[stem] = Path(entry.path)
    return found


def _read_kaggle(folder: Path, columns: ColumnMap, limit: int | None) -> _Table:
    """styles.csv does not quote titles containing commas, so each line splits on its first (n-1) commas only."""
    path = folder / "styles.csv"
    lines = _read_text(path).splitlines()
    header = [name.strip() for name in lines[0].split(",")] if lines else []

    def parsed() -> Iterator[tuple[str, dict | None]]:
        for number, line in enumerate(lines[1:], start=2):
            fields = [field.strip() for field in line.split(",", len(header) - 1)]
            if line.strip():
                yield f"line {number}", dict(zip(header, fields)) if len(fields) == len(header) else None

    table = _collect(header, parsed(), limit, folder, str(path))
    if columns.id in table.data:
        files = _image_files_by_stem(folder / "images")
        table.data[columns.image] = [files.get(_text(item_id)) for item_id in table.data[columns.id]]
    return table


# ---- locating the source ---------------------------------------------------------------------------------------


def _download_from_hub(repo_id: str) -> Path:
    try:
        from huggingface_hub import snapshot_download
    except ImportError as err:
        raise EnclipError(f"{repo_id!r} looks like a Hugging Face dataset id, but huggingface_hub is not "
                          "installed; install it or pass a local folder of parquet shards") from err  # fmt: skip
    try:
        folder = snapshot_download(repo_id, repo_type="dataset", allow_patterns=["*.parquet"])
    except Exception as err:  # the hub client raises many types; all mean "not available here"
        raise EnclipError(
            f"cannot download dataset {repo_id!r} from the Hugging Face hub ({type(err).__name__}: {err}). "
            "This machine is probably offline (or the id is wrong, or you meant a local path that does not exist): "
            "download the parquet shards where there is internet and pass their local folder, or pass a Kaggle "
            "folder (styles.csv + images/)."
        ) from err
    return Path(folder)


def _resolve_source(source: str | Path) -> Path:
    path = Path(source).expanduser()
    if path.exists():
        return path
    text = str(source)
    if isinstance(source, str) and _HUB_ID.match(text) and Path(text).suffix.lower() not in TABLE_SUFFIXES:
        return _download_from_hub(text)
    raise EnclipError(
        f"catalogue path does not exist: {path}. Pass a folder of parquet shards, a Kaggle folder "
        "(styles.csv + images/), a .csv/.jsonl/.parquet table, or a Hugging Face dataset id (owner/name)."
    )


def _read_folder(folder: Path, columns: ColumnMap, limit: int | None) -> _Table:
    if (folder / "styles.csv").is_file() and (folder / "images").is_dir():
        return _read_kaggle(folder, columns, limit)
    shards = sorted(folder.rglob("*.parquet"), key=lambda p: p.relative_to(folder).as_posix())
    if shards:
        return _read_parquet(shards, limit)
    if (folder / "styles.csv").is_file():
        raise EnclipError(f"{folder} has styles.csv but no images/ folder beside it; a Kaggle catalogue needs both")
    tables = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in TABLE_SUFFIXES)
    if len(tables) == 1:
        return _read_file(tables[0], limit)
    if tables:
        names = ", ".join(p.name for p in tables)
        raise EnclipError(f"{folder} holds several tables ({names}); pass the path of the one to load")
    raise EnclipError(
        f"no catalogue found in {folder}: expected *.parquet shards, styles.csv + images/, or one .csv/.jsonl table"
    )


def _read_file(path: Path, limit: int | None) -> _Table:
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        return _read_parquet([path], limit)
    if suffix == ".csv":
        return _read_csv(path, limit)
    if suffix in (".jsonl", ".ndjson"):
        return _read_jsonl(path, limit)
    raise EnclipError(f"cannot load a catalogue from {path}: unsupported file type {suffix or '(none)'}; "
                      f"use one of {', '.join(TABLE_SUFFIXES)} or a folder")  # fmt: skip


# ---- assembly --------------------------------------------------------------------------------------------------


def _text(value: Any) -> str:
    """Attribute/id/title value as a stripped string: None and NaN become "", 2011.0 becomes "2011"."""
    if value is None:
        return ""
    if isinstance(value, float):
        if math.isnan(value):
            return ""
        if value.is_integer():
            return str(int(value))
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace").strip()
    return str(value).strip()


def _image_ref(value: Any, base_dir: Path) -> bytes | Path | None:
    """Normalise an image cell to bytes or an existing file's Path; None when there is no image."""
    if isinstance(value, dict):
        data = value.get("bytes")
        return bytes(data) if data else _image_ref(value.get("path"), base_dir)
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value) if len(value) else None
    if isinstance(value, Path):
        return value if value.is_file() else None
    if isinstance(value, str) and value.strip():
        path = Path(value.strip()).expanduser()
        path = path if path.is_absolute() else base_dir / path
        return path if path.is_file() else None
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
        else:
            reason = "empty_title" if not title else "missing_image" if image is None else None
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
    table: _Table, columns: ColumnMap, validate: bool, workers: int, source: str
) -> tuple[Catalogue, SkipReport]:
    attribute_names = _check_columns(table, columns)
    ids = [_text(v) for v in table.data[columns.id]]
    titles = [_text(v) for v in table.data[columns.title]]
    images = [_image_ref(v, table.base_dir) for v in table.data[columns.image]]
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
    report = SkipReport(skipped=skipped, converted=converted, total_rows=total, kept=len(rows))
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
) -> tuple[Catalogue, SkipReport]:
    """Load a catalogue from a parquet folder, hub id, Kaggle folder or table, with a report of skipped rows.

    ``limit`` reads only the first rows of the source (for quick runs). With ``validate_images`` every image is
    decoded once (``workers`` threads) so that broken ones are reported now rather than crashing training later.
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
    catalogue, report = _assemble(table, columns, validate_images, workers, origin)
    assemble_seconds = time.perf_counter() - started - read_seconds
    logger.debug("read %s in %.1f s, screened and validated in %.1f s", origin, read_seconds, assemble_seconds)
    return catalogue, report
