"""Hypothesis strategies shared by the property-based tests: untrusted bytes, rows and search requests."""

from __future__ import annotations

import numpy as np
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from tests.data.conftest import draw_photo, encode

_CHECKS = [HealthCheck.function_scoped_fixture, HealthCheck.too_slow]
FAST = settings(max_examples=25, deadline=None, database=None, derandomize=True, suppress_health_check=_CHECKS)
"""The default suite: few examples, the same ones on every run."""
SLOW = settings(max_examples=1000, deadline=None, database=None, suppress_health_check=_CHECKS)
"""The ``slow`` set: many fresh random examples on every run."""

_PHOTO = draw_photo(np.random.default_rng(0), (200, 20, 20), size=(24, 20))
VALID_IMAGES = [encode(_PHOTO), encode(_PHOTO, "PNG"), encode(_PHOTO.convert("RGBA"), "PNG"), encode(_PHOTO, "GIF"),
                encode(_PHOTO.convert("L"), "BMP"), encode(_PHOTO, "WEBP"), encode(_PHOTO, "TIFF")]
MAGIC = [b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"GIF89a", b"BM", b"II*\x00", b"MM\x00*", b"RIFF\x00\x00\x00\x00WEBP"]


@st.composite
def image_like_bytes(draw) -> bytes:
    """Random bytes, a known signature followed by junk, or a valid photo truncated and with bytes flipped."""
    kind = draw(st.sampled_from(["random", "magic", "damaged"]))
    if kind == "random":
        return draw(st.binary(max_size=600))
    if kind == "magic":
        return draw(st.sampled_from(MAGIC)) + draw(st.binary(max_size=600))
    data = bytearray(draw(st.sampled_from(VALID_IMAGES)))
    data = data[: draw(st.integers(0, len(data)))] if draw(st.booleans()) else data
    for _ in range(draw(st.integers(0, 6))):
        if data:
            data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
    return bytes(data)


CELL = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\r\n"), max_size=12)
"""One table cell: any text on one line."""
JSON_VALUE = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | CELL,
                          lambda inner: st.lists(inner, max_size=3) | st.dictionaries(CELL, inner, max_size=3),
                          max_leaves=6)
"""Any JSON value (without NaN, which strict JSON lacks)."""

FILTER_KEYS = ["gender", "masterCategory", "articleType", "baseColour", "usage"]
TEXT = st.one_of(st.text(max_size=30), st.sampled_from(["shirt", "red dress", "\ud800 shirt", "", "   "]))
VALUES = st.sampled_from(["Men", "Women", "Unisex", "Red", "Shirts", "Casual", "", "men"])
FILTERS = st.dictionaries(st.sampled_from(FILTER_KEYS) | TEXT,
                          st.one_of(VALUES, TEXT, st.lists(VALUES | TEXT, max_size=3), st.integers(), st.none(),
                                    st.dictionaries(TEXT, TEXT, max_size=1)), max_size=3)
"""Filter dictionaries: known and unknown keys, right and wrong values, wrong types."""
ANY_JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | TEXT,
                        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(TEXT, inner, max_size=3),
                        max_leaves=5)
SEARCH_BODY = st.fixed_dictionaries({}, optional={
    "text": TEXT | ANY_JSON, "image_id": st.sampled_from(["1000", "1001", "nope", ""]) | ANY_JSON,
    "weight": st.floats() | st.sampled_from([0, 1, 0.3]) | ANY_JSON, "k": st.integers(-3, 10**12) | ANY_JSON,
    "fusion": st.sampled_from(["mean", "rrf", "routed", "max"]) | ANY_JSON, "filters": FILTERS | ANY_JSON,
    "clusters": ANY_JSON})
"""Search requests: every field of the schema, each with good, bad and wrong-typed values, plus unknown ones."""
