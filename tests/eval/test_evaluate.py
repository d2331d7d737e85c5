"""``enclip eval`` on the tiny index: metrics.json layout, known answers through fake searchers, custom queries."""

from __future__ import annotations

import json
import math
import shutil
from types import SimpleNamespace

import numpy as np
import pytest

from enclip.data.catalogue import Catalogue
from enclip.data.degrade import degrade
from enclip.data.split import split_indices
from enclip.errors import EnclipError
from enclip.eval.evaluate import EvalCfg, both_severities, encode_rows, evaluate_index
from enclip.eval.tasks import (
    ATTRIBUTE_TASK_KEYS,
    QueryGroup,
    attribute_groups,
    item_seed,
    lq_groups,
    same_title_relevant,
    sample_positions,
    title_group,
)
from enclip.search import QueryEncoder

FAST = dict(lq_queries=3, severities=(1, 3), degradations=("blur", "noise"), n_resamples=200)


@pytest.fixture(scope="module")
def searcher(tiny_index_dir):
    from enclip.search import load_searcher

    return load_searcher(tiny_index_dir)


@pytest.fixture(scope="module")
def evaluated(searcher, tmp_path_factory):
    out = tmp_path_factory.mktemp("eval") / "metrics.json"
    result = evaluate_index(None, EvalCfg(**FAST), out=out, searcher=searcher)
    return result, json.loads(out.read_text())


def _figures(metrics: dict) -> dict:
    return {k: v for k, v in metrics.items() if "/" in k}


# -- metrics.json ------------------------------------------------------------------------------------------------
def test_metrics_json_has_flat_keys_with_intervals(evaluated, catalogue):
    result, written = evaluated
    n_test = len(split_indices(catalogue.ids)["test"])
    expected = {"title2img/R@1": n_test, "title2img/nDCG@10": n_test, "title2img_dup/MRR@10": n_test,
                "img2img_lq/blur/1/R@1": 3, "img2img_lq/noise/3/R@10": 3, "both2img/R@10": 3 * 2}
    for key, n in expected.items():
        assert written[key]["n"] == n, key
    assert not any(k.startswith("img2img_lq/jpeg") or "/2/" in k for k in written)  # only the asked ones
    for key, figure in _figures(written).items():
        assert set(figure) == {"mean", "low", "high", "n"}
        assert figure["low"] <= figure["mean"] <= figure["high"], key
        assert figure["mean"] == pytest.approx(result["per_query"][key].mean())
        assert len(result["per_query"][key]) == figure["n"]


def test_both2img_is_reported_per_degradation_and_severity_and_pooled(evaluated):
    result, written = evaluated
    for name in FAST["degradations"]:
        for severity in FAST["severities"]:
            assert written[f"both2img/{name}/{severity}/R@10"]["n"] == FAST["lq_queries"]
    # the headline pools every degradation at the default both_severity (3), in degradation order
    pooled = np.concatenate([result["per_query"][f"both2img/{name}/3/R@10"] for name in FAST["degradations"]])
    assert np.array_equal(result["per_query"]["both2img/R@10"], pooled)
    labels = result["query_labels"]["both2img"]
    assert labels[:3] == [f"{item}/blur" for item in result["query_labels"]["both2img/blur/3"]]


def test_both2img_is_also_measured_at_its_headline_severity():
    assert both_severities(EvalCfg(severities=(1, 5), both_severity=3)) == (1, 3, 5)
    assert both_severities(EvalCfg(severities=(3,), both_severity=3)) == (3,)


def test_meta_records_index_tasks_and_query_counts(evaluated, searcher):
    meta = evaluated[1]["_meta"]
    assert meta["data_fingerprint"] == searcher.manifest["data_fingerprint"]
    assert meta["index"] == str(searcher.path)
    assert meta["tasks"] == list(EvalCfg().tasks)
    assert meta["fusion"] == searcher.default_fusion
    assert meta["queries"]["img2img_lq/blur/3"] == 3 and meta["queries"]["both2img"] == 6
    assert meta["seconds"] >= 0


def test_attr2img_is_reported_per_attribute(evaluated, catalogue):
    written = evaluated[1]
    for name in ATTRIBUTE_TASK_KEYS:
        for metric in ("P@1", "P@10", "MRR@10"):
            assert f"attr2img/{name}/{metric}" in written
    # synthetic usage values are Casual, Formal and NA; NA means "unknown" and is not asked
    assert written["attr2img/usage/P@1"]["n"] == 2
    assert written["attr2img/articleType/P@1"]["n"] == len(set(catalogue.attributes["articleType"]))


