"""Seeded synthetic catalogues, in every format load_catalogue reads, built on tmp_path.

Images are small JPEGs drawn with PIL from a seeded generator, so tests are hermetic and fast. The "bad"
catalogue holds one or more rows of every defect the loader must report, with the expected counts beside it.
"""

from __future__ import annotations

import csv
import io
import json
import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image, ImageDraw

from enclip.cli import SHARED_CATALOGUE

KAGGLE_COLUMNS = ["id", "gender", "masterCategory", "subCategory", "articleType", "baseColour", "season", "year",
                  "usage", "productDisplayName"]  # fmt: skip
ATTRIBUTES = KAGGLE_COLUMNS[1:-1]
REAL_DATA = SHARED_CATALOGUE

_GENDERS = ["Men", "Women", "Unisex"]
_TYPES = [("Apparel", "Topwear", "Shirts"), ("Apparel", "Bottomwear", "Jeans"), ("Footwear", "Shoes", "Casual Shoes")]
_COLOURS = {"Navy Blue": (20, 30, 90), "Red": (200, 20, 20), "Green": (30, 160, 40), "Black": (10, 10, 10)}
_USAGES = ["Casual", "Formal", "NA"]


@dataclass
class Item:
    id: str
    title: str
    attributes: dict[str, str]
    image: bytes = field(repr=False)


