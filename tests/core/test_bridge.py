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
from enclip.store.bridge import TitleBridge, label_prototypes


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
    items = len(bridge) - bridge.labels  # the label supports come last
    assert 0 < len(train) < len(catalogue) and items == len(train)  # no val or test item lends its photo
    stored = load_searcher(tiny_index_dir).index.reconstruct(train)
    np.testing.assert_allclose(bridge.photos[:items], stored, atol=2e-3)  # float16, as stored
    bank_row = {title: row for row, title in enumerate(hubness.titles)}
    np.testing.assert_array_equal(bridge.titles[bridge.title_of[:items]],
                                  hubness.bank[[bank_row[catalogue.titles[p]] for p in train]])


def test_text_queries_cross_the_bridge_on_the_photo_channel_only(tiny_index_dir, catalogue):
    plain = load_searcher(tiny_index_dir, bridge=0.0)
    bridged = load_searcher(tiny_index_dir, bridge=1.0, bridge_depth=3, bridge_temperature=0.05)
    text = "Men Red Shirts"
    query = plain.encode_query(text=text)
    moved = bridged.live.bridge.expand(query[:, None], 1.0, 3, 0.05, bridged.cfg.bridge_labels,
                                       bridged.cfg.bridge_label_exactness)[:, 0]
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
    assert bridged.stats()["bridge"] == {"supports": len(bridged.live.bridge), "labels": bridged.live.bridge.labels,
                                         "weight": 1.0, "depth": 3, "temperature": 0.05,
                                         "label_weight": bridged.cfg.bridge_labels,
                                         "label_exactness": bridged.cfg.bridge_label_exactness}


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
    assert again.members == bridge.members and again.values == bridge.values and again.labels > 0


def test_bad_bridges_and_settings_are_refused_with_their_meaning(tiny_index_dir, capsys):
    with pytest.raises(EnclipError, match="one title row per support photo"):
        TitleBridge(np.ones((2, 4)), np.array([0, 1, 1]), np.ones((2, 4)), 1)
    with pytest.raises(EnclipError, match="title rows within its 2 titles"):
        TitleBridge(np.ones((2, 4)), np.array([0, 2]), np.ones((2, 4)), 1)
    with pytest.raises(EnclipError, match="at least one item support besides its 2 label supports"):
        TitleBridge(np.ones((2, 4)), np.array([0, 1]), np.ones((2, 4)), 1, values=["Red", "Blue"])
    with pytest.raises(EnclipError, match="must both hold 3 members"):
        TitleBridge(np.ones((2, 4)), np.array([0, 1]), np.ones((2, 4)), 3)
    with pytest.raises(EnclipError, match="not in the title bank"):
        TitleBridge.build(np.ones((1, 4)), ["a shirt"], ["a shirt", "a shoe"], np.array([0, 1]), np.ones((2, 4)), 1)
    for settings, meaning in [({"bridge": -0.1}, "bridge is the weight"), ({"bridge": float("nan")}, "bridge is"),
                              ({"bridge_depth": 0}, "bridge_depth is a number"),
                              ({"bridge_depth": 2.5}, "bridge_depth is a number"),
                              ({"bridge_temperature": 0.0}, "bridge_temperature is a softmax temperature"),
                              ({"bridge_labels": -1.0}, "bridge_labels is the weight"),
                              ({"bridge_label_exactness": -1.0}, "bridge_label_exactness is the power")]:
        with pytest.raises(EnclipError, match=meaning):
            load_searcher(tiny_index_dir, **settings)
    assert main(["search", "--index", str(tiny_index_dir), "--text", "x", "--bridge", "-1"]) == 2
    assert "bridge is the weight" in capsys.readouterr().err


