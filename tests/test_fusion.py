"""Fusion rules against explicit-loop references and hand-worked examples."""

import numpy as np
import pytest

from enclip.errors import EnclipError
from enclip.fusion import (
    agreement,
    fuse_item_routed,
    fuse_routed,
    fuse_rrf,
    item_routing_weights,
    low_confidence,
    routing_weights,
)


def unit(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


@pytest.fixture
def scores():
    return np.random.default_rng(0).uniform(-1, 1, size=(3, 4, 7))


def test_routing_weights_are_a_softmax_and_harden_to_nearest_centroid():
    rng = np.random.default_rng(2)
    centroids, queries = unit(rng.normal(size=(4, 6))), rng.normal(size=(10, 6))
    weights = routing_weights(queries, centroids, temperature=0.05)
    np.testing.assert_allclose(weights.sum(axis=1), 1.0)
    cosines = unit(queries) @ centroids.T
    expected = np.exp(cosines / 0.05) / np.exp(cosines / 0.05).sum(axis=1, keepdims=True)
    np.testing.assert_allclose(weights, expected, rtol=1e-9)
    hard = routing_weights(queries, centroids, temperature=1e-6)
    np.testing.assert_allclose(hard, np.eye(4)[np.argmax(cosines, axis=1)], atol=1e-9)
    with pytest.raises(EnclipError):
        routing_weights(queries, centroids, temperature=0.0)


def test_fuse_routed_matches_loop(scores):
    weights = np.random.default_rng(3).dirichlet(np.ones(3), size=4)
    expected = np.zeros((4, 7))
    for q in range(4):
        for n in range(7):
            expected[q, n] = sum(weights[q, i] * scores[i, q, n] for i in range(3))
    np.testing.assert_allclose(fuse_routed(scores, weights), expected, atol=1e-12)


def test_item_routing_weights_and_fusion_match_loop(scores):
    clusters = np.array([0, 2, 1, 1, -1, 0, 2])
    weights = item_routing_weights(clusters, 3, own_weight=0.6)
    np.testing.assert_allclose(weights[0], [0.6, 0.2, 0.2])
    np.testing.assert_allclose(weights[1], [0.2, 0.2, 0.6])
    np.testing.assert_allclose(weights[4], [1 / 3, 1 / 3, 1 / 3])
    np.testing.assert_allclose(weights.sum(axis=1), 1.0)
    np.testing.assert_allclose(item_routing_weights(np.array([0, 0]), 1), [[1.0], [1.0]])
    expected = np.zeros((4, 7))
    for q in range(4):
        for n in range(7):
            expected[q, n] = sum(weights[n, i] * scores[i, q, n] for i in range(3))
    np.testing.assert_allclose(fuse_item_routed(scores, weights), expected, atol=1e-12)
    with pytest.raises(EnclipError):
        item_routing_weights(np.array([3]), 3)


def test_fuse_rrf_hand_worked_two_members():
    # query 0: member A ranks [2, 0, 1], member B ranks [0, 3, -1 padding]; k = 1
    # item 0: 1/(1+2) + 1/(1+1) = 5/6; item 1: 1/4; item 2: 1/2; item 3: 1/3
    # query 1: A ranks [1, 1, 3] (duplicate counts once at best rank), B ranks [3, -1, -1]
    # item 1: 1/2; item 3: 1/4 + 1/2 = 3/4
    rankings = np.array([[[2, 0, 1], [1, 1, 3]], [[0, 3, -1], [3, -1, -1]]], dtype=np.int64)
    fused, order = fuse_rrf(rankings, n_items=4, k=1)
    np.testing.assert_allclose(fused, [[5 / 6, 1 / 4, 1 / 2, 1 / 3], [0.0, 1 / 2, 0.0, 3 / 4]])
    np.testing.assert_array_equal(order, [[0, 2, 3, 1], [3, 1, 0, 2]])
    default_k, _ = fuse_rrf(rankings, n_items=4)
    assert default_k[0, 0] == pytest.approx(1 / 62 + 1 / 61)
    with pytest.raises(EnclipError):
        fuse_rrf(rankings, n_items=3)


def _agreeing_and_disagreeing_scores():
    rng = np.random.default_rng(4)
    base = rng.permutation(np.linspace(0.0, 0.3, 20))  # 0.016 apart: tiny member noise cannot reorder it
    agree = np.stack([base + rng.uniform(-0.002, 0.002, size=20) for _ in range(3)])
    disagree = np.stack([rng.uniform(0.0, 0.6, size=20) for _ in range(3)])
    return np.stack([agree, disagree], axis=1)  # (m=3, q=2, n=20)


def test_agreement_and_low_confidence_on_agreeing_vs_disagreeing_members():
    scores = _agreeing_and_disagreeing_scores()
    top = np.argsort(-scores.mean(axis=0), axis=1, kind="stable")[:, :5]
    result = agreement(scores, top, k=5)
    assert result["spread"].shape == (2, 5) and result["votes"].shape == (2, 5)
    for q in range(2):
        for j in range(5):
            member_scores = scores[:, q, top[q, j]]
            assert result["spread"][q, j] == pytest.approx(member_scores.std())
            own_top = [set(np.argsort(-scores[i, q], kind="stable")[:5]) for i in range(3)]
            assert result["votes"][q, j] == sum(top[q, j] in s for s in own_top)
    assert (result["votes"][0] == 3).all()
    assert result["spread"][0].mean() < 0.02 < result["spread"][1].mean()
    np.testing.assert_array_equal(low_confidence(result, spread_threshold=0.08), [False, True])


def test_low_confidence_flags_top_hit_with_few_votes_and_ignores_padding():
    # member scores agree exactly (spread 0) but only member 0 ranks item 0 first; k=1
    scores = np.array([[[0.9, 0.1, 0.5]], [[0.4, 0.1, 0.5]], [[0.4, 0.1, 0.5]]])
    result = agreement(scores, np.array([[0, -1]]), k=1)
    assert result["votes"].tolist() == [[1, 0]] and np.isnan(result["spread"][0, 1])
    np.testing.assert_array_equal(low_confidence(result, spread_threshold=1.0, min_votes_share=0.5), [True])
    np.testing.assert_array_equal(low_confidence(result, spread_threshold=1.0, min_votes_share=0.3), [False])
