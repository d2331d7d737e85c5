"""Every index backend against the exact numpy index, on the same calls (qdrant-client congruence style).

The vectors are seeded Gaussian clusters on the unit sphere, like real image/text embeddings. (On structureless
uniform-sphere data IVF with default params, 51 lists and 16 probes at n=2000, reaches only ~0.83 recall@10; HNSW is
checked on that harder data too.)
"""

import numpy as np
import pytest

from enclip.errors import EnclipError
from enclip.vectors import INDEX_KINDS, ExactIndex, IndexCfg, create_index
from tests.vectors.conftest import normalise

DIM = 32
N = 2000
KINDS = ["exact", "flat", "hnsw", "ivf"]
FAST_KINDS = ["flat", "hnsw", "ivf"]
NO_FALLBACK = {"filter_exact_rows": 0, "filter_exact_fraction": 0.0}


def clustered(n: int, seed: int, n_clusters: int = 50, spread: float = 1.0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = normalise(np.random.default_rng(1234).standard_normal((n_clusters, DIM)))
    labels = rng.integers(0, n_clusters, n)
    return normalise(centres[labels] + spread * rng.standard_normal((n, DIM)) / np.sqrt(DIM))


def uniform(n: int, seed: int) -> np.ndarray:
    return normalise(np.random.default_rng(seed).standard_normal((n, DIM)))


def build(kind: str, vectors: np.ndarray, **cfg) -> object:
    index = create_index(DIM, IndexCfg(kind=kind, **cfg))
    index.add(vectors)
    return index


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    """Mean fraction of the true (non-padding) results found, per query."""
    per_query = []
    for got, want in zip(found, truth):
        want = set(want[want >= 0].tolist())
        per_query.append(len(want & set(got.tolist())) / len(want) if want else 1.0)
    return float(np.mean(per_query))


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray]:
    return clustered(N, seed=0), clustered(60, seed=1)


@pytest.fixture(scope="module")
def indexes(data) -> dict:
    vectors, _ = data
    return {kind: build(kind, vectors) for kind in KINDS}


def assert_same_results(got, want) -> None:
    np.testing.assert_array_equal(got[1], want[1])
    np.testing.assert_allclose(got[0], want[0], atol=1e-5)


def test_every_registered_kind_is_checked():
    assert sorted(INDEX_KINDS) == sorted(KINDS)


def test_exact_index_agrees_with_hand_computed_ranking():
    vectors = np.array([[1, 0], [0.6, 0.8], [0, 1], [-1, 0]], dtype=np.float32)
    index = ExactIndex(2)
    index.add(vectors)
    scores, positions = index.search(np.array([[0.8, 0.6]], dtype=np.float32), k=3)
    np.testing.assert_array_equal(positions, [[1, 0, 2]])
    np.testing.assert_allclose(scores, [[0.96, 0.8, 0.6]], atol=1e-6)


def test_flat_matches_exact(data, indexes):
    _, queries = data
    assert_same_results(indexes["flat"].search(queries, 10), indexes["exact"].search(queries, 10))


@pytest.mark.parametrize("kind,dataset", [("hnsw", "clustered"), ("hnsw", "uniform"), ("ivf", "clustered")])
def test_approximate_recall_at_default_params(kind, dataset, data, indexes):
    if dataset == "clustered":
        queries, approx, exact = data[1], indexes[kind], indexes["exact"]
    else:
        vectors, queries = uniform(N, seed=2), uniform(60, seed=3)
        approx, exact = build(kind, vectors), build("exact", vectors)
    scores, positions = approx.search(queries, 10)
    want_scores, want_positions = exact.search(queries, 10)
    assert recall(positions, want_positions) >= 0.95
    assert np.all(np.diff(scores, axis=1) <= 0), "results must be best first"