def test_label_supports_are_each_values_probe_direction_and_text_vector(tiny_index_dir, catalogue):
    searcher = load_searcher(tiny_index_dir)
    bridge, members = searcher.live.bridge, searcher.members
    train = split_indices(catalogue.ids)["train"]
    carried = {v for name, column in catalogue.attributes.items() for p in train
               if (v := column[p].strip()) and not v.isdigit()}
    assert bridge.values == sorted(carried) and bridge.labels == len(carried) > 0
    stored = searcher.index.reconstruct(np.arange(len(catalogue)))
    values, directions = label_prototypes(stored, catalogue.attributes, train, members)  # the probe, by default
    assert values == bridge.values
    np.testing.assert_allclose(bridge.photos[len(train):], directions, atol=2e-3)  # float16, as stored
    value = catalogue.attributes["articleType"][train[0]]
    row = len(train) + bridge.values.index(value)
    np.testing.assert_allclose(bridge.titles[bridge.title_of[row]], searcher.encode_query(text=value).reshape(-1),
                               atol=2e-3)  # the value's text vector, as its query is encoded
    items = bridge.without_labels()
    assert items.labels == 0 and len(items) == len(train)
    np.testing.assert_array_equal(items.photos, bridge.photos[:len(train)])
    np.testing.assert_array_equal(items.titles[items.title_of], bridge.titles[bridge.title_of[:len(train)]])


def test_label_means_leave_out_empty_numeric_and_held_out_values_and_refuse_unknown_columns_and_kinds():
    vectors = _unit(np.random.default_rng(1).normal(size=(5, 2, 3))).reshape(5, 6)
    attributes = {"colour": ["Red", "Red", "Blue", "", "Blue"], "year": ["2012", "2013", "2012", "2011", "2012"],
                  "type": ["Shirts", "Blue", "Shirts", "Shirts", "Jeans"]}
    values, means = label_prototypes(vectors, attributes, np.array([0, 1, 2, 3]), 2, kind="mean")
    assert values == ["Blue", "Red", "Shirts"]  # "Jeans" is only on item 4, which is not a support
    per_column = [_unit(vectors[p].reshape(2, 3)) for p in (2, 1)]  # "Blue": item 2's colour, item 1's type
    np.testing.assert_allclose(means[0], _unit(np.mean(per_column, axis=0)).reshape(-1), atol=1e-6)
    red = _unit(vectors[[0, 1]].reshape(2, 2, 3).mean(axis=0))
    np.testing.assert_allclose(means[1], red.reshape(-1), atol=1e-6)
    assert np.allclose(np.linalg.norm(means.reshape(3, 2, 3), axis=2), 1.0)
    assert label_prototypes(vectors, attributes, np.array([0, 1]), 2, columns=("type",))[0] == ["Blue", "Shirts"]
    with pytest.raises(EnclipError, match="no attribute column 'brand'"):
        label_prototypes(vectors, attributes, np.array([0]), 2, columns=("brand",))
    with pytest.raises(EnclipError, match="unknown label support kind 'median'"):
        label_prototypes(vectors, attributes, np.array([0]), 2, kind="median")


