"""Retrieval metrics against hand-worked examples and edge cases."""

from math import log2

import numpy as np
import pytest

from enclip.errors import EnclipError
from enclip.eval.metrics import (
    METRICS,
    compute_metrics,
    hit_at_k,
    mrr_at_k,
    ndcg_at_k,
    parse_metric,
    precision_at_k,
    recall_at_k,
)

ALL = [recall_at_k, hit_at_k, precision_at_k, mrr_at_k, ndcg_at_k]


def test_one_of_two_relevant_found_at_rank_two():
    ranked, relevant = [["a", "b", "c"]], [{"b", "z"}]
    assert recall_at_k(ranked, relevant, 2) == pytest.approx([0.5])  # 1 of 2 relevant in top 2
    assert precision_at_k(ranked, relevant, 2) == pytest.approx([0.5])  # 1 relevant / k=2
    assert mrr_at_k(ranked, relevant, 2) == pytest.approx([0.5])  # first hit at rank 2
    assert hit_at_k(ranked, relevant, 2) == pytest.approx([1.0])
    # DCG = 1/log2(3) (hit at rank 2); ideal has min(2, 2) = 2 hits: 1/log2(2) + 1/log2(3).
    assert ndcg_at_k(ranked, relevant, 2) == pytest.approx([(1 / log2(3)) / (1 + 1 / log2(3))])
    for metric in ALL:  # nothing relevant at rank 1
        assert metric(ranked, relevant, 1) == pytest.approx([0.0])


def test_three_relevant_spread_over_five_places():
    ranked, relevant = [["x", "a", "y", "b", "c"]], [{"a", "b", "c"}]
    assert recall_at_k(ranked, relevant, 5) == pytest.approx([1.0])
    assert precision_at_k(ranked, relevant, 5) == pytest.approx([3 / 5])
    assert mrr_at_k(ranked, relevant, 5) == pytest.approx([1 / 2])
    dcg5 = 1 / log2(3) + 1 / log2(5) + 1 / log2(6)  # hits at ranks 2, 4, 5
    ideal3 = 1 / log2(2) + 1 / log2(3) + 1 / log2(4)  # 3 relevant -> three hits on top
    assert ndcg_at_k(ranked, relevant, 5) == pytest.approx([dcg5 / ideal3])
    assert ndcg_at_k(ranked, relevant, 5)[0] == pytest.approx(0.679731, abs=1e-6)  # 1.448460 / 2.130930
    # Cut at 3: one hit (rank 2) of three relevant.
    assert recall_at_k(ranked, relevant, 3) == pytest.approx([1 / 3])
    assert precision_at_k(ranked, relevant, 3) == pytest.approx([1 / 3])
    assert ndcg_at_k(ranked, relevant, 3) == pytest.approx([(1 / log2(3)) / ideal3])


def test_one_value_per_query_and_the_mean_is_the_metric():
    ranked = [["a", "b"], ["c", "d"], ["e", "f"]]
    relevant = [{"a"}, {"d"}, {"zz"}]
    values = mrr_at_k(ranked, relevant, 2)
    assert values.dtype == np.float64 and values.shape == (3,)
    assert values == pytest.approx([1.0, 0.5, 0.0])
    assert values.mean() == pytest.approx(0.5)


def test_k_larger_than_the_ranking_scores_missing_places_as_misses():
    ranked, relevant = [["a"]], [{"a"}]
    assert recall_at_k(ranked, relevant, 10) == pytest.approx([1.0])
    assert precision_at_k(ranked, relevant, 10) == pytest.approx([0.1])
    assert mrr_at_k(ranked, relevant, 10) == pytest.approx([1.0])
    assert ndcg_at_k(ranked, relevant, 10) == pytest.approx([1.0])  # ideal is min(1, 10) = 1 hit
    assert recall_at_k([[]], [{"a"}], 5) == pytest.approx([0.0])


