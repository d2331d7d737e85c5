"""Regression tests for the catalogue's input-side defects of issue #11: nothing lost uncounted, nothing read from
outside the catalogue when asked not to."""

from __future__ import annotations

import json
import os
from pathlib import Path

from enclip.cli import build_parser, load_data
from enclip.data.catalogue import ColumnMap, load_catalogue
from tests.data.conftest import ATTRIBUTES, make_items, write_csv_table, write_image_files, write_kaggle

CSV_COLUMNS = ColumnMap(id="sku", title="name", image="picture")


def _raw_row(item, title: str, picture: str) -> str:
    return ",".join([item.id, title, picture, *(item.attributes[a] for a in ATTRIBUTES)])


def test_csv_unbalanced_quote_counts_every_line(tmp_path):
    items = make_items(60, seed=5)
    path = write_csv_table(tmp_path, items)
    lines = path.read_text(encoding="utf-8").splitlines()
    lines[10] = _raw_row(items[9], '"Stray ' + items[9].title, f"photos/{items[9].id}.jpg")  # opens, never closes
    lines[20] = _raw_row(items[19], 'Brand 5" heels', f"photos/{items[19].id}.jpg")  # a literal quote mid-field
    lines[40] = _raw_row(items[39], '"Another stray', f"photos/{items[39].id}.jpg")  # swallows to the end of file
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    catalogue, report = load_catalogue(path, CSV_COLUMNS)
    assert report.skipped == {"malformed_row": ["line 11", "line 41"]}
    assert report.total_rows == len(items) == report.kept + 2
    assert catalogue.titles[catalogue.index_of(items[19].id)] == 'Brand 5" heels'
    assert "line 11" not in catalogue.ids and items[9].id not in catalogue.ids


def test_csv_quoted_title_spanning_two_lines_is_still_one_row(tmp_path):
    items = make_items(6, seed=5)
    path = write_csv_table(tmp_path, items)
    lines = path.read_text(encoding="utf-8").splitlines()
    lines[3] = _raw_row(items[2], '"Two-line\ntitle"', f"photos/{items[2].id}.jpg")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    catalogue, report = load_catalogue(path, CSV_COLUMNS)
    assert report.kept == report.total_rows == len(items) and not report.skipped
    assert catalogue.titles[2] == "Two-line\ntitle"


def test_non_utf8_byte_in_one_title_is_repaired_counted_and_named(tmp_path):
    items = make_items(12, seed=6)
    path = write_csv_table(tmp_path / "csv", items)
    data = path.read_bytes().splitlines(keepends=True)
    data[5] = data[5].replace(items[4].title.encode(), items[4].title.encode() + b" caf\xe9")  # Latin-1 "é"
    path.write_bytes(b"".join(data))
    kaggle = write_kaggle(tmp_path / "kaggle", items)
    styles = (kaggle / "styles.csv").read_bytes().splitlines(keepends=True)
    styles[5] = styles[5].replace(b"\n", b" \xff\xfe\n")
    (kaggle / "styles.csv").write_bytes(b"".join(styles))
    for source, columns in ((path, CSV_COLUMNS), (kaggle, None)):
        catalogue, report = load_catalogue(source, columns)
        assert report.kept == report.total_rows == len(items), source
        assert report.repaired == {"not_utf8": ["line 6"]} and report.to_dict()["repaired_counts"] == {"not_utf8": 1}
        assert "\ufffd" in catalogue.titles[4] and "line 6" in report.summary_line()


def test_confine_images_skips_paths_outside_the_catalogue_folder(tmp_path):
    items = make_items(8, seed=7)
    folder = tmp_path / "catalogue"
    path = write_csv_table(folder, items[:3])
    outside = write_image_files(tmp_path / "elsewhere", items[3:])
    os.symlink(outside[items[6].id], folder / "photos" / "link.jpg")
    pictures = {items[3].id: str(outside[items[3].id]),  # absolute, elsewhere
                items[4].id: f"../elsewhere/{items[4].id}.jpg",  # climbs out
                items[5].id: str(Path("photos/../..") / "elsewhere" / f"{items[5].id}.jpg"),
                items[6].id: "photos/link.jpg",  # a symlink pointing out
                items[7].id: "../no/such/file.jpg"}  # outside and absent: refused as outside, existence not probed
    (folder / "photos" / "inside.jpg").write_bytes(items[0].image)
    rows = [_raw_row(item, item.title, pictures[item.id]) for item in items[3:]]
    rows.append(_raw_row(items[0], "Absolute but inside", str(folder / "photos" / "inside.jpg")).replace(
        items[0].id, "9999", 1))
    with path.open("a", encoding="utf-8") as fh:
        fh.write("\n".join(rows) + "\n")
    _, open_report = load_catalogue(path, CSV_COLUMNS)
    assert open_report.kept == 8 and open_report.skipped == {"missing_image": [items[7].id]}
    args = build_parser().parse_args(["train", "--data", str(path), "--columns", "id=sku,title=name,image=picture",
                                      "--out", str(tmp_path / "m"), "--confine-images"])
    catalogue, report = load_data(args)
    assert report.skipped == {"image_outside_folder": [item.id for item in items[3:]]}
    assert report.kept == 4 and report.total_rows == 9 and "9999" in catalogue.ids


def test_odd_image_cells_are_counted_as_missing_images_not_crashes(tmp_path):
    items = make_items(2, seed=8)
    photos = write_image_files(tmp_path / "photos", items)
    odd = ["~nosuchuser0/x.jpg", "a\x00b.jpg", "x" * 5000 + ".jpg", {"bytes": 5}, {"bytes": "abc"}, [1, 2], 7]
    records = [{"id": item.id, "productDisplayName": item.title, "image": str(photos[item.id])} for item in items]
    records += [{"id": f"odd{n}", "productDisplayName": "Odd", "image": cell} for n, cell in enumerate(odd)]
    path = tmp_path / "items.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    _, report = load_catalogue(path)
    assert report.kept == 2 and report.skipped == {"missing_image": [f"odd{n}" for n in range(len(odd))]}
