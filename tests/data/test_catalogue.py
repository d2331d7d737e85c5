"""load_catalogue on every format, on every kind of bad row, and on the real catalogue (realdata)."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from enclip.data.catalogue import Catalogue, ColumnMap, SkipReport, load_catalogue
from enclip.data.split import split_indices
from enclip.errors import EnclipError

from .conftest import (  # fmt: skip
    ATTRIBUTES,
    hf_table,
    make_items,
    write_bytes_parquet,
    write_csv_table,
    write_hf_parquet,
    write_jsonl_table,
    write_kaggle,
)

CUSTOM = ColumnMap(id="sku", title="name", image="picture")


def _decoded(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def _load_format(fmt: str, tmp_path: Path, items) -> tuple[Catalogue, SkipReport]:
    if fmt == "kaggle":
        return load_catalogue(write_kaggle(tmp_path / "k", items))
    if fmt == "hf_parquet":
        return load_catalogue(write_hf_parquet(tmp_path / "hf", items, shards=3))
    if fmt == "csv":
        return load_catalogue(write_csv_table(tmp_path / "c", items), CUSTOM)
    if fmt == "jsonl_folder":
        return load_catalogue(write_jsonl_table(tmp_path / "j", items).parent)
    return load_catalogue(write_bytes_parquet(tmp_path / "p", items), CUSTOM)


@pytest.mark.parametrize("fmt", ["kaggle", "hf_parquet", "csv", "jsonl_folder", "bytes_parquet"])
def test_every_format_loads_the_same_catalogue(fmt, tmp_path, items):
    catalogue, report = _load_format(fmt, tmp_path, items)
    assert catalogue.ids == [i.id for i in items]
    assert catalogue.titles == [i.title for i in items]
    assert catalogue.attributes == {a: [i.attributes[a] for i in items] for a in ATTRIBUTES}
    for k in (0, 7, 19):
        assert catalogue.image_bytes(k) == items[k].image
        assert np.array_equal(np.asarray(catalogue.image(k)), _decoded(items[k].image))
    assert (report.total_rows, report.kept, report.skipped, report.converted) == (20, 20, {}, {})
    assert report.summary_line() == "catalogue: 20 of 20 rows kept; skipped 0; converted 0 to RGB"


def test_kaggle_images_are_lazy_paths_and_parquet_images_are_bytes(kaggle_dir, hf_dir):
    kaggle, _ = load_catalogue(kaggle_dir)
    hf, _ = load_catalogue(hf_dir)
    assert kaggle.images[3] == kaggle_dir / "images" / f"{kaggle.ids[3]}.jpg"
    assert isinstance(hf.images[3], bytes)
    assert hf.source == str(hf_dir)


def test_attribute_values_keep_na_and_blank_nulls(tmp_path, items):
    table = hf_table(items)
    year = pa.array([None] + [int(i.attributes["year"]) for i in items[1:]], pa.int64())
    colour = pa.array([None, float("nan")] + [i.attributes["baseColour"] for i in items[2:]], pa.string(),
                      from_pandas=True)  # fmt: skip
    table = table.set_column(table.column_names.index("year"), "year", year)
    table = table.set_column(table.column_names.index("baseColour"), "baseColour", colour)
    (tmp_path / "t").mkdir()
    pq.write_table(table, tmp_path / "t" / "x.parquet")
    catalogue, _ = load_catalogue(tmp_path / "t")
    assert catalogue.attributes["year"][:2] == ["", items[1].attributes["year"]]
    assert catalogue.attributes["baseColour"][:3] == ["", "", items[2].attributes["baseColour"]]
    assert "NA" in catalogue.attributes["usage"]
    assert catalogue.attribute_values()["usage"] == ["Casual", "Formal", "NA"]
    assert catalogue.attribute_values()["year"] == ["2010", "2011", "2012"]


def test_bad_catalogue_reports_each_defect_and_keeps_good_rows(bad_kaggle):
    catalogue, report = load_catalogue(bad_kaggle.folder, workers=2)
    assert report.skipped == bad_kaggle.expected_skips
    assert report.converted == bad_kaggle.expected_converted
    assert catalogue.ids == bad_kaggle.good_ids
    assert report.kept == len(bad_kaggle.good_ids)
    assert report.total_rows == len(bad_kaggle.good_ids) + sum(map(len, bad_kaggle.expected_skips.values()))
    for item_id, title in bad_kaggle.comma_titles.items():
        assert catalogue.titles[catalogue.index_of(item_id)] == title
        assert catalogue.item(catalogue.index_of(item_id))["attributes"]["usage"] == "Casual"
    # the first row of a duplicated id wins
    assert catalogue.titles[catalogue.index_of("2000")] != "Duplicate title"
    # converted rows decode to RGB, the transparent pixel on white
    rgba_row = catalogue.image(catalogue.index_of("3008"))
    assert rgba_row.mode == "RGB" and rgba_row.getpixel((0, 0)) == (255, 255, 255)
    assert report.summary_line() == (
        f"catalogue: 12 of {report.total_rows} rows kept; skipped 10 (malformed_row 1, missing_id 1, duplicate_id 1, "
        "empty_title 1, missing_image 1, not_an_image 1, undecodable_image 1, truncated_image 1, "
        "decompression_bomb 2); converted 3 to RGB (CMYK 1, L 1, RGBA 1)"
    )


def test_single_worker_gives_the_same_report(bad_kaggle):
    one = load_catalogue(bad_kaggle.folder, workers=1)[1]
    two = load_catalogue(bad_kaggle.folder, workers=2)[1]
    assert one.to_dict() == two.to_dict()


def test_without_validation_only_cheap_checks_run(bad_kaggle):
    catalogue, report = load_catalogue(bad_kaggle.folder, validate_images=False)
    cheap = ("malformed_row", "missing_id", "duplicate_id", "empty_title", "missing_image")
    assert report.skipped == {r: v for r, v in bad_kaggle.expected_skips.items() if r in cheap}
    assert report.converted == {}
    assert "3003" in catalogue.ids  # the truncated image is only found when decoded
    with pytest.raises(EnclipError, match="3003"):
        catalogue.image(catalogue.index_of("3003"))


def test_generic_jsonl_bad_rows(tmp_path):
    good = make_items(4, seed=5)
    path = write_jsonl_table(tmp_path, good)
    extra = [
        "not json at all",
        json.dumps([1, 2, 3]),
        json.dumps({"productDisplayName": "no id", "image": {"bytes": None, "path": None}}),
        json.dumps({"id": "77", "productDisplayName": "struct without bytes", "image": {"bytes": None, "path": None}}),
        json.dumps({"id": "78", "productDisplayName": "relative struct path", "image": {"path": "elsewhere/1000.jpg"}}),
        json.dumps({"id": "79", "productDisplayName": "missing file", "image": "nope/79.jpg"}),
        "",
    ]
    with path.open("a", encoding="utf-8") as fh:
        fh.write("\n".join(extra) + "\n")
    catalogue, report = load_catalogue(path)
    assert report.skipped == {"malformed_row": ["line 5", "line 6"], "missing_id": ["line 7"],
                              "missing_image": ["77", "79"]}  # fmt: skip
    assert catalogue.ids == [i.id for i in good] + ["78"]
    assert catalogue.attributes["gender"][-1] == ""  # keys absent from a record become ""
    assert report.total_rows == 10


def test_limit_reads_only_the_first_rows(hf_dir, kaggle_dir, items):
    for source in (hf_dir, kaggle_dir):
        catalogue, report = load_catalogue(source, limit=7)
        assert catalogue.ids == [i.id for i in items[:7]]
        assert report.total_rows == 7
    with pytest.raises(EnclipError, match="positive"):
        load_catalogue(hf_dir, limit=0)


def test_missing_required_column_names_it_and_how_to_map(tmp_path, items):
    path = write_csv_table(tmp_path, items)
    with pytest.raises(EnclipError) as info:
        load_catalogue(path)  # default ColumnMap expects "id", but the table has "sku"
    message = str(info.value)
    assert "'id'" in message and "sku, name, picture" in message
    assert "ColumnMap" in message and "--columns id=...,title=...,image=..." in message
    with pytest.raises(EnclipError, match="'image'"):
        load_catalogue(path, ColumnMap(id="sku", title="name"))
    with pytest.raises(EnclipError, match="colour"):
        load_catalogue(path, ColumnMap(id="sku", title="name", image="picture", attributes=("colour",)))


def test_selected_attributes_only(tmp_path, items):
    path = write_csv_table(tmp_path, items)
    catalogue, _ = load_catalogue(path, ColumnMap(id="sku", title="name", image="picture", attributes=("usage",)))
    assert list(catalogue.attributes) == ["usage"]


@pytest.mark.parametrize(
    "make, pattern",
    [
        (lambda d: d / "nowhere", "does not exist"),
        (lambda d: d / "missing.csv", "does not exist"),
        (lambda d: d, "no catalogue found"),
        (lambda d: (d / "notes.txt").write_text("x") and d / "notes.txt", "unsupported file type .txt"),
        (lambda d: (d / "x.parquet").write_bytes(b"PAR1 not really") and d / "x.parquet", "cannot read parquet"),
        (lambda d: (d / "styles.csv").write_text("id,productDisplayName\n1,a\n") and d, "no images/ folder"),
        (lambda d: [(d / n).write_text("id\n") for n in ("a.csv", "b.csv")] and d, "several tables"),
        (lambda d: (d / "wide.csv").write_bytes("id,t\n1,x\n".encode("utf-16")) and d / "wide.csv", "UTF-16"),
    ],
)
def test_bad_sources_raise_clear_errors(tmp_path, make, pattern):
    folder = tmp_path / "src"
    folder.mkdir()
    with pytest.raises(EnclipError, match=pattern):
        load_catalogue(make(folder))


def test_no_usable_rows_is_an_error_naming_the_reasons(tmp_path, items):
    folder = write_kaggle(tmp_path / "k", items[:3])
    for path in (folder / "images").iterdir():
        path.write_bytes(b"not an image")
    with pytest.raises(EnclipError, match=r"no usable rows.*not_an_image 3"):
        load_catalogue(folder)
    header_only = tmp_path / "empty.csv"
    header_only.write_text("id,productDisplayName,image\n")
    with pytest.raises(EnclipError, match="no usable rows"):
        load_catalogue(header_only)


def test_hub_id_is_downloaded_with_snapshot_download(monkeypatch, hf_dir, items):
    import huggingface_hub

    calls = []

    def fake_download(repo_id, **kwargs):
        calls.append((repo_id, kwargs))
        return str(hf_dir)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_download)
    catalogue, _ = load_catalogue("someone/fashion-products")
    assert calls == [("someone/fashion-products", {"repo_type": "dataset", "allow_patterns": ["*.parquet"]})]
    assert catalogue.ids == [i.id for i in items] and catalogue.source == "someone/fashion-products"


def test_hub_download_failure_says_offline(monkeypatch):
    import huggingface_hub

    def offline(repo_id, **kwargs):
        raise ConnectionError("no route to host")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", offline)
    with pytest.raises(EnclipError, match="offline.*local folder"):
        load_catalogue("someone/fashion-products")


def test_catalogue_methods(hf_dir, items):
    catalogue, _ = load_catalogue(hf_dir)
    assert len(catalogue) == 20
    assert catalogue.index_of(items[5].id) == 5
    with pytest.raises(EnclipError, match="'nope'"):
        catalogue.index_of("nope")
    part = catalogue.subset(np.array([4, 2]))
    assert part.ids == [items[4].id, items[2].id] and part.images == [items[4].image, items[2].image]
    assert part.attributes["usage"] == [items[4].attributes["usage"], items[2].attributes["usage"]]
    assert len(catalogue) == 20 and catalogue.index_of(items[4].id) == 4  # the original is untouched
    with pytest.raises(IndexError):
        catalogue.subset([20])
    assert catalogue.item(1) == {"id": items[1].id, "title": items[1].title, "attributes": items[1].attributes}


def test_fingerprint_depends_on_content_not_location(tmp_path, items):
    a, _ = load_catalogue(write_hf_parquet(tmp_path / "a", items))
    b, _ = load_catalogue(write_hf_parquet(tmp_path / "b", items, shards=1))
    assert len(a.fingerprint()) == 16 and a.fingerprint() == b.fingerprint()
    assert a.subset(range(19)).fingerprint() != a.fingerprint()
    retitled = a.subset(range(20))
    retitled.titles[0] += "!"
    assert retitled.fingerprint() != a.fingerprint()
    recoloured = a.subset(range(20))
    recoloured.attributes["baseColour"][0] = "Pink"
    assert recoloured.fingerprint() != a.fingerprint()
    reimaged = a.subset(range(20))
    reimaged.images[0] = items[1].image
    assert reimaged.fingerprint() != a.fingerprint()


def test_skip_report_summary_and_atomic_write(tmp_path):
    converted = {"RGBA": ["9"], "L": [str(i) for i in range(431)]}
    report = SkipReport(skipped={"missing_image": ["1", "2", "3", "4", "5"]}, converted=converted,
                        total_rows=44446, kept=44441)  # fmt: skip
    assert report.summary_line() == (
        "catalogue: 44441 of 44446 rows kept; skipped 5 (missing_image 5); converted 432 to RGB (L 431, RGBA 1)"
    )
    path = tmp_path / "skips.json"
    path.write_text("old")
    report.write(path)
    saved = json.loads(path.read_text())
    assert saved == report.to_dict()
    assert saved["skipped_counts"] == {"missing_image": 5} and saved["converted_counts"] == {"RGBA": 1, "L": 431}
    assert [p.name for p in tmp_path.iterdir()] == ["skips.json"]


# ---- the real catalogue -----------------------------------------------------------------------------------------

MISSING_REAL_IDS = ["39403", "39410", "39401", "39425", "12347"]


def _parquet_rows(real_data: Path, ids: list[int]) -> dict[str, dict]:
    table = pq.read_table(sorted(real_data.glob("*.parquet")), filters=[("id", "in", ids)])
    return {str(row["id"]): row for row in table.to_pylist()}


@pytest.mark.realdata
def test_real_kaggle_styles_csv_subset(real_data, tmp_path):
    lines = (real_data / "styles.csv").read_text(encoding="utf-8").splitlines()
    header, body = lines[0], lines[1:]
    comma_lines = [line for line in body if line.count(",") > 9]
    missing_lines = [line for line in body if line.split(",", 1)[0] in MISSING_REAL_IDS]
    chosen = list(dict.fromkeys(body[:300] + comma_lines + missing_lines))
    assert len(comma_lines) == 22 and len(missing_lines) == 5
    folder = tmp_path / "kaggle"
    (folder / "images").mkdir(parents=True)
    (folder / "styles.csv").write_text("\n".join([header, *chosen]) + "\n", encoding="utf-8")
    rows = _parquet_rows(real_data, [int(line.split(",", 1)[0]) for line in chosen])
    for item_id, row in rows.items():
        (folder / "images" / f"{item_id}.jpg").write_bytes(row["image"]["bytes"])

    catalogue, report = load_catalogue(folder)
    assert sorted(report.skipped) == ["missing_image"]
    assert sorted(report.skipped["missing_image"]) == sorted(MISSING_REAL_IDS)
    assert report.total_rows == len(chosen) and report.kept == len(chosen) - 5 == len(rows)
    for k, item_id in enumerate(catalogue.ids):  # every field agrees with the parquet copy: 10 fields per row
        row = rows[item_id]
        assert catalogue.titles[k] == row["productDisplayName"]
        for name in ATTRIBUTES:
            expected = "" if row[name] is None else str(row[name])
            assert catalogue.attributes[name][k] == expected, (item_id, name)
    comma_ids = [line.split(",", 1)[0] for line in comma_lines]
    assert all("," in catalogue.titles[catalogue.index_of(i)] for i in comma_ids)


@pytest.mark.realdata
def test_real_parquet_with_limit(real_data):
    catalogue, report = load_catalogue(real_data, limit=2000)
    assert len(catalogue) == report.kept == report.total_rows == 2000 and report.skipped == {}
    first = pq.read_table(sorted(real_data.glob("*.parquet"))[0], columns=["id", "image"]).slice(0, 2000)
    assert catalogue.ids == [str(i) for i in first.column("id").to_pylist()]
    modes: dict[str, list[str]] = {}
    for item_id, image in zip(catalogue.ids, first.column("image").to_pylist()):
        mode = Image.open(io.BytesIO(image["bytes"])).mode
        if mode != "RGB":
            modes.setdefault(mode, []).append(item_id)
    assert report.converted == modes
    ids = np.array([int(i) for i in catalogue.ids])
    sizes = {name: len(idx) for name, idx in split_indices(catalogue.ids).items()}
    assert sizes == {"test": int((ids % 10 == 0).sum()), "val": int((ids % 10 == 1).sum()),
                     "train": int((ids % 10 >= 2).sum())}  # fmt: skip