def test_ideal_dcg_is_capped_at_k_when_many_items_are_relevant():
    relevant = [set("abcdefghij")]  # 10 relevant, k = 2: a perfect top 2 is a perfect nDCG@2
    assert ndcg_at_k([["a", "b", "q"]], relevant, 2) == pytest.approx([1.0])
    assert recall_at_k([["a", "b", "q"]], relevant, 2) == pytest.approx([0.2])


def test_no_relevant_retrieved_gives_zero_everywhere():
    for metric in ALL:
        assert metric([["a", "b", "c"]], [{"z"}], 3) == pytest.approx([0.0])


def test_duplicates_in_a_ranking_do_not_count_twice():
    ranked = [["a", "a", "b"]]
    assert recall_at_k(ranked, [{"a", "b"}], 2) == pytest.approx([0.5])
    assert precision_at_k(ranked, [{"a", "b"}], 2) == pytest.approx([0.5])
    assert precision_at_k(ranked, [{"a"}], 3) == pytest.approx([1 / 3])
    assert ndcg_at_k(ranked, [{"a"}], 3) == pytest.approx([1.0])
    # Hits at ranks 1 and 3 (rank 2 is the repeat): (1 + 1/log2(4)) / (1 + 1/log2(3)).
    assert ndcg_at_k(ranked, [{"a", "b"}], 3) == pytest.approx([1.5 / (1 + 1 / log2(3))])


def test_hit_equals_recall_when_exactly_one_item_is_relevant_but_not_otherwise():
    rng = np.random.default_rng(0)
    ids = [str(i) for i in range(30)]
    ranked = [list(rng.permutation(ids)[:10]) for _ in range(50)]
    single = [{str(rng.integers(30))} for _ in range(50)]
    assert np.array_equal(hit_at_k(ranked, single, 5), recall_at_k(ranked, single, 5))
    double = [{"0", "1"}] * 50
    assert not np.array_equal(hit_at_k(ranked, double, 5), recall_at_k(ranked, double, 5))


def test_relevant_may_be_any_collection_and_inputs_are_not_mutated():
    ranked = [("a", "b", "c")]
    relevant = [["c", "b"]]
    assert recall_at_k(ranked, relevant, 3) == pytest.approx([1.0])
    assert mrr_at_k(ranked, relevant, 3) == pytest.approx([0.5])
    assert ranked == [("a", "b", "c")] and relevant == [["c", "b"]]


def test_bad_inputs_raise_enclip_error():
    with pytest.raises(EnclipError, match="no relevant"):
        recall_at_k([["a"], ["b"]], [{"a"}, set()], 1)
    with pytest.raises(EnclipError, match="rankings"):
        recall_at_k([["a"], ["b"]], [{"a"}], 1)
    for bad_k in (0, -1, 1.5, True):
        with pytest.raises(EnclipError, match="k"):
            ndcg_at_k([["a"]], [{"a"}], bad_k)


def test_parse_metric_maps_protocol_names_to_functions():
    assert parse_metric("R@10") == (recall_at_k, 10)
    assert parse_metric("MRR@10") == (mrr_at_k, 10)
    assert parse_metric("nDCG@5") == (ndcg_at_k, 5)
    assert parse_metric("P@1") == (precision_at_k, 1)
    assert parse_metric("hit@3") == (hit_at_k, 3)
    assert parse_metric("ndcg@10") == (ndcg_at_k, 10)
    assert set(METRICS) == {"R", "P", "MRR", "nDCG", "hit"}
    for bad in ("R", "R@", "R@0", "X@10", "R@ten", "@5", ""):
        with pytest.raises(EnclipError, match="R@10"):
            parse_metric(bad)


def test_compute_metrics_returns_values_keyed_by_name():
    out = compute_metrics([["a", "b"]], [{"b"}], ["R@1", "MRR@2"])
    assert list(out) == ["R@1", "MRR@2"]
    assert out["R@1"] == pytest.approx([0.0]) and out["MRR@2"] == pytest.approx([0.5])
