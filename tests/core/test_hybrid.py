"""Hybrid search over photo, item-text and keyword channels on a tiny trained index: fusion against a brute-force
reference, filters in every channel, live changes in every channel across a kill, and queries no keyword matches."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from enclip import load_searcher
from enclip.errors import EnclipError
from enclip.search.channels import HybridCfg
from enclip.serve.app import ServeCfg, create_app
from enclip.store.index_dir import KEYWORDS
from enclip.store.keywords import WORK_PREFIX, KeywordIndex

REPO = Path(__file__).resolve().parents[2]
TOKEN = "h" * 32
QUERIES = ["Men Red Shirts", "Women Black Jeans casual", "Green Watch", "shoes"]


@pytest.fixture(scope="module")
def searcher(tiny_index_dir):
    return load_searcher(tiny_index_dir)


def _reference(searcher, text: str, k: int, hybrid: HybridCfg) -> tuple[list[str], np.ndarray]:
    """Every item scored on every channel by plain numpy over the whole index (depth >= n: the union is
    everything), each channel ranked, fused by the same formula: the ranking hybrid search must reproduce. The photo
    channel's query crosses the title bridge, and its member cosines lose each photo's hubness penalty at its weight
    (a text query's share is 1) and gain pseudo-relevance feedback from each member's best photos; the item-text
    channel keeps the query as the text tower gave it."""
    n, members = len(searcher.catalogue), searcher.members
    query = searcher.encode_query(text=text)  # (K, d)
    cfg = searcher.cfg
    bridged = searcher.live.bridge.expand(query[:, None], cfg.bridge, cfg.bridge_depth, cfg.bridge_temperature,
                                          cfg.bridge_labels, cfg.bridge_label_exactness)[:, 0]
    photos = searcher.index.reconstruct(np.arange(n)).reshape(n, members, -1)
    texts = searcher.text_index.reconstruct(np.arange(n)).reshape(n, members, -1)
    member = np.einsum("nkd,kd->nk", photos, bridged) - searcher.cfg.hubness * searcher.live.hubness.penalty
    for m, best in enumerate(np.argsort(-member, axis=0, kind="stable")[:searcher.cfg.feedback_depth].T):
        member[:, m] += searcher.cfg.feedback * photos[:, m] @ photos[best, m].mean(axis=0)
    scores = {"image": member.sum(axis=1) / members,
              "text": np.einsum("nkd,kd->n", texts, query) / members,
              "keyword": searcher.keywords.score(text, np.arange(n))}
    fused = np.zeros(n)
    for channel, channel_scores in scores.items():
        found = channel_scores > 0 if channel == "keyword" else np.ones(n, bool)
        if hybrid.fusion == "rrf":
            order = np.argsort(-np.where(found, channel_scores, -np.inf), kind="stable")
            rank = np.empty(n)
            rank[order] = np.arange(1, n + 1)
            fused += np.where(found, hybrid.weights[channel] / (hybrid.rrf_k + rank), 0.0)
        elif found.any():
            low = 0.0 if channel == "keyword" else channel_scores[found].min()  # a keyword's floor: no match
            high = channel_scores[found].max()
            normalised = (channel_scores - low) / (high - low) if high > low else np.ones(n)
            fused += np.where(found, hybrid.weights[channel] * normalised, 0.0)
    top = np.argsort(-fused, kind="stable")[:k]
    return [searcher.catalogue.ids[i] for i in top], fused[top]


@pytest.mark.parametrize("fusion", ["rrf", "sum"])
def test_fused_ranking_equals_the_brute_force_reference(tiny_index_dir, fusion):
    weights = {"image": 1.0, "text": 0.7, "keyword": 0.4}
    hybrid = HybridCfg(weights=weights, fusion=fusion, depth=1000)
    searcher = load_searcher(tiny_index_dir, hybrid=hybrid)
    for text in QUERIES:
        result = searcher.search(text=text, k=10)
        ids, fused = _reference(searcher, text, 10, hybrid)
        assert result.channels == ["image", "text", "keyword"]
        np.testing.assert_allclose([h.score for h in result.hits], fused, rtol=1e-5, atol=1e-7)
        assert [h.id for h in result.hits] == ids


def test_every_hit_explains_which_channels_found_it(searcher):
    result = searcher.search(text="Men Red Shirts", k=10)
    for hit in result.hits:
        assert set(hit.channels) == {"image", "text", "keyword"} and any(hit.channels.values())
        for channel, label in (("image", "photo"), ("text", "title"), ("keyword", "keyword")):
            assert (f"{label} #{hit.channels[channel]}" in hit.explanation) == bool(hit.channels[channel])
    keyword_hit = next(h for h in result.hits if h.channels["keyword"])
    assert "red" in keyword_hit.title.lower() or "shirt" in keyword_hit.title.lower()


@pytest.mark.parametrize("channels", ["image", "text", "keyword", "image,text,keyword"])
def test_filters_hold_in_every_channel(searcher, channels):
    filters = {"gender": "Women", "articleType": ["Shirts", "Jeans"]}
    hits = searcher.search(text="Women Jeans Shirts", k=30, filters=filters, channels=channels).hits
    assert hits
    assert all(h.attributes["gender"] == "Women" and h.attributes["articleType"] in ("Shirts", "Jeans") for h in hits)


def test_a_query_no_keyword_matches_still_gets_photo_and_item_text_results(searcher):
    result = searcher.search(text="qqzzxv", k=5)
    assert len(result.hits) == 5
    assert all(h.channels["keyword"] == 0 and (h.channels["image"] or h.channels["text"]) for h in result.hits)


def test_photo_queries_use_the_photo_channel_and_channels_are_validated(searcher, catalogue):
    assert searcher.search(image=catalogue.image_bytes(2), k=3).channels == ["image"]
    both = searcher.search(image=catalogue.image_bytes(2), text="shirt", k=3)
    assert both.channels == ["image", "text", "keyword"]
    with pytest.raises(EnclipError, match="unknown channels"):
        searcher.search(text="shirt", channels="photo")
    with pytest.raises(EnclipError, match="photo-only query uses the image"):
        searcher.search(image=catalogue.image_bytes(2), channels="keyword")
    with pytest.raises(EnclipError, match="channel weights"):
        searcher.search(text="shirt", fusion_weights={"keyword": -1})


def test_an_index_built_without_channels_searches_photos_and_says_what_it_lacks(tmp_path, catalogue,
                                                                                tiny_ensemble_dir):
    from enclip.indexing import IndexBuildCfg, build_index

    out = build_index(tiny_ensemble_dir, catalogue, tmp_path / "photos-only", IndexBuildCfg(channels=("image",)))
    photos_only = load_searcher(out)
    assert photos_only.search(text="shirt", k=3).channels == ["image"]
    with pytest.raises(EnclipError, match="no keyword channel"):
        photos_only.search(text="shirt", channels="keyword")


SERVE_AND_DIE = """
import json, os, signal, sys
from fastapi.testclient import TestClient
from enclip import load_searcher
from enclip.serve.app import ServeCfg, create_app

index, token, photo = sys.argv[1], sys.argv[2], open(sys.argv[3], "rb").read()
searcher = load_searcher(index)
auth = {"Authorization": "Bearer " + token}
with TestClient(create_app(searcher, ServeCfg(admin_token=token, changelog_path=searcher.changelog_path))) as client:
    for item in ({"id": "zyx-1", "title": "Zyxcorp Men Red Shirt", "attributes": {"gender": "Men"}},
                 {"id": "zyx-2", "title": "Zyxcorp Women Blue Jeans", "attributes": {"gender": "Women"}},
                 {"id": "zyx-2", "title": "Quobble Women Blue Jeans", "attributes": {"gender": "Women"}}):
        assert client.post("/admin/items", data={"item": json.dumps(item)}, headers=auth,
                           files={"image": ("p.png", photo, "image/png")}).status_code == 201
    assert client.delete("/admin/items/" + sys.argv[4], headers=auth).status_code == 200
    found = client.post("/search", json={"text": "zyxcorp", "channels": ["keyword"]}).json()["hits"]
    assert [h["id"] for h in found] == ["zyx-1"], found
os.kill(os.getpid(), signal.SIGKILL)
"""


@pytest.mark.slow  # a resume- or kill-equivalence run: the slow set
def test_admin_changes_reach_every_channel_and_survive_a_kill(tmp_path, tiny_index_dir, catalogue):
    index = tmp_path / "index"
    shutil.copytree(tiny_index_dir, index)
    photo = tmp_path / "photo.png"
    photo.write_bytes(catalogue.image_bytes(11))
    gone = catalogue.ids[5]
    done = subprocess.run([sys.executable, "-c", SERVE_AND_DIE, str(index), TOKEN, str(photo), gone], cwd=REPO,
                          timeout=300, capture_output=True, text=True)
    assert done.returncode == -9, done.stderr[-2000:]
    searcher = load_searcher(index)
    with TestClient(create_app(searcher, ServeCfg(changelog_path=searcher.changelog_path))) as restarted:
        def ids(text, channels):
            body = {"text": text, "channels": channels, "k": 100}
            return [h["id"] for h in restarted.post("/search", json=body).json()["hits"]]

        assert ids("zyxcorp", ["keyword"]) == ["zyx-1"]  # the update renamed zyx-2 away from Zyxcorp
        assert ids("quobble", ["keyword"]) == ["zyx-2"]
        for channel in ("image", "text"):
            assert {"zyx-1", "zyx-2"} <= set(ids("Zyxcorp Men Red Shirt", [channel]))
        title = catalogue.titles[5]
        for channel in (["image"], ["text"], ["keyword"], ["image", "text", "keyword"]):
            assert gone not in ids(title, channel)
    assert len(json.loads("[" + ",".join(searcher.changelog_path.read_text().splitlines()) + "]")) == 4


def test_item_text_vectors_are_each_items_text_through_the_text_tower(tmp_path, catalogue, tiny_ensemble_dir):
    from enclip.data.catalogue import Catalogue
    from enclip.embed.item_text import encode_item_texts, item_texts
    from enclip.embed.space import concat_members
    from enclip.models.ensemble import load_model

    rows = [0, 1, 2, 0, 1, 5]  # repeated texts are encoded once and shared
    repeated = Catalogue(ids=[f"r{i}" for i in range(len(rows))], titles=[catalogue.titles[r] for r in rows],
                         attributes={k: [v[r] for r in rows] for k, v in catalogue.attributes.items()},
                         images=[catalogue.images[r] for r in rows])
    ensemble, _ = load_model(tiny_ensemble_dir)
    got = encode_item_texts(ensemble, repeated, tmp_path / "work", batch_size=2, shard_size=3)
    np.testing.assert_allclose(got, concat_members(ensemble.encode_texts(item_texts(repeated))), atol=1e-5)


def test_a_photo_with_words_keeps_the_photos_candidates_and_the_words_reorder_them(tiny_index_dir, catalogue):
    searcher = load_searcher(tiny_index_dir, hybrid=HybridCfg(photo_depth=8))
    photo, text = catalogue.image_bytes(2), "Women Black Jeans"
    photo_channel = searcher.search(image=photo, text=text, k=8, channels="image")  # the mixed query, photos only
    by_words = searcher.search(image=photo, text=text, k=8, fusion_weights={"image": 0, "text": 0, "keyword": 1})
    assert {h.id for h in by_words.hits} == {h.id for h in photo_channel.hits}  # only the photo retrieves
    positions = [searcher.catalogue.index_of(h.id) for h in by_words.hits]
    keyword = searcher.keywords.score(text, np.asarray(positions))
    assert keyword.max() > 0 and list(keyword) == sorted(keyword, reverse=True)  # the words decide the order
    assert all(h.channels["image"] for h in by_words.hits)
    assert [bool(h.channels["keyword"]) for h in by_words.hits] == [bool(s > 0) for s in keyword]


def test_a_killed_processs_keyword_working_copy_is_removed_when_the_next_one_opens(tmp_path, tiny_index_dir,
                                                                                   monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # where the working copies go, for this test
    ended = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                           check=True)
    orphan = tmp_path / f"{WORK_PREFIX}{int(ended.stdout)}-abc"  # left by a process killed before its finalizer ran
    orphan.mkdir()
    (orphan / "meta.json").write_text("{}")
    running = tmp_path / f"{WORK_PREFIX}{os.getpid()}-def"  # another index's copy in a process still running
    running.mkdir()
    unnamed = tmp_path / f"{WORK_PREFIX}nopid"  # not named by this scheme: not ours to judge
    unnamed.mkdir()
    keywords = KeywordIndex(tiny_index_dir / KEYWORDS)
    assert not orphan.exists() and running.exists() and unnamed.exists()
    assert keywords._work.parent == tmp_path and keywords._work.name.startswith(f"{WORK_PREFIX}{os.getpid()}-")
    assert keywords.search("shirt", k=3)[0].size  # the copy searches
    keywords.close()
    assert not keywords._work.exists()


def test_summed_fusion_counts_the_weakest_keyword_match_above_no_match_and_min_max_scales_cosines():
    from enclip.search.channels import fuse_sum, matched

    keyword, cosine = np.array([3.0, 1.5, 0.0]), np.array([0.2, 0.6, 0.4])
    found = {"keyword": matched("keyword", keyword), "image": matched("image", cosine)}
    words = fuse_sum({"keyword": keyword}, found, {"keyword": 1.0})
    np.testing.assert_allclose(words, [1.0, 0.5, 0.0])  # scaled from its no-match floor, 0
    photos = fuse_sum({"image": cosine}, found, {"image": 2.0})
    np.testing.assert_allclose(photos, [0.0, 2.0, 1.0])  # min-max over the union: every item has a cosine
