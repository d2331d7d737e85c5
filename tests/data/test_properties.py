"""Property-based tests of the catalogue's input boundaries: any bytes as an image, any rows as a catalogue.

Properties: never an exception other than ``EnclipError``; every row is kept or skipped under a reason, and the
total counts every row written. The default suite runs few, derandomised examples; the ``slow`` set runs many.
"""

from __future__ import annotations

import csv
import io
import json
import re
import tempfile
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from enclip.data.catalogue import ColumnMap, load_catalogue
from enclip.data.images import DECODE_REASONS, ImageDecodeError, decode_image
from enclip.errors import EnclipError
from tests.strategies import CELL, FAST, JSON_VALUE, SLOW, VALID_IMAGES, image_like_bytes


def check_decode(data: bytes) -> None:
    try:
        image, mode = decode_image(data, max_pixels=1_000_000)
    except ImageDecodeError as error:
        assert error.reason in DECODE_REASONS and str(error)
        return
    assert image.mode == "RGB" and image.size[0] * image.size[1] <= 1_000_000
    assert mode is None or isinstance(mode, str)


@FAST
@given(image_like_bytes())
def test_decode_image_of_any_bytes_gives_rgb_or_a_reasoned_error(data):
    check_decode(data)


@pytest.mark.slow
@SLOW
@given(image_like_bytes())
def test_decode_image_of_any_bytes_gives_rgb_or_a_reasoned_error_many(data):
    check_decode(data)


# ---- catalogue rows --------------------------------------------------------------------------------------------

HEADER = ["id", "title", "image", "colour"]


def physical_lines(text: str) -> list[str]:
    """Lines as a user counts them in an editor: split at \\n, \\r\\n and \\r only."""
    lines = re.split(r"\r\n|\r|\n", text)
    return lines[:-1] if lines and lines[-1] == "" else lines


def load(text_or_bytes: str | bytes, suffix: str) -> tuple[int, int, dict]:
    """(kept, total_rows, skipped) of a catalogue file whose image paths all point at one real photo."""
    with tempfile.TemporaryDirectory() as folder:
        (Path(folder) / "p.jpg").write_bytes(VALID_IMAGES[0])
        path = Path(folder) / f"catalogue{suffix}"
        data = text_or_bytes if isinstance(text_or_bytes, bytes) else text_or_bytes.encode("utf-8")
        path.write_bytes(data)
        try:
            catalogue, report = load_catalogue(path, ColumnMap(title="title"), validate_images=False)
        except EnclipError as error:
            assert str(error)
            return 0, -1, {}
    skipped = sum(map(len, report.skipped.values()))
    assert report.kept == len(catalogue) and report.kept + skipped == report.total_rows
    return report.kept, report.total_rows, report.skipped


@st.composite
def csv_with_one_stray_quote(draw) -> tuple[str, int]:
    """A well-formed CSV (any cell text, quoted where needed) with one quote pushed in front of one field."""
    rows = draw(st.lists(st.tuples(CELL, CELL), min_size=2, max_size=12))  # one row always survives
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(HEADER)
    for n, (title, colour) in enumerate(rows):
        writer.writerow([str(n + 1), "t" + title, "p.jpg", colour])
    lines = buffer.getvalue().split("\n")[:-1]  # not splitlines: a cell may hold \x85 or U+2028
    target = draw(st.integers(1, len(lines) - 1))
    cells = lines[target].split(",")
    field = draw(st.integers(0, len(cells) - 1))
    cells[field] = '"' + cells[field]
    lines[target] = ",".join(cells)
    return "\n".join(lines) + "\n", target + 1


def check_stray_quote(case: tuple[str, int]) -> None:
    text, line = case
    kept, total, skipped = load(text, ".csv")
    rows = len(physical_lines(text)) - 1
    assert total == rows, "every row written is counted"
    assert kept >= rows - 1, "one stray quote costs at most its own row"
    assert skipped.get("malformed_row", [f"line {line}"]) == [f"line {line}"], "and is named by its line"


@FAST
@given(csv_with_one_stray_quote())
def test_csv_stray_quote_costs_at_most_its_row_and_every_line_is_counted(case):
    check_stray_quote(case)


@pytest.mark.slow
@SLOW
@given(csv_with_one_stray_quote())
def test_csv_stray_quote_costs_at_most_its_row_and_every_line_is_counted_many(case):
    check_stray_quote(case)


JUNK_LINE = st.lists(st.one_of(CELL, st.just('"'), st.just("p.jpg"), st.just("")), max_size=6).map(",".join)


def check_junk_csv(lines: list[str], ending: str) -> None:
    text = ending.join([",".join(HEADER), *lines]) + ending
    kept, total, _ = load(text, ".csv")
    if total >= 0 and '"' not in text:
        assert total == sum(1 for line in physical_lines(text)[1:] if line.strip(",").strip())


@FAST
@given(st.lists(JUNK_LINE, max_size=10), st.sampled_from(["\n", "\r\n", "\r"]))
def test_csv_of_any_lines_counts_every_row_or_refuses_clearly(lines, ending):
    check_junk_csv(lines, ending)


@pytest.mark.slow
@SLOW
@given(st.lists(JUNK_LINE, max_size=30), st.sampled_from(["\n", "\r\n", "\r"]))
def test_csv_of_any_lines_counts_every_row_or_refuses_clearly_many(lines, ending):
    check_junk_csv(lines, ending)


IMAGE_CELL = st.sampled_from(["p.jpg", "../p.jpg", "", "nope.jpg"]) | JSON_VALUE
JSON_ROW = st.fixed_dictionaries({}, optional={"id": JSON_VALUE | CELL, "title": JSON_VALUE | CELL,
                                               "image": IMAGE_CELL, "colour": JSON_VALUE})
JSONL_LINE = st.one_of(JSON_ROW.map(lambda row: json.dumps(row, ensure_ascii=False)), JSON_VALUE.map(json.dumps),
                       CELL)


def check_jsonl(lines: list[str], bad_byte: bool) -> None:
    data = "\n".join(lines).encode("utf-8") + (b"\n{\"id\": \"x\xff\"}\n" if bad_byte else b"\n")
    kept, total, _ = load(data, ".jsonl")
    if total >= 0:
        text = data.decode("utf-8", errors="replace")
        assert total == sum(1 for line in physical_lines(text) if line.strip())


@FAST
@given(st.lists(JSONL_LINE, max_size=8), st.booleans())
def test_jsonl_of_any_lines_counts_every_row_or_refuses_clearly(lines, bad_byte):
    check_jsonl(lines, bad_byte)


@pytest.mark.slow
@SLOW
@given(st.lists(JSONL_LINE, max_size=30), st.booleans())
def test_jsonl_of_any_lines_counts_every_row_or_refuses_clearly_many(lines, bad_byte):
    check_jsonl(lines, bad_byte)
