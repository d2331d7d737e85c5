"""The index directory under live changes, rebuilds and crashes: regression tests for issue #11's probe findings
(each named after the defect it holds shut) and for what ``weight``, ``k`` and ``clusters`` do."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest
from fastapi.testclient import TestClient

from enclip import load_searcher
from enclip.errors import EnclipError
from enclip.indexing import IndexBuildCfg, build_index
from enclip.search import MAX_K
from enclip.serve.app import ServeCfg, create_app
from enclip.store import IndexDir, changelog_path
from enclip.vectors import IndexCfg

TOKEN = "t" * 32
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
def index_copy(tmp_path, tiny_index_dir):
    """A private copy of the tiny index, free to change."""
    target = tmp_path / "index"
    shutil.copytree(tiny_index_dir, target)
    return target


def _app(index):
    searcher = load_searcher(index)
    return TestClient(create_app(searcher, ServeCfg(admin_token=TOKEN, changelog_path=searcher.changelog_path)))


def _post(client, item_id, image, title="Brand New Shirt"):
    item = {"id": item_id, "title": title, "attributes": {"gender": "Men"}}
    return client.post("/admin/items", data={"item": json.dumps(item)}, headers=AUTH,
                       files={"image": ("x.jpg", image, "image/jpeg")})


def test_rebuilding_a_served_index_keeps_every_acknowledged_admin_change(index_copy, catalogue, tiny_ensemble_dir):
    with _app(index_copy) as client:
        assert _post(client, "added-1", catalogue.image_bytes(3)).status_code == 201
        assert client.delete(f"/admin/items/{catalogue.ids[0]}", headers=AUTH).status_code == 200
    log = changelog_path(index_copy)
    assert log.exists() and not (index_copy / "changes.jsonl").exists()
    build_index(tiny_ensemble_dir, catalogue, index_copy)  # the rebuild replaces the directory
    assert len(log.read_text().splitlines()) == 2
    with _app(index_copy) as restarted:
        assert restarted.get("/items/added-1").status_code == 200
        assert restarted.get(f"/items/{catalogue.ids[0]}").status_code == 404


def test_a_change_log_inside_an_older_index_is_carried_out_before_a_rebuild(index_copy, catalogue,
                                                                            tiny_ensemble_dir):
    with _app(index_copy) as client:
        assert _post(client, "added-1", catalogue.image_bytes(3)).status_code == 201
    os.rename(changelog_path(index_copy), index_copy / "changes.jsonl")  # where enclip 0.1 kept it
    build_index(tiny_ensemble_dir, catalogue, index_copy)
    assert changelog_path(index_copy).exists()
    with _app(index_copy) as restarted:
        assert restarted.get("/items/added-1").status_code == 200


@pytest.mark.slow  # a kill, resume or property run: the slow set
def test_resume_refuses_shards_written_by_another_model(tmp_path, catalogue, tiny_ensemble_dir, monkeypatch):
    from enclip.train.run import train_system
    from tests.conftest import tiny_run_cfg

    other_model = train_system(catalogue, tmp_path / "other", tiny_run_cfg(members=3, strategy="seeds", seed=7))
    cfg = IndexBuildCfg(index=IndexCfg(), shard_size=16, batch_size=8)
    real_image, calls = type(catalogue).image, {"n": 0}

    def failing_image(self, i):
        calls["n"] += 1
        if calls["n"] > 40:
            raise KeyboardInterrupt
        return real_image(self, i)

    monkeypatch.setattr(type(catalogue), "image", failing_image)
    with pytest.raises(KeyboardInterrupt):
        build_index(other_model, catalogue, tmp_path / "index", cfg)
    monkeypatch.setattr(type(catalogue), "image", real_image)
    with pytest.raises(EnclipError, match="another job.*job.model"):
        build_index(tiny_ensemble_dir, catalogue, tmp_path / "index", cfg, resume=True)
    fresh = build_index(tiny_ensemble_dir, catalogue, tmp_path / "index", cfg, resume=False)
    reference = np.load(load_searcher(fresh).path / "vectors" / "vectors.npy")
    assert reference.shape[0] == len(catalogue)


def test_deleted_items_are_not_served_under_any_id(index_copy, catalogue):
    searcher = load_searcher(index_copy)
    gone = catalogue.ids[4]
    searcher.remove_items([gone])
    for item_id in (gone, "\0removed:4", "%00removed:4"):
        with pytest.raises(EnclipError):
            searcher.item(item_id)
        with pytest.raises(EnclipError):
            searcher.image_bytes(item_id)
    photo = catalogue.image_bytes(4)
    assert all(hit.id != gone for hit in searcher.search(image=photo, k=len(catalogue)).hits)
    with _app(index_copy) as client:  # after a restart too: the removal is replayed from the log
        assert client.delete(f"/admin/items/{gone}", headers=AUTH).status_code == 200
    with _app(index_copy) as restarted:
        for path in (f"/items/{gone}", f"/items/{gone}/image", "/items/%00removed:4", "/items/%00removed:4/image"):
            assert restarted.get(path).status_code == 404
        assert restarted.post("/search", json={"image_id": gone}).status_code == 404
    searcher.add_items([{"id": gone, "title": "Back Again", "attributes": {}}], [photo])
    assert searcher.item(gone)["title"] == "Back Again"
    assert searcher.search(image=photo, k=1).hits[0].id == gone


def test_search_repairs_an_index_left_between_the_two_renames_of_a_swap(index_copy):
    backup = index_copy.parent / f".{index_copy.name}.bak-999999999-abcd"  # its writer (a dead pid) crashed
    os.rename(index_copy, backup)
    searcher = load_searcher(index_copy)
    assert searcher.search(text="shirt", k=3).hits and index_copy.exists() and not backup.exists()


def test_k_is_capped_at_the_items_and_refused_past_a_sane_limit(index_copy, catalogue):
    searcher = load_searcher(index_copy)
    assert len(searcher.search(text="shirt", k=MAX_K).hits) == len(catalogue)
    for k in (MAX_K + 1, 1_000_000_000, 0, -1, 2.5):
        with pytest.raises(EnclipError, match=f"k must be a whole number from 1 to {MAX_K}"):
            searcher.search(text="shirt", k=k)


def test_a_filter_value_no_item_has_is_an_error_with_close_matches(index_copy):
    searcher = load_searcher(index_copy)
    with pytest.raises(EnclipError, match="no item has gender='Mne'.*'Men'"):
        searcher.search(text="shirt", filters={"gender": "Mne"})
    for empty in ("", [], [""]):
        with pytest.raises(EnclipError, match="non-empty"):
            searcher.search(text="shirt", filters={"gender": empty})


@pytest.mark.parametrize("clusters", [0, -1, -2, True, 1.5])
def test_clusters_must_be_a_positive_whole_number(index_copy, clusters):
    with pytest.raises(EnclipError, match="clusters must be a whole number"):
        load_searcher(index_copy).search(text="shirt", clusters=clusters)


def test_more_clusters_than_exist_searches_them_all(index_copy, catalogue):
    searcher = load_searcher(index_copy)
    everything = [h.id for h in searcher.search(text="shirt", k=len(catalogue)).hits]
    assert [h.id for h in searcher.search(text="shirt", k=len(catalogue), clusters=50).hits] == everything


def test_weight_is_the_text_share_of_a_combined_query_in_the_photo_channel(index_copy, catalogue):
    searcher = load_searcher(index_copy)
    photo, text = catalogue.image_bytes(9), "Women Black Jeans"

    def ranking(**query):
        return [h.id for h in searcher.search(k=20, channels="image", **query).hits]

    assert ranking(text=text, image=photo, weight=1.0) == ranking(text=text)
    assert ranking(text=text, image=photo, weight=0.0) == ranking(image=photo)
    middle = searcher.encode_query(text=text, image=photo, weight=0.3)
    expected = 0.3 * searcher.encode_query(text=text) + 0.7 * searcher.encode_query(image=photo)
    np.testing.assert_allclose(middle, expected, atol=1e-6)
    with pytest.raises(EnclipError, match="weight"):
        searcher.search(text=text, image=photo, weight=1.5)


def test_index_dir_opens_only_a_built_index(tmp_path):
    with pytest.raises(EnclipError, match="not an enclip index"):
        IndexDir.open(tmp_path)