def allowed_forms(n: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    mask = np.random.default_rng(seed).random(n) < fraction
    return mask, np.flatnonzero(mask)


@pytest.fixture(scope="module")
def selector_indexes(data) -> dict:
    """Approximate indexes with the exact fallback for selective filters switched off, so every filter goes
    through the faiss selector (at n=2000 the default fallback would take every filter)."""
    return {kind: build(kind, data[0], **NO_FALLBACK) for kind in ("hnsw", "ivf")}


@pytest.mark.parametrize("kind", FAST_KINDS)
def test_filtered_search_through_faiss_selector(kind, data, indexes, selector_indexes):
    _, queries = data
    index = indexes["flat"] if kind == "flat" else selector_indexes[kind]
    mask, positions_allowed = allowed_forms(N, 0.5, seed=4)
    want = indexes["exact"].search(queries, 10, allowed=mask)
    by_mask = index.search(queries, 10, allowed=mask)
    by_list = index.search(queries, 10, allowed=positions_allowed)
    assert np.isin(by_mask[1], positions_allowed).all()
    assert_same_results(by_list, by_mask)
    if kind == "flat":
        assert_same_results(by_mask, want)
    else:
        assert recall(by_mask[1], want[1]) >= 0.95


@pytest.mark.parametrize("kind", FAST_KINDS)
@pytest.mark.parametrize("fraction", [0.5, 0.15, 0.02])
def test_filtered_search_at_default_params_matches_exact(kind, fraction, data, indexes):
    _, queries = data
    mask, positions_allowed = allowed_forms(N, fraction, seed=4)
    want = indexes["exact"].search(queries, 10, allowed=mask)
    assert_same_results(indexes[kind].search(queries, 10, allowed=mask), want)
    assert_same_results(indexes[kind].search(queries, 10, allowed=positions_allowed), want)


@pytest.mark.parametrize("kind", KINDS)
def test_very_selective_filter_is_exact_and_padded(kind, data, indexes):
    _, queries = data
    allowed = np.array([1999, 3, 700, 42, 1500])
    scores, positions = indexes[kind].search(queries, 10, allowed=allowed)
    want_scores = queries @ indexes["exact"].reconstruct(allowed).T
    order = np.argsort(-want_scores, axis=1, kind="stable")
    np.testing.assert_array_equal(positions[:, :5], allowed[order])
    np.testing.assert_allclose(scores[:, :5], np.take_along_axis(want_scores, order, axis=1), atol=1e-5)
    assert (positions[:, 5:] == -1).all() and np.isneginf(scores[:, 5:]).all()


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("empty", [np.zeros(N, dtype=bool), np.array([], dtype=np.int64), []])
def test_empty_filter_returns_only_padding(kind, empty, data, indexes):
    scores, positions = indexes[kind].search(data[1][:3], 4, allowed=empty)
    assert positions.shape == (3, 4) and (positions == -1).all()
    assert scores.dtype == np.float32 and np.isneginf(scores).all()


@pytest.mark.parametrize("kind", FAST_KINDS)
def test_removed_rows_never_come_back(kind, data):
    vectors, queries = data
    index, exact = build(kind, vectors, **NO_FALLBACK), build("exact", vectors)
    _, top = exact.search(queries, 3)
    removed = np.unique(np.concatenate([top[:, 0], np.arange(0, N, 10)]))
    index.remove(removed)
    exact.remove(removed)
    mask, _ = allowed_forms(N, 0.5, seed=5)
    for allowed in (None, mask, removed[:50]):
        got, want = index.search(queries, 10, allowed=allowed), exact.search(queries, 10, allowed=allowed)
        assert not np.isin(got[1], removed).any()
        if kind == "flat":
            assert_same_results(got, want)
        else:
            assert recall(got[1], want[1]) >= 0.95
    assert (index.search(queries, 5, allowed=removed[:50])[1] == -1).all()


@pytest.mark.parametrize("kind", KINDS)
def test_k_larger_than_index_pads(kind, data):
    vectors, queries = data
    index = build(kind, vectors[:7])
    index.remove([2])
    scores, positions = index.search(queries[:4], 10)
    assert positions.shape == (4, 10) and positions.dtype == np.int64
    assert sorted(positions[0, :6].tolist()) == [0, 1, 3, 4, 5, 6]
    assert (positions[:, 6:] == -1).all() and np.isneginf(scores[:, 6:]).all()
    assert np.isfinite(scores[:, :6]).all()


@pytest.mark.parametrize("kind", KINDS)
def test_empty_index_search_pads(kind, data):
    scores, positions = create_index(DIM, IndexCfg(kind=kind)).search(data[1][:2], 3)
    assert (positions == -1).all() and np.isneginf(scores).all()


@pytest.mark.parametrize("kind", KINDS)
def test_float16_storage_scores_close_to_float32(kind, data):
    vectors, queries = data
    index = build(kind, vectors, dtype="float16")
    scores, positions = index.search(queries, 10)
    true_scores = np.einsum("qd,qkd->qk", queries, vectors[positions])
    np.testing.assert_allclose(scores, true_scores, atol=1e-2)
    np.testing.assert_allclose(index.reconstruct(np.arange(N)), vectors, atol=1e-3)
    assert recall(positions, build("exact", vectors).search(queries, 10)[1]) >= 0.9


@pytest.mark.parametrize("kind", KINDS)
def test_incremental_adds_equal_one_add(kind, data):
    vectors, queries = data
    index = build(kind, vectors[:1200])
    index.search(queries[:1], 1)  # IVF trains here, on the first 1200 rows only
    for start in range(1200, N, 300):
        index.add(vectors[start : start + 300])
    assert len(index) == N
    np.testing.assert_array_equal(index.reconstruct(np.arange(N)), vectors)
    _, top1 = index.search(vectors[N - 5 :], 1)
    np.testing.assert_array_equal(top1[:, 0], np.arange(N - 5, N))


def test_ivf_reduces_lists_for_small_catalogues_and_says_why(data, caplog):
    caplog.set_level("INFO", logger="enclip.vectors.faiss_backend")
    index = build("ivf", data[0][:400], ivf_nlist=64)
    index.search(data[1][:1], 1)
    assert index.nlist == 400 // 39
    assert any("can train only 10 lists" in record.getMessage() for record in caplog.records)


@pytest.mark.parametrize("kind", KINDS)
def test_bad_input_raises_enclip_error(kind, data):
    vectors, queries = data
    index = build(kind, vectors[:50])
    nan_rows = vectors[:3].copy()
    nan_rows[1, 4] = np.nan
    bad_calls = [
        lambda: index.add(vectors[:3, :16]),
        lambda: index.add(nan_rows),
        lambda: index.search(queries[:2, :16], 5),
        lambda: index.search(np.where(np.eye(2, DIM) > 0, np.inf, 0.0), 5),
        lambda: index.search(queries, 0),
        lambda: index.search(queries, -3),
        lambda: index.search(queries, 2.5),
        lambda: index.search(queries, 5, allowed=np.ones(49, dtype=bool)),
        lambda: index.search(queries, 5, allowed=np.array([0, 50])),
        lambda: index.remove(np.array([-1])),
        lambda: index.reconstruct(np.array([50])),
    ]
    for call in bad_calls:
        with pytest.raises(EnclipError):
            call()
    assert len(index) == 50, "a rejected add must not change the index"


def test_float16_rejects_rows_that_overflow(data):
    index = create_index(DIM, IndexCfg(kind="exact", dtype="float16"))
    with pytest.raises(EnclipError, match="NaN/inf"):
        index.add(np.full((1, DIM), 1e6))
    assert len(index) == 0


def test_bad_config_raises_enclip_error():
    with pytest.raises(EnclipError, match="unknown index kind"):
        create_index(DIM, IndexCfg(kind="annoy"))
    with pytest.raises(EnclipError, match="dtype"):
        create_index(DIM, IndexCfg(dtype="int8"))
    with pytest.raises(EnclipError, match="dimension"):
        create_index(0)