def test_same_numbers_on_a_second_run(evaluated, searcher, tmp_path):
    again = evaluate_index(None, EvalCfg(**FAST), out=tmp_path, searcher=searcher)
    assert (tmp_path / "metrics.json").exists()
    assert _figures(again) == _figures(evaluated[1])
    assert again["query_labels"] == evaluated[0]["query_labels"]


def test_cli_writes_metrics_into_the_index_dir(tiny_index_dir, tmp_path, capsys):
    from enclip.cli import main

    index = shutil.copytree(tiny_index_dir, tmp_path / "index")
    assert main(["eval", "--index", str(index), "--tasks", "title2img", "--max-queries", "3"]) == 0
    written = json.loads((index / "metrics.json").read_text())
    assert written["title2img/R@10"]["n"] == 3
    assert not any(k.startswith("attr2img") for k in written)
    assert "title2img" in capsys.readouterr().out


# -- known answers through fake searchers ------------------------------------------------------------------------
class OneHotModel:
    """Encodes a title as a one-hot of its catalogue position (``shift`` moves the peak to the next item)."""

    def __init__(self, titles: list[str], shift: int = 0):
        self.positions, self.n, self.shift, self.batches = {t: i for i, t in enumerate(titles)}, len(titles), shift, []

    def encode_texts(self, texts):
        self.batches.append(len(texts))
        out = np.zeros((2, len(texts), self.n), dtype=np.float32)
        for j, text in enumerate(texts):
            position = self.positions[text]
            out[:, j, position] = 0.5
            out[:, j, (position + self.shift) % self.n] += 1.0
        return out


class FakeSearcher:
    """Ranks items by the summed member vector: an oracle for OneHotModel's queries."""

    def __init__(self, catalogue: Catalogue, shift: int = 0):
        self.catalogue, self.model = catalogue, OneHotModel(catalogue.titles, shift)
        self.encoder = QueryEncoder(self.model)
        self.path, self.manifest, self.default_fusion = "fake", {}, "mean"

    def search_batch(self, queries, k=10, filters=None, fusion=None, shares=None):
        orders = np.argsort(-queries.sum(axis=0), axis=1, kind="stable")[:, :k]
        return [[SimpleNamespace(id=self.catalogue.ids[i]) for i in order] for order in orders]


