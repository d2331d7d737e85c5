"""The hubness penalty: what it measures, how search applies it, and that it survives writes and live changes."""

from __future__ import annotations

import numpy as np
import pytest

from enclip import load_searcher
from enclip.errors import EnclipError
from enclip.indexing import IndexBuildCfg, build_index
from enclip.store.hubness import TitleHubness, mean_top_k


def _unit(rows: np.ndarray) -> np.ndarray:
    return (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32)


def test_mean_top_k_averages_the_nearest_bank_rows_and_leaves_out_the_own_one():
    vectors = _unit(np.array([[1.0, 0.0], [0.0, 1.0]]))
    bank = _unit(np.array([[1.0, 0.0], [1.0, 1.0], [0.0, 1.0], [-1.0, 0.0]]))
    cos45 = np.sqrt(0.5)
    np.testing.assert_allclose(mean_top_k(vectors, bank, 2, np.array([-1, -1])), [(1 + cos45) / 2] * 2, rtol=1e-6)
    # leaving out row 0 for item 0 and row 2 for item 1: the next nearest rows count instead
    np.testing.assert_allclose(mean_top_k(vectors, bank, 2, np.array([0, 2])), [cos45 / 2, cos45 / 2], atol=1e-6)


def test_penalties_are_per_member_and_an_items_own_title_is_not_in_its_bank():
    rng = np.random.default_rng(0)
    members, dim = 2, 8
    bank = np.concatenate([_unit(rng.normal(size=(6, dim))) for _ in range(members)], axis=1)
    titles = [f"title {i}" for i in range(6)]
    vectors = bank[:3].copy()  # items whose photo vectors equal their own title's vectors
    hubness = TitleHubness.build(vectors, titles[:3], bank, titles, members, k=2)
    assert hubness.penalty.shape == (3, members)
    for m in range(members):
        block = slice(m * dim, (m + 1) * dim)
        sims = vectors[:, block] @ bank[:, block].astype(np.float32).T
        np.fill_diagonal(sims[:, :3], -np.inf)  # the own title, a perfect match, is left out
        expected = np.sort(sims, axis=1)[:, -2:].mean(axis=1)
        np.testing.assert_allclose(hubness.penalty[:, m], expected, atol=2e-3)  # the bank is stored in float16
    unseen = hubness.penalties(vectors[:1], ["a title not in the bank"])
    assert unseen[0, 0] > hubness.penalty[0, 0], "without the exclusion, the perfect own match raises the mean"


def test_a_hubness_part_round_trips_and_grows_with_added_items(tmp_path):
    rng = np.random.default_rng(1)
    bank = _unit(rng.normal(size=(5, 4)))
    hubness = TitleHubness.build(bank[:2], ["t0", "t1"], bank, [f"t{i}" for i in range(5)], 1, k=3)
    hubness.save(tmp_path / "hubness")
    loaded = TitleHubness.load(tmp_path / "hubness")
    np.testing.assert_array_equal(loaded.penalty, hubness.penalty)
    assert loaded.k == 3 and loaded.titles == hubness.titles
    loaded.add(bank[2:4], ["t2", "new"])
    assert loaded.penalty.shape == (4, 1)
    np.testing.assert_allclose(loaded.penalty[2:], hubness.penalties(bank[2:4], ["t2", "new"]))


def test_bad_hubness_settings_are_refused_with_their_meaning():
    with pytest.raises(EnclipError, match="hubness_k"):
        IndexBuildCfg(hubness_k=-1)
    with pytest.raises(EnclipError, match="at least 1"):
        TitleHubness(np.zeros((2, 4), np.float16), ["a", "b"], np.zeros((0, 1)), 0, 1)
    with pytest.raises(EnclipError, match="one vector per title"):
        TitleHubness(np.zeros((2, 4), np.float16), ["a"], np.zeros((0, 1)), 5, 1)
    hubness = TitleHubness(np.ones((2, 4), np.float16), ["a", "b"], np.zeros((0, 1)), 5, 1)
    with pytest.raises(EnclipError, match="one title per vector"):
        hubness.penalties(np.ones((3, 4)), ["x"])


def test_text_search_ranks_by_cosine_less_the_weighted_penalty(tiny_index_dir, catalogue):
    searcher = load_searcher(tiny_index_dir, channels=("image",), hubness=0.75, feedback=0.0, bridge=0.0)
    penalty = searcher.live.hubness.penalty  # (n, K)
    assert penalty.shape == (len(catalogue), searcher.members)
    stored = searcher.index.reconstruct(np.arange(len(catalogue))).reshape(len(catalogue), searcher.members, -1)
    for text in ["Men Red Shirts", "Women Black Jeans"]:
        query = searcher.encode_query(text=text)
        member = np.einsum("nkd,kd->nk", stored, query) - 0.75 * penalty
        reference = np.argsort(-member.mean(axis=1), kind="stable")[:10]
        hits = searcher.search(text=text, k=10, fusion="mean").hits
        assert [catalogue.index_of(h.id) for h in hits] == reference.tolist()
        np.testing.assert_allclose([h.score for h in hits], member.mean(axis=1)[reference], atol=1e-5)


def test_the_penalty_scales_with_the_text_share_and_leaves_photo_queries_alone(tiny_index_dir, catalogue):
    plain = load_searcher(tiny_index_dir, channels=("image",), hubness=0.0)
    penalised = load_searcher(tiny_index_dir, channels=("image",), hubness=1.0)
    photo = catalogue.image_bytes(3)
    assert ([(h.id, h.score) for h in penalised.search(image=photo, k=10).hits]
            == [(h.id, h.score) for h in plain.search(image=photo, k=10).hits])
    both = penalised.search(image=photo, text="Red Shirts", weight=0.25, k=80).hits
    alone = plain.search(image=photo, text="Red Shirts", weight=0.25, k=80).hits
    by_id = {h.id: h.score for h in alone}
    penalty = penalised.live.hubness.penalty.mean(axis=1)
    for hit in both:
        assert hit.score == pytest.approx(by_id[hit.id] - 0.25 * penalty[catalogue.index_of(hit.id)], abs=1e-5)
    vectors = penalised.encode_query(text="Red Shirts")
    assert ([h.id for h in penalised.search_vectors(vectors, k=10, text_share=1.0)]
            == [h.id for h in penalised.search(text="Red Shirts", k=10).hits])
    with pytest.raises(EnclipError, match="0 or more"):
        load_searcher(tiny_index_dir, hubness=-1.0)


def test_live_items_get_a_penalty_and_an_index_without_the_part_searches_plainly(tmp_path, tiny_index_dir,
                                                                                   tiny_ensemble_dir, catalogue):
    searcher = load_searcher(tiny_index_dir)
    n = len(searcher.live.hubness.penalty)
    searcher.add_items([{"id": "new-9", "title": "Brand New Shirt", "attributes": {}}], [catalogue.image_bytes(4)])
    assert len(searcher.live.hubness.penalty) == n + 1
    position = searcher.catalogue.index_of("new-9")
    expected = searcher.live.hubness.penalties(searcher.index.reconstruct(np.array([position])), ["Brand New Shirt"])
    np.testing.assert_allclose(searcher.live.hubness.penalty[position], expected[0])
    bare = build_index(tiny_ensemble_dir, catalogue, tmp_path / "bare", IndexBuildCfg(hubness_k=0))
    assert not (bare / "hubness").exists()
    plain = load_searcher(bare, channels=("image",))
    assert plain.live.hubness is None and plain.search(text="Red Shirts", k=5).hits
