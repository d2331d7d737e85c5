"""The title bridge: what it adds to a text query, which items it borrows from, where it applies, what it refuses."""

from __future__ import annotations

import numpy as np
import pytest

from enclip import load_searcher
from enclip.cli import main
from enclip.data.split import split_indices
from enclip.errors import EnclipError
from enclip.indexing import IndexBuildCfg, build_index
from enclip.store import IndexDir
from enclip.store.bridge import TitleBridge


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def test_a_query_moves_towards_the_softmax_mean_of_its_nearest_supports_photos():
    rng = np.random.default_rng(0)
    members, dim, titles, supports = 2, 4, 5, 8
    title_vectors = _unit(rng.normal(size=(titles, members, dim))).reshape(titles, -1).astype(np.float16)
    title_of = np.array([0, 1, 1, 2, 3, 4, 4, 4])  # items may share a title
    photos = _unit(rng.normal(size=(supports, members, dim))).reshape(supports, -1).astype(np.float16)
    bridge = TitleBridge(title_vectors, title_of, photos, members)
    queries = _unit(rng.normal(size=(members, 3, dim))).astype(np.float32)
    weight, temperature = 0.7, 0.05
    for m in range(members):
        t = title_vectors.reshape(titles, members, dim)[:, m].astype(np.float32)
        p = photos.reshape(supports, members, dim)[:, m].astype(np.float32)
        for b in range(3):
            cosines = t[title_of] @ queries[m, b]  # each support's title cosine
            # a depth that takes whole title groups (items of one title tie, and which of them a cut takes is open)
            depth = int(np.isin(title_of, title_of[np.argsort(-cosines, kind="stable")][:2]).sum())
            nearest = np.argsort(-cosines, kind="stable")[:depth]
            shares = np.exp(cosines[nearest] / temperature)
            expected = queries[m, b] + weight * (shares / shares.sum()) @ p[nearest]
            moved = bridge.expand(queries[:, b:b + 1], weight, depth, temperature)[m, 0]
            np.testing.assert_allclose(moved, _unit(expected), atol=1e-5)
    depth = 3
    np.testing.assert_allclose(queries, bridge.expand(queries, 0.0, depth, temperature), atol=1e-6)


def test_an_index_bridges_its_training_items_only_with_their_stored_photos_and_bank_titles(tiny_index_dir,
                                                                                           catalogue):
    index = IndexDir.open(tiny_index_dir)
    bridge, hubness = index.load_bridge(), index.load_hubness()
    train = split_indices(catalogue.ids)["train"]
    assert 0 < len(train) < len(catalogue) and len(bridge) == len(train)  # no val or test item lends its photo
    stored = load_searcher(tiny_index_dir).index.reconstruct(train)
    np.testing.assert_allclose(bridge.photos, stored, atol=2e-3)  # float16, as stored
    bank_row = {title: row for row, title in enumerate(hubness.titles)}
    np.testing.assert_array_equal(bridge.titles[bridge.title_of],
                                  hubness.bank[[bank_row[catalogue.titles[p]] for p in train]])


