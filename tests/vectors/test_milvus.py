"""The Milvus store against the exact numpy index, on the same vectors and filters (the congruence pattern of
test_congruence.py), run on embedded Milvus Lite.

FLAT must give the exact results; HNSW is held to a recall floor after its index build has finished (Milvus Lite
builds indexes in the background after a flush, so an unwaited search would be exact by accident).
"""

import numpy as np
import pytest

pytest.importorskip("pymilvus")
pytest.importorskip("milvus_lite")

from enclip.errors import EnclipError  # noqa: E402
from enclip.vectors import IndexCfg, ItemFields, Where, create_index, load_index  # noqa: E402
from enclip.vectors.milvus import quote, release_lite  # noqa: E402
from tests.vectors.test_congruence import DIM, assert_same_results, clustered, recall  # noqa: E402

pytestmark = pytest.mark.slow

N = 2000
COLOURS = ("Red", "Navy Blue", 'say "cheese"', "back\\slash", "it's", 'x" or position >= 0 or attr_0 == "', "")
GENDERS = ("Men", "Women", "Unisex")


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(5)
    attributes = {"colour": [COLOURS[i] for i in rng.integers(0, len(COLOURS), N)],
                  "gender": [GENDERS[i] for i in rng.integers(0, len(GENDERS), N)]}
    clusters = rng.integers(0, 6, N)
    fields = ItemFields(ids=[f"item{i}" for i in range(N)], attributes=attributes, clusters=clusters.tolist())
    return clustered(N, seed=0), clustered(40, seed=1), fields


@pytest.fixture(scope="module")
def uri(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("milvus") / "store.db")
    yield path
    release_lite(path)


def build(kind: str, data, uri: str | None = None, **cfg):
    vectors, _, fields = data
    index = create_index(DIM, IndexCfg(kind=kind, milvus_uri=uri, **cfg))
    index.add(vectors, fields)
    return index


@pytest.fixture(scope="module")
def indexes(data, uri):
    return {"exact": build("exact", data), "flat": build("milvus", data, uri)}


def mask_of(fields: ItemFields, attributes: dict, clusters=None) -> np.ndarray:
    mask = np.ones(len(fields), dtype=bool)
    for key, values in attributes.items():
        mask &= np.isin(np.array(fields.attributes[key], dtype=object), list(values))
    if clusters is not None:
        mask &= np.isin(np.asarray(fields.clusters), clusters)
    return mask


def test_flat_matches_exact(data, indexes):
    queries = data[1]
    assert_same_results(indexes["flat"].search(queries, 10), indexes["exact"].search(queries, 10))


@pytest.mark.parametrize("attributes,clusters", [
    ({"gender": ("Women",)}, None),
    ({"gender": ("Men", "Unisex"), "colour": ("Red", "Navy Blue")}, None),
    ({}, (1, 4)),
    ({"colour": ("Red",)}, (0, 2, 5)),
])
def test_where_filters_match_exact(attributes, clusters, data, indexes):
    queries, fields = data[1], data[2]
    mask = mask_of(fields, attributes, clusters)
    where = Where(attributes=attributes, clusters=clusters, mask=mask)
    want = indexes["exact"].search(queries, 10, allowed=mask)
    assert_same_results(indexes["flat"].search(queries, 10, allowed=where), want)


@pytest.mark.parametrize("value", COLOURS)
def test_filter_values_are_literals_never_expression_text(value, data, indexes):
    """Quotes, backslashes and a value written to look like a condition select exactly the rows holding that value."""
    queries, fields = data[1], data[2]
    mask = mask_of(fields, {"colour": (value,)})
    got = indexes["flat"].search(queries[:5], N, allowed=Where(attributes={"colour": (value,)}))
    found = got[1][got[1] >= 0]
    assert set(found.tolist()) == set(np.flatnonzero(mask).tolist())


def test_unknown_values_and_empty_filters_allow_nothing(data, indexes):
    queries = data[1][:3]
    for where in (Where(attributes={"colour": ('Red" or "1"=="1',)}), Where(attributes={"colour": ()}),
                  Where(clusters=())):
        scores, positions = indexes["flat"].search(queries, 5, allowed=where)
        assert (positions == -1).all() and np.isneginf(scores).all()
    with pytest.raises(EnclipError, match="unknown filter"):
        indexes["flat"].search(queries, 5, allowed=Where(attributes={"size": ("M",)}))