def test_the_probe_points_to_what_sets_a_value_apart_where_the_mean_points_to_what_all_share():
    rng = np.random.default_rng(3)
    dim, per_class = 6, 40
    shared = np.zeros(dim)
    shared[5] = 3.0  # every photo shares this direction
    colours = ["Red", "Blue", "Green"]
    photos, labels = [], []
    for axis, colour in enumerate(colours):
        centre = shared.copy()
        centre[axis] = 1.0
        photos.append(_unit(centre + 0.3 * rng.normal(size=(per_class, dim))))
        labels += [colour] * per_class
    vectors = np.concatenate(photos).astype(np.float32)
    gender = (["Men", "Women"] * (len(labels) // 2))
    attributes = {"colour": labels, "gender": gender}
    supports = np.arange(len(labels))
    values, probes = label_prototypes(vectors, attributes, supports, 1)
    _, means = label_prototypes(vectors, attributes, supports, 1, kind="mean")
    for axis, colour in enumerate(colours):
        probe, mean = probes[values.index(colour)], means[values.index(colour)]
        assert np.argmax(probe) == axis and np.argmax(mean) == 5  # the mean is mostly what every photo shares
        assert probe[axis] > mean[axis] + 0.3
    np.testing.assert_allclose(probes[values.index("Men")], -probes[values.index("Women")], atol=1e-6)  # two values


def test_a_query_naming_a_value_borrows_its_mean_photo_and_a_title_query_its_titles_alone():
    rng = np.random.default_rng(2)
    bank = _unit(rng.normal(size=(3, 8))).astype(np.float16)
    photos = _unit(rng.normal(size=(3, 8))).astype(np.float16)
    value_text, value_photo = _unit(rng.normal(size=(1, 8))), _unit(rng.normal(size=(1, 8)))
    plain = TitleBridge.build(bank, ["a", "b", "c"], ["a", "b", "c"], np.arange(3), photos, 1)
    bridge = TitleBridge.build(bank, ["a", "b", "c"], ["a", "b", "c"], np.arange(3), photos, 1,
                               labels=(["Shirts"], value_text, value_photo))
    assert bridge.labels == 1 and len(bridge) == 4 and bridge.values == ["Shirts"] and plain.labels == 0
    as_stored = np.asarray(value_text, np.float16).astype(np.float32)
    for query, named in [(as_stored, True), (bank[1:2].astype(np.float32), False)]:
        q = query[None]
        nearest_title = photos[int(np.argmax(bank.astype(np.float32) @ query[0]))].astype(np.float32)
        for label_weight, counts in [(None, 0.5), (2.0, 2.0)]:  # None: values count at the titles' weight
            moved = bridge.expand(q, 0.5, 2, 1e-3, label_weight)[0, 0]
            want = q[0, 0] + 0.5 * nearest_title + (counts * value_photo[0] if named else 0.0)
            np.testing.assert_allclose(moved, _unit(want), atol=2e-3)
        # the titles' move is the same with or without the values beside them
        np.testing.assert_allclose(bridge.expand(q, 0.5, 2, 1e-3, 0.0), plain.expand(q, 0.5, 2, 1e-3), atol=1e-6)
    with pytest.raises(EnclipError, match="one text vector and one photo vector per value"):
        TitleBridge.build(bank, ["a", "b", "c"], ["a", "b", "c"], np.arange(3), photos, 1,
                          labels=(["Shirts", "Jeans"], value_text, value_photo))



def test_with_exactness_a_value_pulls_only_a_query_that_is_the_value_itself():
    rng = np.random.default_rng(3)
    dim = 32
    bank = _unit(rng.normal(size=(3, dim))).astype(np.float16)
    photos = _unit(rng.normal(size=(3, dim))).astype(np.float16)
    value_text, value_photo = _unit(rng.normal(size=(1, dim))), _unit(rng.normal(size=(1, dim)))
    bridge = TitleBridge.build(bank, ["a", "b", "c"], ["a", "b", "c"], np.arange(3), photos, 1,
                               labels=(["Deodorant"], value_text, value_photo))
    value = np.asarray(value_text[0], np.float16).astype(np.float32)
    other = rng.normal(size=dim)
    other = _unit((other - (other @ value) * value)[None])[0]
    compound = 0.6 * value + 0.8 * other  # "yellow deodorant": nearer the value than any title, but not the value
    for query, pull in [(value, 1.0), (compound, 0.6 ** 16)]:
        assert (bank.astype(np.float32) @ query).max() < query @ value - 0.1  # so its share of the value is all
        q = query[None, None]
        nearest_title = photos[int(np.argmax(bank.astype(np.float32) @ query))].astype(np.float32)
        for exactness, counts in [(0.0, 2.0), (16.0, 2.0 * pull)]:  # 0: the share alone, as before
            moved = bridge.expand(q, 0.5, 2, 1e-3, 2.0, label_exactness=exactness)[0, 0]
            np.testing.assert_allclose(moved, _unit(query + 0.5 * nearest_title + counts * value_photo[0]),
                                       atol=2e-3)