def test_text_queries_cross_the_bridge_on_the_photo_channel_only(tiny_index_dir, catalogue):
    plain = load_searcher(tiny_index_dir, bridge=0.0)
    bridged = load_searcher(tiny_index_dir, bridge=1.0, bridge_depth=3, bridge_temperature=0.05)
    text = "Men Red Shirts"
    query = plain.encode_query(text=text)
    moved = bridged.live.bridge.expand(query[:, None], 1.0, 3, 0.05)[:, 0]
    assert not np.allclose(moved, query)
    got = bridged.search(text=text, k=10, channels=["image"]).hits
    want = plain.search_vectors(moved, k=10, text_share=1.0)
    assert [(h.id, round(h.score, 5)) for h in got] == [(h.id, round(h.score, 5)) for h in want]
    batch = bridged.search_batch(np.stack([query, query], axis=1), k=10, shares=[1.0, 0.0])
    assert [h.id for h in batch[0]] == [h.id for h in got]  # the text query of a batch crosses it
    assert [h.id for h in batch[1]] == [h.id for h in plain.search_vectors(query, k=10)]  # a photo's share: not
    photo = catalogue.image_bytes(3)
    for asked in [{"image": photo}, {"image": photo, "text": "Red Shirts", "weight": 0.75}]:
        assert ([(h.id, h.score) for h in bridged.search(**asked, k=10).hits]
                == [(h.id, h.score) for h in plain.search(**asked, k=10).hits])
    # product search: the photo channel's candidates move, the item-text channel's scores do not
    found, unmoved = bridged.channel_candidates(text, fusion="mean"), plain.channel_candidates(text, fusion="mean")
    union = np.union1d(found.union, unmoved.union)
    item_texts = plain.text_index.reconstruct(union).reshape(len(union), plain.members, -1)
    text_scores = dict(zip(union.tolist(), np.einsum("cmd,md->c", item_texts, query) / plain.members))
    np.testing.assert_allclose(found.scores["text"], [text_scores[int(u)] for u in found.union], atol=1e-5)
    assert bridged.stats()["bridge"] == {"supports": len(bridged.live.bridge), "weight": 1.0, "depth": 3,
                                         "temperature": 0.05}


def test_an_index_built_without_the_bridge_searches_without_it(tmp_path, catalogue, tiny_ensemble_dir,
                                                                tiny_index_dir):
    out = build_index(tiny_ensemble_dir, catalogue, tmp_path / "index", IndexBuildCfg(bridge=False, hubness_k=0))
    searcher = load_searcher(out, bridge=1.0)
    assert not (out / "bridge").exists() and searcher.stats()["bridge"] is None
    plain = load_searcher(tiny_index_dir, bridge=0.0, hubness=0.0)
    text = "Women Black Jeans"
    assert ([h.id for h in searcher.search(text=text, k=10, channels=["image"]).hits]
            == [h.id for h in plain.search(text=text, k=10, channels=["image"]).hits])


def test_a_saved_bridge_loads_the_same(tiny_index_dir, tmp_path):
    bridge = IndexDir.open(tiny_index_dir).load_bridge()
    bridge.save(tmp_path / "bridge")
    again = TitleBridge.load(tmp_path / "bridge")
    np.testing.assert_array_equal(again.titles, bridge.titles)
    np.testing.assert_array_equal(again.photos, bridge.photos)
    np.testing.assert_array_equal(again.title_of, bridge.title_of)
    assert again.members == bridge.members


def test_bad_bridges_and_settings_are_refused_with_their_meaning(tiny_index_dir, capsys):
    with pytest.raises(EnclipError, match="one title row per support photo"):
        TitleBridge(np.ones((2, 4)), np.array([0, 1, 1]), np.ones((2, 4)), 1)
    with pytest.raises(EnclipError, match="title rows within its 2 titles"):
        TitleBridge(np.ones((2, 4)), np.array([0, 2]), np.ones((2, 4)), 1)
    with pytest.raises(EnclipError, match="must both hold 3 members"):
        TitleBridge(np.ones((2, 4)), np.array([0, 1]), np.ones((2, 4)), 3)
    with pytest.raises(EnclipError, match="not in the title bank"):
        TitleBridge.build(np.ones((1, 4)), ["a shirt"], ["a shirt", "a shoe"], np.array([0, 1]), np.ones((2, 4)), 1)
    for settings, meaning in [({"bridge": -0.1}, "bridge is the weight"), ({"bridge": float("nan")}, "bridge is"),
                              ({"bridge_depth": 0}, "bridge_depth is a number"),
                              ({"bridge_depth": 2.5}, "bridge_depth is a number"),
                              ({"bridge_temperature": 0.0}, "bridge_temperature is a softmax temperature")]:
        with pytest.raises(EnclipError, match=meaning):
            load_searcher(tiny_index_dir, **settings)
    assert main(["search", "--index", str(tiny_index_dir), "--text", "x", "--bridge", "-1"]) == 2
    assert "bridge is the weight" in capsys.readouterr().err