def test_an_oracle_ranking_gives_perfect_title_scores(catalogue, tmp_path):
    fake = FakeSearcher(catalogue)
    result = evaluate_index(tmp_path, EvalCfg(tasks=("title2img",), batch_size=3, n_resamples=50), searcher=fake)
    n_test = len(split_indices(catalogue.ids)["test"])
    for metric in ("R@1", "R@5", "R@10", "MRR@10", "nDCG@10"):
        assert result[f"title2img/{metric}"]["mean"] == 1.0
    assert fake.model.batches == [3] * (n_test // 3) + ([n_test % 3] if n_test % 3 else [])
    assert (tmp_path / "metrics.json").exists()


def test_relevant_item_second_gives_hand_worked_scores(catalogue, tmp_path):
    result = evaluate_index(tmp_path, EvalCfg(tasks=("title2img",), batch_size=5, n_resamples=50),
                            searcher=FakeSearcher(catalogue, shift=1))
    assert result["title2img/R@1"]["mean"] == 0.0
    assert result["title2img/R@5"]["mean"] == 1.0
    assert result["title2img/MRR@10"]["mean"] == pytest.approx(0.5)
    assert result["title2img/nDCG@10"]["mean"] == pytest.approx(1 / math.log2(3))


def test_batched_query_vectors_match_the_searchers_own_encoding(searcher, catalogue):
    photo = catalogue.image(4)
    group = QueryGroup("mixed", ["a", "b", "c"], [catalogue.titles[0], None, catalogue.titles[2]],
                       [None, lambda: photo, lambda: photo], [1.0, 0.0, 0.25])
    vectors = encode_rows(searcher.encoder, group, range(3))
    expected = [searcher.encode_query(text=catalogue.titles[0]), searcher.encode_query(image=photo),
                searcher.encode_query(text=catalogue.titles[2], image=photo, weight=0.25)]
    for j, want in enumerate(expected):
        np.testing.assert_allclose(vectors[:, j], want, atol=1e-5)


# -- query sets --------------------------------------------------------------------------------------------------
def _catalogue(titles: list[str], colours: list[str]) -> Catalogue:
    ids = [f"{10 * i}" for i in range(len(titles))]  # every id ends in 0: all are test items
    return Catalogue(ids=ids, titles=titles, attributes={"baseColour": colours}, images=[b""] * len(titles))


def test_title2img_dup_relevant_sets_hold_every_item_with_the_same_title():
    cat = _catalogue(["X", "Y", "X", "Z", "X"], ["Red"] * 5)
    assert same_title_relevant(cat, ["X", "Z", "W"]) == [frozenset({"0", "20", "40"}), frozenset({"30"}), frozenset()]
    group = title_group(cat, np.array([0, 1]), ("title2img", "title2img_dup"))
    single, dup = group.judgements
    assert (single.key, dup.key) == ("title2img", "title2img_dup")
    assert single.relevant == [frozenset({"0"}), frozenset({"10"})]
    assert dup.relevant == [frozenset({"0", "20", "40"}), frozenset({"10"})]
    assert group.texts == ["X", "Y"]


def test_attribute_queries_and_relevant_sets_match_a_brute_force_count():
    colours = ["Red", "Navy Blue", "Red", "", "NA", "Navy Blue", "Red"]
    cat = _catalogue([f"t{i}" for i in range(7)], colours)
    (group,) = attribute_groups(cat)  # the other protocol attributes are absent and skipped
    assert group.texts == ["Navy Blue", "Red"]
    for value, relevant in zip(group.texts, group.judgements[0].relevant):
        assert relevant == {cat.ids[i] for i, c in enumerate(colours) if c == value}


def test_degraded_photo_queries_are_seeded_per_item(catalogue):
    test = split_indices(catalogue.ids)["test"]
    positions = sample_positions(test, 3, seed=7)
    assert np.array_equal(positions, sample_positions(test, 3, seed=7))
    assert set(positions) <= set(test) and list(positions) == sorted(positions)
    (group,) = lq_groups(catalogue, positions, ["noise"], [4], seed=7)
    p = int(positions[1])
    want = degrade(catalogue.image(p), "noise", 4, item_seed(catalogue.ids[p], 7))
    assert np.array_equal(np.asarray(group.images[1]()), np.asarray(want))
    assert group.judgements[0].relevant[1] == {catalogue.ids[p]}


# -- custom query files ------------------------------------------------------------------------------------------
def _write_queries(tmp_path, catalogue) -> tuple:
    (tmp_path / "photo.jpg").write_bytes(catalogue.image_bytes(5))
    (tmp_path / "broken.jpg").write_text("not an image")
    ids = catalogue.ids
    lines = [
        {"text": catalogue.titles[0], "image": None, "relevant": [ids[0]]},
        {"text": None, "image": "photo.jpg", "relevant": [ids[5], ids[6]]},
        "",
        "{not json",
        {"text": "shirt", "relevant": []},
        {"text": "shirt", "relevant": ["no-such-id"]},
        {"text": "shirt", "image": "broken.jpg", "relevant": [ids[1]]},
        {"text": None, "image": None, "relevant": [ids[1]]},
        {"text": catalogue.titles[2], "image": str(tmp_path / "photo.jpg"), "relevant": [ids[2]], "weight": 0.7},
        {"text": "shirt", "relevant": [ids[1]], "weight": 2},
    ]
    path = tmp_path / "queries.jsonl"
    path.write_text("\n".join(line if isinstance(line, str) else json.dumps(line) for line in lines) + "\n")
    return path, [4, 5, 6, 7, 8, 10]


def test_custom_queries_are_scored_and_bad_lines_reported(searcher, catalogue, tmp_path, capsys):
    path, bad_lines = _write_queries(tmp_path, catalogue)
    cfg = EvalCfg(queries_file=str(path), n_resamples=50)
    result = evaluate_index(None, cfg, out=tmp_path / "m.json", searcher=searcher)
    assert {k for k in _figures(result)} == {f"custom/{m}" for m in ("R@1", "R@5", "R@10", "MRR@10", "nDCG@10")}
    assert result["custom/R@10"]["n"] == 3
    assert result["query_labels"]["custom"] == ["line 1", "line 2", "line 9"]
    bad = result["_meta"]["bad_lines"]
    assert bad["count"] == 6 and [b["line"] for b in bad["first"]] == bad_lines
    assert result["_meta"]["tasks"] == ["custom"]
    assert "6 bad query lines" in capsys.readouterr().out


def test_custom_queries_file_with_only_bad_lines_is_an_error(searcher, tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"text": "x", "relevant": ["nope"]}\n[1, 2]\n')
    with pytest.raises(EnclipError, match="no usable query"):
        evaluate_index(None, EvalCfg(queries_file=str(path)), out=tmp_path, searcher=searcher)
    with pytest.raises(EnclipError, match="cannot read"):
        evaluate_index(None, EvalCfg(queries_file=str(tmp_path / "missing.jsonl")), out=tmp_path, searcher=searcher)


@pytest.mark.parametrize("bad", [dict(tasks=("title2txt",)), dict(severities=(0,)), dict(max_queries=0),
                                 dict(degradations=("smudge",)), dict(fusion="max")])
def test_config_mistakes_are_reported_before_any_work(bad):
    with pytest.raises(EnclipError):
        EvalCfg(**bad)
