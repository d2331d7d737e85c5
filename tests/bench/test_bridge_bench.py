"""bench/bridge.py on a tiny index: a grid of bridge settings paired against none, and a bridge for an index built
before it."""

from __future__ import annotations

import json

import numpy as np
import pytest

from bench import bridge
from enclip.data.split import split_indices
from enclip.indexing import IndexBuildCfg, build_index
from enclip.search import load_searcher

pytestmark = pytest.mark.slow  # ranks every query per setting


def test_settings_are_paired_against_no_bridge_and_photo_queries_are_left_alone(tiny_index_dir, catalogue, tmp_path,
                                                                               capsys):
    args = ["--index", str(tiny_index_dir), "--out", str(tmp_path), "--split", "test", "--depths", "3",
            "--temperatures", "0.05", "--weights", "0.2", "2.0", "--tasks", "title2img", "img2img_lq", "attr2img",
            "--label-weights", "0.5", "--label-exactness", "0", "16"]
    assert bridge.main([*args, "--latency", "5", "--repeats", "1"]) == 0
    out = capsys.readouterr().out
    assert "paired against no bridge" in out
    written = json.loads((tmp_path / "bridge-test.json").read_text())
    assert [tuple(row[name] for name in bridge.NAMES) for row in written["rows"]] == [
        (0.0, None, None, None, None), (0.2, 3, 0.05, None, None), (0.2, 3, 0.05, 0.5, 0.0), (0.2, 3, 0.05, 0.5, 16.0),
        (2.0, 3, 0.05, None, None), (2.0, 3, 0.05, 0.5, 0.0), (2.0, 3, 0.05, 0.5, 16.0)
    ]  # each setting without the label supports, then with them at each label weight and exactness
    assert written["latency"]["queries"] == 5 and written["latency"]["p50_ms_bridge"] > 0
    titles = written["rows"][0]["title2img/R@10"]
    titles_count = len(split_indices(catalogue.ids)["test"])
    assert [(row["weight"], sum(row[n]["n"] for n in ("seen", "unseen") if row[n])) for row in written["seen_titles"]
            ] == [(w, titles_count) for w in (0.2,) * 3 + (2.0,) * 3]  # every test title, split by whether seen
    assert titles["mean"] >= 0 and "title seen in training" in out
    for row in written["rows"][1:]:  # photo queries never cross the bridge: every difference is exactly zero
        assert row["img2img_lq/R@10"]["diff"] == {"mean": 0.0, "low": 0.0, "high": 0.0}
    assert written["labels"] > 0 and "against the same setting without them" in out
    assert [(row["weight"], row["exactness"]) for row in written["labels_against_items_only"]] == [
        (0.2, 0.0), (0.2, 16.0), (2.0, 0.0), (2.0, 16.0)]
    split_only = [row["attr2img/articleType/P@10 split-only"]["mean"] for row in written["rows"]]
    assert all(0 <= v <= 1 for v in split_only) and "P@10 split-only" in out
    with pytest.raises(SystemExit, match="--weights and --temperatures must be above 0"):
        bridge.main([*args[:10], "--weights", "0", "--tasks", "title2img"])
    for flag in ("--label-weights", "--label-exactness"):
        with pytest.raises(SystemExit, match="--label-weights and --label-exactness must be 0 or more"):
            bridge.main([*args[:10], flag, "-1", "--tasks", "title2img"])


def test_an_index_built_without_a_bridge_gets_the_one_indexing_would_build(tiny_index_dir, tiny_ensemble_dir,
                                                                          catalogue, tmp_path):
    out = build_index(tiny_ensemble_dir, catalogue, tmp_path / "index", IndexBuildCfg(bridge=False))
    searcher = load_searcher(out)
    assert searcher.live.bridge is None
    bridge.attach_bridge(searcher)
    built = load_searcher(tiny_index_dir).live.bridge
    np.testing.assert_array_equal(searcher.live.bridge.title_of, built.title_of)
    np.testing.assert_allclose(searcher.live.bridge.photos, built.photos, atol=2e-3)
    np.testing.assert_allclose(searcher.live.bridge.titles, built.titles, atol=2e-3)
    assert searcher.live.bridge.values == built.values and built.labels > 0  # label supports too
