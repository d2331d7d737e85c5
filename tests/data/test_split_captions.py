"""The id-based split and caption building, against hand-worked examples."""

from __future__ import annotations

import numpy as np
import pytest

from enclip.data.captions import CaptionCfg, build_captions
from enclip.data.split import split_indices, split_of
from enclip.errors import EnclipError

ATTRS = {"gender": "Men", "articleType": "Shirts", "baseColour": "Navy Blue", "usage": "Casual"}


@pytest.mark.parametrize(
    "item_id, split",
    [("15970", "test"), ("0", "test"), ("39381", "val"), ("1", "val"), ("1163", "train"), ("44069", "train"),
     ("0012", "train"),
     # non-numeric ids: zlib.crc32 of the utf-8 bytes, worked out once: sku-h -> 0, sku-e -> 1, abc -> 8
     ("sku-h", "test"), ("sku-e", "val"), ("abc", "train"), ("-10", "train")],
)  # fmt: skip
def test_split_of(item_id, split):
    assert split_of(item_id) == split


def test_split_indices_hand_example():
    parts = split_indices(["10", "11", "12", "sku-h", "21", "33"])
    assert {k: v.tolist() for k, v in parts.items()} == {"train": [2, 5], "val": [1, 4], "test": [0, 3]}
    assert all(v.dtype == np.int64 for v in parts.values())
    assert {k: v.tolist() for k, v in split_indices([]).items()} == {"train": [], "val": [], "test": []}


def test_split_indices_match_id_modulo_ten():
    ids = np.random.default_rng(0).integers(0, 100_000, 1000)
    parts = split_indices([str(i) for i in ids])
    assert np.array_equal(parts["test"], np.flatnonzero(ids % 10 == 0))
    assert np.array_equal(parts["val"], np.flatnonzero(ids % 10 == 1))
    assert np.array_equal(parts["train"], np.flatnonzero(ids % 10 >= 2))


def test_title_only_by_default():
    assert build_captions("Turtle Check Men Navy Blue Shirt", ATTRS, CaptionCfg()) == [
        "Turtle Check Men Navy Blue Shirt"
    ]


def test_attribute_templates():
    cfg = CaptionCfg(use_attributes=True)
    assert build_captions("A shirt", ATTRS, cfg) == [
        "A shirt",
        "Men Shirts in Navy Blue",
        "Navy Blue Shirts for Casual",
    ]


def test_templates_with_missing_empty_or_na_fields_are_skipped():
    cfg = CaptionCfg(use_attributes=True)
    assert build_captions("t", {**ATTRS, "usage": "NA"}, cfg) == ["t", "Men Shirts in Navy Blue"]
    assert build_captions("t", {**ATTRS, "gender": "  "}, cfg) == ["t", "Navy Blue Shirts for Casual"]
    no_colour = {k: v for k, v in ATTRS.items() if k != "baseColour"}
    assert build_captions("t", no_colour, cfg) == ["t"]
    keep_na = CaptionCfg(use_attributes=True, missing_values=())
    assert build_captions("t", {**ATTRS, "usage": "NA"}, keep_na)[-1] == "Navy Blue Shirts for NA"


def test_duplicate_captions_dropped_and_whitespace_collapsed():
    cfg = CaptionCfg(use_attributes=True, templates=("{gender}  {articleType}", "{gender} {articleType}", "{usage}"))
    attrs = dict(ATTRS)
    assert build_captions("Casual", attrs, cfg) == ["Casual", "Men Shirts"]
    assert attrs == ATTRS  # inputs are not mutated


def test_positional_template_is_rejected():
    with pytest.raises(EnclipError, match="positional field"):
        build_captions("t", ATTRS, CaptionCfg(use_attributes=True, templates=("{} shirt",)))