def test_quote_escapes_what_ends_a_literal():
    assert quote('a"b\\c\nd') == '"a\\"b\\\\c\\nd"'


@pytest.mark.parametrize("fraction", [0.6, 0.15, 0.02])
def test_plain_masks_and_position_lists_match_exact(fraction, data, indexes):
    queries = data[1]
    mask = np.random.default_rng(4).random(N) < fraction
    want = indexes["exact"].search(queries, 10, allowed=mask)
    assert_same_results(indexes["flat"].search(queries, 10, allowed=mask), want)
    assert_same_results(indexes["flat"].search(queries, 10, allowed=np.flatnonzero(mask)), want)
    assert_same_results(indexes["flat"].search(queries, 10, allowed=Where(mask=mask)), want)


def test_reconstruct_returns_the_stored_vectors(data, indexes):
    positions = np.array([1999, 0, 700, 0])
    np.testing.assert_allclose(indexes["flat"].reconstruct(positions), data[0][positions], atol=1e-7)
    assert indexes["flat"].reconstruct(5).shape == (DIM,)


def test_removal_add_save_and_reload(data, uri, tmp_path):
    vectors, queries, fields = data
    store, exact = build("milvus", data, uri), build("exact", data)
    removed = np.unique(np.concatenate([exact.search(queries, 2)[1].ravel(), np.arange(0, N, 9)]))
    store.remove(removed)
    exact.remove(removed)
    extra = clustered(50, seed=9)
    extra_fields = ItemFields(ids=[f"new{i}" for i in range(50)], attributes={"colour": ["Red"] * 50},
                              clusters=[3] * 50)
    store.add(extra, extra_fields)
    exact.add(extra)
    assert len(store) == N + 50 and store.n_removed == len(removed)
    store.save(tmp_path / "vectors")
    reopened = load_index(tmp_path / "vectors")
    assert reopened.kind == "milvus" and len(reopened) == N + 50 and reopened.n_removed == len(removed)
    mask = np.concatenate([mask_of(fields, {"colour": ("Red",)}), np.ones(50, dtype=bool)])
    for index in (store, reopened):
        assert_same_results(index.search(queries, 10), exact.search(queries, 10))
        got = index.search(queries, 10, allowed=Where(attributes={"colour": ("Red",)}, mask=mask))
        assert_same_results(got, exact.search(queries, 10, allowed=mask))
        assert not np.isin(index.search(queries, 50)[1], removed).any()


def test_rows_added_after_the_last_save_are_replaced_by_the_next_change(data, uri, tmp_path):
    """A restarted service reopens the saved index and replays its changelog: rows added after the save must neither
    show up before the replay nor be duplicated by it."""
    vectors, queries, fields = data
    store = build("milvus", data, uri)
    store.save(tmp_path / "vectors")
    one = ItemFields(ids=["late"], attributes={"colour": ["Red"]}, clusters=[0])
    store.add(queries[:1], one)  # after the save: a change the changelog would hold
    reopened = load_index(tmp_path / "vectors")
    assert len(reopened) == N and reopened.n_removed == 0 and reopened.search(queries[:1], 1)[1][0, 0] != N
    reopened.add(queries[:1], one)  # the replay
    assert len(reopened) == N + 1 and reopened.n_removed == 0
    assert reopened.search(queries[:1], 1)[1][0, 0] == N


def test_hnsw_recall_floor_against_exact(data, uri, indexes):
    queries = data[1]
    hnsw = build("milvus", data, uri, milvus_index="hnsw")
    hnsw.wait_for_index()
    scores, positions = hnsw.search(queries, 10)
    assert recall(positions, indexes["exact"].search(queries, 10)[1]) >= 0.95
    assert np.all(np.diff(scores, axis=1) <= 0), "results must be best first"
    where = Where(attributes={"gender": ("Women",)})
    mask = mask_of(data[2], {"gender": ("Women",)})
    filtered = hnsw.search(queries, 10, allowed=where)[1]
    assert recall(filtered, indexes["exact"].search(queries, 10, allowed=mask)[1]) >= 0.95


def test_bad_uri_and_missing_fields_raise_enclip_error(data, uri):
    with pytest.raises(EnclipError, match="URI"):
        create_index(DIM, IndexCfg(kind="milvus", milvus_uri="store.sqlite"))
    with pytest.raises(EnclipError, match="needs the ids"):
        create_index(DIM, IndexCfg(kind="milvus", milvus_uri=uri)).add(data[0][:3])
