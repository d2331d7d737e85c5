"""attrs2img: shopper-phrased attribute queries from held-out items, judged by every matching item."""

from __future__ import annotations

import json

import numpy as np

from enclip.data.captions import CaptionCfg, build_captions
from enclip.data.split import split_indices
from enclip.eval.evaluate import EvalCfg, evaluate_index
from enclip.eval.shopper_queries import build_shopper_queries, phrase
from enclip.eval.tasks import attrs_group


def test_phrasing_is_how_shoppers_type_and_skips_what_cannot_be_said():
    attributes = {"baseColour": "Navy Blue", "articleType": "Shirts", "gender": "Men"}
    assert phrase("{colour} {type} for {who}", attributes) == "navy blue shirts for men"
    assert phrase("{who}'s {colour} {type}", attributes) == "men's navy blue shirts"
    assert phrase("{type} for {who}", {"articleType": "Watches", "gender": "Unisex"}) is None
    assert phrase("{usage} {type}", {"usage": "NA", "articleType": "Shirts"}) is None
    assert phrase("{usage} {type}", {"usage": "Formal", "articleType": "Formal Shoes"}) is None  # "formal formal"


def test_queries_come_from_held_out_items_and_relevant_items_match_every_attribute(catalogue):
    split = split_indices(catalogue.ids)
    held_out = np.concatenate([split["val"], split["test"]])
    queries = build_shopper_queries(catalogue, held_out, n=50, seed=3)
    assert queries and len({q.attributes for q in queries}) == len(queries)  # each combination asked once
    held_out_ids = {catalogue.ids[int(p)] for p in held_out}
    for query in queries:
        assert query.source in held_out_ids and query.source in query.relevant
        expected = {catalogue.ids[i] for i in range(len(catalogue))
                    if all(catalogue.attributes[c][i] == v for c, v in query.attributes)}
        assert query.relevant == expected
    assert build_shopper_queries(catalogue, held_out, n=50, seed=3) == queries  # seeded


def test_no_query_repeats_a_training_caption(catalogue):
    captions = set()
    for i in range(len(catalogue)):
        item = catalogue.item(i)
        captions |= {c.lower() for c in build_captions(item["title"], item["attributes"],
                                                        CaptionCfg(use_attributes=True))}
    texts = {q.text for q in build_shopper_queries(catalogue, np.arange(len(catalogue)), n=200)}
    assert texts and not texts & captions


def test_attrs2img_reports_precision_and_ndcg(tiny_index_dir, catalogue, tmp_path):
    from enclip.search import load_searcher

    out = tmp_path / "metrics.json"
    evaluate_index(None, EvalCfg(tasks=("attrs2img",), n_resamples=50), out=out,
                   searcher=load_searcher(tiny_index_dir))
    written = json.loads(out.read_text())
    n = len(attrs_group(catalogue, split_indices(catalogue.ids)["test"]))
    assert n > 0 and written["attrs2img/P@10"]["n"] == n and written["attrs2img/nDCG@10"]["n"] == n
    assert 0 <= written["attrs2img/P@10"]["mean"] <= 1
