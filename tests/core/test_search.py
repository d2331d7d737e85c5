"""Index build and search on a tiny trained ensemble: fusion exactness, filters, live changes, atomic writes."""

from __future__ import annotations

import json

import numpy as np
import pytest

from enclip import load_searcher
from enclip.errors import EnclipError
from enclip.indexing import build_index
from enclip.models.ensemble import load_model


@pytest.fixture(scope="module")
def searcher(tiny_index_dir):
    # these tests are about the photo channel and its member fusion, on plain cosines (test_hubness: the penalty;
    # test_feedback: pseudo-relevance feedback)
    return load_searcher(tiny_index_dir, channels=("image",), hubness=0.0, feedback=0.0, bridge=0.0)


def _member_vectors(model_dir, catalogue):
    ensemble, _ = load_model(model_dir)
    return ensemble.encode_images([catalogue.image(i) for i in range(len(catalogue))])  # (K, n, d)


def test_index_holds_every_member_vector_of_every_item(searcher, catalogue, tiny_ensemble_dir):
    members = _member_vectors(tiny_ensemble_dir, catalogue)
    stored = searcher.index.reconstruct(np.arange(len(catalogue))).reshape(len(catalogue), searcher.members, -1)
    np.testing.assert_allclose(stored.transpose(1, 0, 2), members, atol=1e-5)
    assert np.allclose(np.linalg.norm(stored, axis=2), 1.0, atol=1e-4)


def test_single_concatenated_index_ranks_like_per_member_mean(searcher, catalogue, tiny_ensemble_dir):
    members = _member_vectors(tiny_ensemble_dir, catalogue)
    for text in ["Men Red Shirts", "Women Black Jeans", "Casual Shoes"]:
        query = searcher.encode_query(text=text)  # (K, d)
        per_member = np.einsum("knd,kd->kn", members, query)[:, None, :]
        reference = np.argsort(-per_member.mean(axis=0)[0], kind="stable")[:10]
        got = [catalogue.index_of(h.id) for h in searcher.search(text=text, k=10, fusion="mean").hits]
        assert got == reference.tolist()


@pytest.mark.parametrize("rule", ["mean", "routed", "item-routed", "rrf"])
def test_every_fusion_rule_answers_with_member_agreement(searcher, rule):
    result = searcher.search(text="Women Green Jeans", k=5, fusion=rule)
    assert result.fusion == rule and len(result.hits) == 5
    scores = [h.score for h in result.hits]
    assert scores == sorted(scores, reverse=True)
    for hit in result.hits:
        assert len(hit.member_scores) == 3 and 0 <= hit.votes <= 3
        assert hit.spread == pytest.approx(float(np.std(hit.member_scores)), abs=1e-6)


@pytest.mark.parametrize("rule", ["mean", "routed", "item-routed", "rrf"])
def test_batched_search_gives_each_query_its_own_hits(searcher, rule):
    texts = ["Women Green Jeans", "Men Red Shirts", "Casual Shoes", "Black Watch"]
    queries = np.stack([searcher.encode_query(text=t) for t in texts], axis=1)  # (K, B, d)
    filters = {"gender": ["Men", "Women"]}
    batched = searcher.search_batch(queries, k=7, fusion=rule, filters=filters)
    assert len(batched) == len(texts)
    for j, hits in enumerate(batched):
        alone = searcher.search_vectors(queries[:, j], k=7, fusion=rule, filters=filters)
        assert [(h.id, h.votes) for h in hits] == [(h.id, h.votes) for h in alone] and len(hits) == 7
        np.testing.assert_allclose([h.score for h in hits], [h.score for h in alone], rtol=1e-6)


def test_filters_restrict_results_and_unknown_keys_name_the_valid_ones(searcher):
    hits = searcher.search(text="shirt", k=50, filters={"gender": "Men", "articleType": ["Shirts", "Jeans"]}).hits
    assert hits and all(h.attributes["gender"] == "Men" for h in hits)
    assert all(h.attributes["articleType"] in ("Shirts", "Jeans") for h in hits)
    with pytest.raises(EnclipError, match="articleType"):
        searcher.search(text="shirt", filters={"colour": "Red"})


def test_image_text_and_combined_queries(searcher, catalogue):
    photo = catalogue.image_bytes(5)
    by_image = searcher.search(image=photo, k=3)
    assert by_image.hits[0].id == catalogue.ids[5]  # an item's own clean photo finds it first
    both = searcher.search(image=photo, text=catalogue.titles[5], k=3, weight=0.3)
    assert len(both.hits) == 3
    with pytest.raises(EnclipError):
        searcher.search()
    with pytest.raises(EnclipError, match="fusion"):
        searcher.search(text="x", fusion="max")


def test_cluster_restricted_search_scores_only_the_nearest_clusters(searcher):
    hits = searcher.search(text="Red Shirts", k=50, clusters=1).hits
    positions = [searcher.catalogue.index_of(h.id) for h in hits]
    assert len(set(searcher.item_clusters[positions].tolist())) == 1