def draw_photo(rng: np.random.Generator, colour: tuple[int, int, int], size: tuple[int, int] = (60, 80)) -> Image.Image:
    """A product-like photo: white background, a coloured garment-ish shape, a little noise."""
    img = Image.new("RGB", size, (255, 255, 255))
    draw = ImageDraw.Draw(img)
    w, h = size
    x0, y0 = int(rng.integers(2, w // 4)), int(rng.integers(2, h // 4))
    draw.rectangle([x0, y0, w - x0, h - y0], fill=colour)
    draw.ellipse([w // 3, h // 3, w // 3 + 8, h // 3 + 8], fill=tuple(int(c) for c in rng.integers(0, 255, 3)))
    return img


def encode(img: Image.Image, fmt: str = "JPEG", **options) -> bytes:
    buffer = io.BytesIO()
    img.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def png_declaring(width: int, height: int) -> bytes:
    """A tiny valid PNG whose header claims width x height pixels: a decompression bomb in 70 bytes."""
    data = bytearray(encode(Image.new("L", (1, 1)), "PNG"))
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    return bytes(data)


def make_items(n: int = 20, seed: int = 0, first_id: int = 1000) -> list[Item]:
    rng = np.random.default_rng(seed)
    items = []
    for k in range(n):
        gender = _GENDERS[k % 3]
        master, sub, article = _TYPES[k % len(_TYPES)]
        colour = list(_COLOURS)[k % len(_COLOURS)]
        attributes = {"gender": gender, "masterCategory": master, "subCategory": sub, "articleType": article,
                      "baseColour": colour, "season": "Summer", "year": str(2010 + k % 3),
                      "usage": _USAGES[k % 3]}  # fmt: skip
        title = f"Brand{k} {gender} {colour} {article}"
        image = encode(draw_photo(rng, _COLOURS[colour]), quality=90)
        items.append(Item(str(first_id + k), title, attributes, image))
    return items


def write_kaggle(folder: Path, items: list[Item]) -> Path:
    (folder / "images").mkdir(parents=True)
    lines = [",".join(KAGGLE_COLUMNS)]
    for item in items:
        lines.append(",".join([item.id, *(item.attributes[a] for a in ATTRIBUTES), item.title]))
        (folder / "images" / f"{item.id}.jpg").write_bytes(item.image)
    (folder / "styles.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return folder


def hf_table(items: list[Item]) -> pa.Table:
    """The Hugging Face layout: int64 id and year, string attributes, image as {bytes, path} struct."""
    columns = {"id": pa.array([int(i.id) for i in items], pa.int64())}
    for name in ATTRIBUTES:
        values = [i.attributes[name] for i in items]
        columns[name] = pa.array([int(v) for v in values], pa.int64()) if name == "year" else pa.array(values)
    columns["productDisplayName"] = pa.array([i.title for i in items])
    columns["image"] = pa.array([{"bytes": i.image, "path": f"{i.id}.jpg"} for i in items],
                                pa.struct([("bytes", pa.binary()), ("path", pa.string())]))  # fmt: skip
    return pa.table(columns)


def write_hf_parquet(folder: Path, items: list[Item], shards: int = 2) -> Path:
    data = folder / "data"
    data.mkdir(parents=True)
    table = hf_table(items)
    bounds = np.linspace(0, len(items), shards + 1).astype(int)
    for s in range(shards):
        part = table.slice(bounds[s], bounds[s + 1] - bounds[s])
        pq.write_table(part, data / f"train-{s:05d}-of-{shards:05d}.parquet")
    return folder


def write_image_files(folder: Path, items: list[Item]) -> dict[str, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    for item in items:
        paths[item.id] = folder / f"{item.id}.jpg"
        paths[item.id].write_bytes(item.image)
    return paths


def write_csv_table(folder: Path, items: list[Item]) -> Path:
    """Generic csv: quoted fields, relative image paths, custom column names."""
    write_image_files(folder / "photos", items)
    path = folder / "products.csv"
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["sku", "name", "picture", *ATTRIBUTES])
        for item in items:
            writer.writerow([item.id, item.title, f"photos/{item.id}.jpg", *(item.attributes[a] for a in ATTRIBUTES)])
    return path


def write_jsonl_table(folder: Path, items: list[Item]) -> Path:
    """Generic jsonl: default column names, absolute image paths."""
    paths = write_image_files(folder / "elsewhere", items)
    path = folder / "items.jsonl"
    records = [{"id": i.id, "productDisplayName": i.title, "image": str(paths[i.id]), **i.attributes} for i in items]
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def write_bytes_parquet(folder: Path, items: list[Item]) -> Path:
    """Generic parquet with a raw bytes image column."""
    folder.mkdir(parents=True, exist_ok=True)
    table = pa.table({"sku": [i.id for i in items], "name": [i.title for i in items],
                      "picture": pa.array([i.image for i in items], pa.binary()),
                      **{a: [i.attributes[a] for i in items] for a in ATTRIBUTES}})  # fmt: skip
    path = folder / "table.parquet"
    pq.write_table(table, path)
    return path


@pytest.fixture
def items() -> list[Item]:
    return make_items()


@pytest.fixture
def kaggle_dir(tmp_path: Path, items: list[Item]) -> Path:
    return write_kaggle(tmp_path / "kaggle", items)


@pytest.fixture
def hf_dir(tmp_path: Path, items: list[Item]) -> Path:
    return write_hf_parquet(tmp_path / "hf", items)


@dataclass
class BadCatalogue:
    folder: Path
    good_ids: list[str]  # rows that must survive (including converted ones)
    expected_skips: dict[str, list[str]]  # reason -> identifiers, in row order
    expected_converted: dict[str, list[str]]  # mode -> ids
    comma_titles: dict[str, str]  # id -> title containing commas


@pytest.fixture
def bad_kaggle(tmp_path: Path) -> BadCatalogue:
    """A Kaggle folder seeded with every defect: each bad row is listed with the reason it must be reported under."""
    rng = np.random.default_rng(7)
    good = make_items(8, seed=3, first_id=2000)
    folder = write_kaggle(tmp_path / "bad", good)
    photo = draw_photo(rng, (200, 20, 20))
    rgba = photo.convert("RGBA")
    rgba.putpixel((0, 0), (0, 0, 0, 0))
    jpeg = encode(photo)
    row_images = {
        "3001": None,  # missing_image: listed in the csv, no file
        "3002": b"\xff\xd8\xff\xe0" + bytes(rng.integers(0, 256, 300, dtype=np.uint8)),  # undecodable_image
        "3003": jpeg[: len(jpeg) // 2],  # truncated_image
        "3004": png_declaring(7000, 7000),  # decompression_bomb: over our 40M limit, under PIL's warning
        "3005": png_declaring(30000, 30000),  # decompression_bomb: over PIL's own hard limit
        "3006": b"this is a text file, not a photo\n",  # not_an_image
        "3007": encode(photo.convert("L")),  # greyscale: kept, converted
        "3008": encode(rgba, "PNG"),  # RGBA: kept, converted
        "3009": encode(photo.convert("CMYK")),  # CMYK jpeg: kept, converted
        "3010": jpeg,  # comma title: kept
        "3011": jpeg,  # empty title
        "3012": jpeg,  # duplicate of 2000 (a good row)
    }
    for item_id, data in row_images.items():
        if data is not None:
            (folder / "images" / f"{item_id}.jpg").write_bytes(data)
    attrs = "Men,Apparel,Topwear,Shirts,Red,Summer,2012,Casual"
    comma_title = "Turtle Men Red Tie, Cufflink, and Pocket Square Set"
    lines = [f"{i},{attrs},Title {i}" for i in row_images if i not in ("3010", "3011", "3012")]
    lines += [f"3010,{attrs},{comma_title}", f"3011,{attrs},   ", f"2000,{attrs},Duplicate title",
              "3013,Men,Apparel,too few fields", f",{attrs},Nameless product"]  # fmt: skip
    with (folder / "styles.csv").open("a", encoding="utf-8") as fh:
        fh.write("\n".join(lines) + "\n")
    first_bad_line = len(good) + 2  # header is line 1
    expected = {
        "missing_image": ["3001"], "undecodable_image": ["3002"], "truncated_image": ["3003"],
        "decompression_bomb": ["3004", "3005"], "not_an_image": ["3006"], "empty_title": ["3011"],
        "duplicate_id": ["2000"], "malformed_row": [f"line {first_bad_line + 12}"],
        "missing_id": [f"line {first_bad_line + 13}"],
    }  # fmt: skip
    return BadCatalogue(
        folder=folder,
        good_ids=[i.id for i in good] + ["3007", "3008", "3009", "3010"],
        expected_skips=expected,
        expected_converted={"L": ["3007"], "RGBA": ["3008"], "CMYK": ["3009"]},
        comma_titles={"3010": comma_title},
    )


@pytest.fixture
def real_data() -> Path:
    if not (REAL_DATA / "styles.csv").is_file() or not list(REAL_DATA.glob("*.parquet")):
        pytest.skip(f"real catalogue not found at {REAL_DATA}")
    return REAL_DATA
