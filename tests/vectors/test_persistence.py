"""Saved-and-reloaded indexes against the originals, and the self-describing index_info.json."""

import json
from dataclasses import asdict

import faiss
import numpy as np
import pytest

from enclip.artifacts import atomic_dir
from enclip.errors import EnclipError
from enclip.vectors import (
    ExactIndex,
    FaissFlatIndex,
    FaissHNSWIndex,
    IndexCfg,
    VectorIndex,
    create_index,
    load_index,
)
from tests.vectors.conftest import normalise

DIM = 16
N = 600
KINDS = ["exact", "flat", "hnsw", "ivf"]


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(7)
    return normalise(rng.standard_normal((N, DIM))), normalise(rng.standard_normal((25, DIM)))


def built(kind: str, vectors: np.ndarray, **cfg) -> VectorIndex:
    index = create_index(DIM, IndexCfg(kind=kind, **cfg))
    index.add(vectors)
    index.remove(np.arange(0, N, 7))
    return index


def searches(index: VectorIndex, queries: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
    """The same calls on any index: plain, masked, listed and very selective."""
    mask = np.arange(len(index)) % 3 == 0
    return [
        index.search(queries, 10),
        index.search(queries, 10, allowed=mask),
        index.search(queries, 10, allowed=np.array([5, 9, 600 - 1])),
    ]


def assert_identical(got, want) -> None:
    for (got_scores, got_positions), (want_scores, want_positions) in zip(got, want, strict=True):
        np.testing.assert_array_equal(got_positions, want_positions)
        np.testing.assert_array_equal(got_scores, want_scores)


@pytest.mark.parametrize("dtype", ["float32", "float16"])
@pytest.mark.parametrize("kind", KINDS)
def test_save_load_gives_identical_results(kind, dtype, data, tmp_path):
    vectors, queries = data
    index = built(kind, vectors, dtype=dtype)
    before = searches(index, queries)
    index.save(tmp_path / "idx")
    loaded = load_index(tmp_path / "idx")
    assert type(loaded) is type(index) and len(loaded) == N and loaded.cfg == index.cfg
    assert_identical(searches(loaded, queries), before)
    np.testing.assert_array_equal(loaded.reconstruct(np.arange(N)), index.reconstruct(np.arange(N)))
    assert np.load(tmp_path / "idx" / "vectors.npy").dtype == np.dtype(dtype)


@pytest.mark.parametrize("kind", KINDS)
def test_mmap_load_searches_the_same_and_never_writes_the_file(kind, data, tmp_path):
    vectors, queries = data
    index = built(kind, vectors)
    index.save(tmp_path)
    on_disk = (tmp_path / "vectors.npy").read_bytes()
    loaded = load_index(tmp_path, mmap=True)
    assert_identical(searches(loaded, queries), searches(index, queries))
    fresh = normalise(np.random.default_rng(8).standard_normal((3, DIM)))
    loaded.add(fresh)
    loaded.remove([N])
    assert len(loaded) == N + 3
    _, top = loaded.search(fresh, 1)
    assert top[0, 0] != N, "a row removed after an mmap load must stay hidden"
    np.testing.assert_array_equal(top[1:, 0], [N + 1, N + 2])
    assert (tmp_path / "vectors.npy").read_bytes() == on_disk


@pytest.mark.parametrize("kind", KINDS)
def test_index_info_describes_the_index(kind, data, tmp_path):
    index = built(kind, data[0], dtype="float16", hnsw_m=16)
    index.save(tmp_path)
    info = json.loads((tmp_path / "index_info.json").read_text())
    assert info["kind"] == kind
    assert (info["dim"], info["n"], info["n_removed"], info["dtype"]) == (DIM, N, len(range(0, N, 7)), "float16")
    assert info["params"] == asdict(index.cfg) and info["params"]["hnsw_m"] == 16
    assert info["faiss_version"] == faiss.__version__
    assert info["versions"]["numpy"] == np.__version__
    assert all((tmp_path / name).is_file() for name in info["files"])
    assert ("index.faiss" in info["files"]) == (kind in ("hnsw", "ivf"))


def test_ivf_saved_before_any_search_is_trained(data, tmp_path):
    vectors, queries = data
    index = built("ivf", vectors)
    index.save(tmp_path)
    loaded = load_index(tmp_path)
    assert loaded.nlist == index.nlist == N // 39
    assert_identical(searches(loaded, queries), searches(index, queries))


@pytest.mark.parametrize("kind", KINDS)
def test_empty_index_roundtrip(kind, data, tmp_path):
    create_index(DIM, IndexCfg(kind=kind)).save(tmp_path)
    loaded = load_index(tmp_path)
    assert len(loaded) == 0
    assert (loaded.search(data[1][:2], 3)[1] == -1).all()
    loaded.add(data[0][:20])
    assert loaded.search(data[0][4:5], 1)[1][0, 0] == 4


def test_save_inside_atomic_dir_replaces_an_older_index(data, tmp_path):
    vectors, queries = data
    target = tmp_path / "index"
    built("hnsw", vectors).save(target)
    replacement = ExactIndex(DIM)
    replacement.add(vectors[:100])
    with atomic_dir(target) as staging:
        replacement.save(staging)
    loaded = load_index(target)
    assert isinstance(loaded, ExactIndex) and len(loaded) == 100
    assert not (target / "index.faiss").exists()


def test_class_load_checks_kind_and_base_class_dispatches(data, tmp_path):
    built("flat", data[0]).save(tmp_path)
    assert isinstance(VectorIndex.load(tmp_path), FaissFlatIndex)
    with pytest.raises(EnclipError, match="'flat' index, not 'hnsw'"):
        FaissHNSWIndex.load(tmp_path)


def test_damaged_directories_raise_enclip_error(data, tmp_path):
    with pytest.raises(EnclipError, match="index_info.json"):
        load_index(tmp_path / "nowhere")
    built("hnsw", data[0]).save(tmp_path)
    np.save(tmp_path / "vectors.npy", data[0][:10])
    with pytest.raises(EnclipError, match="inconsistent"):
        load_index(tmp_path)
    np.save(tmp_path / "vectors.npy", data[0])
    (tmp_path / "index.faiss").unlink()
    with pytest.raises(EnclipError, match="index.faiss is missing"):
        load_index(tmp_path)
    (tmp_path / "index_info.json").write_text("{not json")
    with pytest.raises(EnclipError, match="not valid JSON"):
        load_index(tmp_path)