def test_live_add_update_and_remove(tiny_index_dir, catalogue):
    searcher = load_searcher(tiny_index_dir)
    n = len(searcher)
    photo = catalogue.image_bytes(7)
    searcher.add_items([{"id": "new-1", "title": "Brand New Shirt", "attributes": {"gender": "Men"}}], [photo])
    assert len(searcher) == n + 1
    assert searcher.search(image=photo, k=2, filters={"gender": "Men"}).hits[0].id in ("new-1", catalogue.ids[7])
    searcher.add_items([{"id": "new-1", "title": "Renamed Shirt", "attributes": {}}], [photo])  # upsert
    assert len(searcher) == n + 1 and searcher.item("new-1")["title"] == "Renamed Shirt"
    searcher.remove_items(["new-1"])
    assert len(searcher) == n
    assert all(h.id != "new-1" for h in searcher.search(image=photo, k=20).hits)
    with pytest.raises(EnclipError):
        searcher.item("new-1")


def test_index_directory_is_self_describing(tiny_index_dir):
    manifest = json.loads((tiny_index_dir / "index.json").read_text())
    assert manifest["members"] == 3 and manifest["strategy"] == "cluster"
    assert set(manifest["versions"]) >= {"torch", "open_clip", "faiss"}
    assert (tiny_index_dir / "model" / "ensemble.json").exists()


@pytest.mark.slow
def test_interrupted_indexing_resumes_to_the_same_index(tmp_path, catalogue, tiny_ensemble_dir, monkeypatch):
    from enclip import indexing
    from enclip.vectors import IndexCfg

    cfg = indexing.IndexBuildCfg(index=IndexCfg(), shard_size=16, batch_size=8)
    straight = build_index(tiny_ensemble_dir, catalogue, tmp_path / "a", cfg)
    real_image = type(catalogue).image
    calls = {"n": 0}

    def failing_image(self, i):
        calls["n"] += 1
        if calls["n"] > 40:  # dies in the third shard
            raise KeyboardInterrupt
        return real_image(self, i)

    monkeypatch.setattr(type(catalogue), "image", failing_image)
    with pytest.raises(KeyboardInterrupt):
        build_index(tiny_ensemble_dir, catalogue, tmp_path / "b", cfg)
    assert not (tmp_path / "b").exists(), "no half-built index is left in place"
    monkeypatch.setattr(type(catalogue), "image", real_image)
    resumed = build_index(tiny_ensemble_dir, catalogue, tmp_path / "b", cfg)
    a = np.load(straight / "vectors" / "vectors.npy")
    b = np.load(resumed / "vectors" / "vectors.npy")
    np.testing.assert_array_equal(a, b)


def test_a_failed_rebuild_keeps_the_previous_index(tmp_path, catalogue, tiny_ensemble_dir, monkeypatch):
    from enclip.store import index_dir

    out = build_index(tiny_ensemble_dir, catalogue, tmp_path / "idx")
    before = (out / "index.json").read_text()
    monkeypatch.setattr(index_dir, "items_table", lambda c: (_ for _ in ()).throw(RuntimeError("disk full")))
    with pytest.raises(RuntimeError):
        build_index(tiny_ensemble_dir, catalogue, out)
    assert (out / "index.json").read_text() == before
    assert load_searcher(out).search(text="shirt", k=1).hits


def test_trunk_cache_shared_by_training_and_indexing_gives_the_same_index(tmp_path, catalogue):
    from enclip.indexing import IndexBuildCfg
    from enclip.train.run import train_system
    from tests.conftest import tiny_run_cfg

    cfg = tiny_run_cfg(epochs=1)
    cfg.trunk_cache = str(tmp_path / "trunk")
    model = train_system(catalogue, tmp_path / "model", cfg)
    cached = build_index(model, catalogue, tmp_path / "cached", IndexBuildCfg(trunk_cache=cfg.trunk_cache))
    streamed = build_index(model, catalogue, tmp_path / "streamed")
    a = np.load(cached / "vectors" / "vectors.npy")
    b = np.load(streamed / "vectors" / "vectors.npy")
    np.testing.assert_allclose(a, b, atol=2e-2)  # the cache keeps trunk outputs in float16
    assert len(list((tmp_path / "trunk").iterdir())) == 1, "one catalogue-wide cache, reused by both"


def test_auto_index_kind_is_exact_when_small_and_hnsw_when_large():
    from enclip.indexing import AUTO_FLAT_LIMIT, resolve_kind
    from enclip.vectors import IndexCfg

    assert resolve_kind(IndexCfg(kind="auto"), 44_441, 256).kind == "flat"  # one model over the catalogue
    assert resolve_kind(IndexCfg(kind="auto"), 44_441, 5 * 256).kind == "hnsw"  # K=5 members
    assert resolve_kind(IndexCfg(kind="auto"), AUTO_FLAT_LIMIT // 8, 8).kind == "flat"
    assert resolve_kind(IndexCfg(kind="ivf"), 10**7, 1024).kind == "ivf"  # an explicit kind is kept
