"""Readers for the forms catalogues are shared in; each returns the same columnar ``_Table``.

A Hugging Face parquet folder (or a hub id resolving to one), a Kaggle folder (``styles.csv`` + ``images/``), and a
generic ``.csv``/``.jsonl``/``.parquet`` table mapped with ``ColumnMap``. ``catalogue.load_catalogue`` screens and
assembles what they return.
"""

from __future__ import annotations

import codecs
import csv
import io
import itertools
import json
import logging
import math
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from enclip.errors import EnclipError

logger = logging.getLogger(__name__)

TABLE_SUFFIXES: tuple[str, ...] = (".csv", ".jsonl", ".ndjson", ".parquet")
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*$")

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
    repaired: dict[str, list[str]] = field(default_factory=dict)  # reason -> labels of lines read with repairs


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


def _read_text(path: Path) -> tuple[str, list[str]]:
    """The file as UTF-8 text, and the labels ("line N") of the lines whose bytes were not UTF-8.

    One stray byte (a title pasted from a Latin-1 file) must not refuse the whole catalogue: such bytes become
    U+FFFD and their lines are reported, so the user can find and fix them.
    """
    try:
        data = path.read_bytes()
    except OSError as err:
        raise EnclipError(f"cannot read {path}: {err}") from err
    if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        raise EnclipError(f"{path} is UTF-16 text; re-save it as UTF-8")
    try:
        return data.decode("utf-8-sig"), []
    except UnicodeDecodeError:
        pass
    bad = []
    for number, line in enumerate(data.splitlines(), start=1):  # bytes split at \n, \r\n, \r, like _lines
        try:
            line.decode("utf-8")
        except UnicodeDecodeError:
            bad.append(f"line {number}")
    if bad:
        logger.warning("%s: %d line(s) hold bytes that are not UTF-8 (first: %s); they were read with U+FFFD in "
                       "their place", path, len(bad), bad[0])
    return data.decode("utf-8-sig", errors="replace"), bad


def _lines(text: str) -> list[str]:
    r"""Physical lines with their endings, split at \n, \r\n or \r only (``str.splitlines`` also splits at
    U+2028, \x1c and others, which may sit inside a title)."""
    return io.StringIO(text, newline=None).readlines()


def _with_repairs(table: _Table, not_utf8: list[str]) -> _Table:
    if not_utf8:
        table.repaired["not_utf8"] = not_utf8
    return table


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
    text, not_utf8 = _read_text(path)
    lines = _lines(text)
    header, body = _csv_header(lines, path)

    def parsed() -> Iterator[tuple[str, dict | None]]:
        for number, row in _csv_records(lines, body, len(header)):
            if row is None:
                yield f"line {number}", None
            elif any(cell.strip() for cell in row):
                yield f"line {number}", dict(zip(header, row)) if len(row) == len(header) else None

    return _with_repairs(_collect(header, parsed(), limit, path.parent, str(path)), not_utf8)


def _csv_header(lines: list[str], path: Path) -> tuple[list[str], int]:
    """The column names, and the number of lines the header takes."""
    reader = csv.reader(lines)
    try:
        header = next(reader, [])
    except csv.Error as err:
        raise EnclipError(f"cannot read the header line of {path}: {err}; fix it or re-save the file as CSV") from err
    return [name.strip() for name in header], reader.line_num


def _csv_records(lines: list[str], first: int, width: int) -> Iterator[tuple[int, list[str] | None]]:
    """(1-based first line, fields) of each record from ``lines[first:]``; fields are None for a malformed record.

    A quoted field may legally span lines, but a stray quote swallows every row up to the next quote. A record that
    spans lines is therefore kept only when it has ``width`` fields and none of the lines it swallowed is a complete
    row by itself; otherwise its first line is reported malformed and reading resumes on the next line, so one stray
    quote costs one row, not the rest of the file, and every physical line stays counted.
    """
    position = first
    while position < len(lines):
        reader = csv.reader(itertools.islice(lines, position, None))
        start = position
        try:
            for fields in reader:
                end = position + reader.line_num  # one past the record's last line
                if end - start > 1 and not _plausible(fields, lines[start + 1 : end], width):
                    break
                yield start + 1, fields
                start = end
            else:
                return
        except csv.Error:  # a NUL byte, or a field over the size limit (a stray quote swallowing a large file)
            pass
        yield start + 1, None
        position = start + 1


def _plausible(fields: list[str], swallowed: list[str], width: int) -> bool:
    """A multi-line record is genuine when it has the right width and no swallowed line is a row of its own."""
    if len(fields) != width:
        return False
    try:
        return not any(len(next(csv.reader([line]), [])) == width for line in swallowed)
    except csv.Error:
        return False


def _json_object(line: str) -> dict | None:
    try:
        record = json.loads(line)
    except (ValueError, RecursionError):  # not JSON, or nested too deep to read
        return None
    return record if isinstance(record, dict) else None


def _read_jsonl(path: Path, limit: int | None) -> _Table:
    text, not_utf8 = _read_text(path)
    lines = enumerate(_lines(text), start=1)
    parsed = ((f"line {number}", _json_object(line)) for number, line in lines if line.strip())
    return _with_repairs(_collect([], parsed, limit, path.parent, str(path)), not_utf8)


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
    text, not_utf8 = _read_text(path)
    lines = [line.rstrip("\r\n") for line in _lines(text)]
    header = [name.strip() for name in lines[0].split(",")] if lines else []

    def parsed() -> Iterator[tuple[str, dict | None]]:
        for number, line in enumerate(lines[1:], start=2):
            fields = [field.strip() for field in line.split(",", len(header) - 1)]
            if line.strip():
                yield f"line {number}", dict(zip(header, fields)) if len(fields) == len(header) else None

    table = _with_repairs(_collect(header, parsed(), limit, folder, str(path)), not_utf8)
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
