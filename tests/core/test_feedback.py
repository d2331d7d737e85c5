"""Pseudo-relevance feedback in re-scoring: what it adds to each member's scores, where it applies, what it refuses."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from enclip import load_searcher
from enclip.errors import EnclipError


def _reference(stored: np.ndarray, query: np.ndarray, penalty: np.ndarray, weight: float, depth: int) -> np.ndarray:
    """(n, K) member scores with feedback, computed item by item over the whole (80-item) catalogue."""
    member = np.einsum("nkd,kd->nk", stored, query) - penalty
    out = member.copy()
    for m in range(stored.shape[1]):
        best = np.argsort(-member[:, m], kind="stable")[:depth]
        centroid = stored[best, m].mean(axis=0)
        out[:, m] += weight * stored[:, m] @ centroid
    return out


@pytest.mark.parametrize("hubness", [0.0, 0.5])
def test_each_member_gains_the_weighted_cosine_to_the_mean_of_its_best_candidates(tiny_index_dir, catalogue,
                                                                                 hubness):
    searcher = load_searcher(tiny_index_dir, channels=("image",), hubness=hubness, feedback=0.5, feedback_depth=3,
                             bridge=0.0)
    assert searcher.stats()["feedback"] == {"weight": 0.5, "depth": 3}  # what the server's /stats reports
    assert len(catalogue) <= searcher.cfg.candidates  # every item is a candidate: the reference ranks them all
    stored = searcher.index.reconstruct(np.arange(len(catalogue))).reshape(len(catalogue), searcher.members, -1)
    for text in ["Men Red Shirts", "Women Black Jeans"]:
        query = searcher.encode_query(text=text)
        member = _reference(stored, query, hubness * searcher.live.hubness.penalty, 0.5, 3)
        reference = np.argsort(-member.mean(axis=1), kind="stable")[:10]
        hits = searcher.search(text=text, k=10, fusion="mean").hits
        assert [catalogue.index_of(h.id) for h in hits] == reference.tolist()
        np.testing.assert_allclose([h.member_scores for h in hits], member[reference], atol=1e-5)


def test_queries_with_a_photo_get_no_feedback_and_product_search_re_scores_text_with_it(tiny_index_dir, catalogue):
    plain = load_searcher(tiny_index_dir, feedback=0.0, bridge=0.0)
    fed = load_searcher(tiny_index_dir, feedback=1.0, feedback_depth=5, bridge=0.0)
    photo = catalogue.image_bytes(3)
    for query in [{"image": photo}, {"image": photo, "text": "Red Shirts", "weight": 0.75}]:
        assert ([(h.id, h.score) for h in fed.search(**query, k=10).hits]
                == [(h.id, h.score) for h in plain.search(**query, k=10).hits])
    text = "Men Red Shirts"
    assert ([h.id for h in fed.search(text=text, k=10, channels=["image"]).hits]
            != [h.id for h in plain.search(text=text, k=10, channels=["image"]).hits])
    stored = fed.index.reconstruct(np.arange(len(catalogue))).reshape(len(catalogue), fed.members, -1)
    # product search (every channel): the photo channel lists its pool's best by re-scored cosines, and every
    # candidate of the union is re-scored with the feedback of the union's own best
    fed = load_searcher(tiny_index_dir, hubness=0.0, feedback=1.0, feedback_depth=5, bridge=0.0)
    text = "Men Red Shirts"
    query = fed.encode_query(text=text)
    found = fed.channel_candidates(text, fusion="mean")
    whole = _reference(stored, query, np.zeros((len(catalogue), fed.members)), 1.0, 5)
    image = found.found["image"]
    assert image.tolist() == np.argsort(-whole.mean(axis=1), kind="stable")[:len(image)].tolist()
    union = _reference(stored[found.union], query, np.zeros((len(found.union), fed.members)), 1.0, 5)
    np.testing.assert_allclose(found.member_scores[:, 0, :], union.T, atol=1e-5)


def test_filters_that_leave_no_candidate_give_no_hits_quietly(tiny_index_dir, catalogue):
    searcher = load_searcher(tiny_index_dir, feedback=0.5)
    pairs = set(zip(catalogue.attributes["gender"], catalogue.attributes["articleType"]))
    gender, kind = next((g, a) for g in sorted(set(catalogue.attributes["gender"]))
                        for a in sorted(set(catalogue.attributes["articleType"])) if (g, a) not in pairs)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no mean over an empty set of candidates
        for channels in (None, ["image"]):
            assert searcher.search(text="Red Shirts", filters={"gender": gender, "articleType": kind},
                                   channels=channels).hits == []


def test_bad_feedback_settings_are_refused_with_their_meaning(tiny_index_dir):
    with pytest.raises(EnclipError, match="feedback is the weight"):
        load_searcher(tiny_index_dir, feedback=-0.1)
    with pytest.raises(EnclipError, match="feedback is the weight"):
        load_searcher(tiny_index_dir, feedback=float("nan"))
    for depth in (0, True, 2.5):
        with pytest.raises(EnclipError, match="feedback_depth is a number of candidates"):
            load_searcher(tiny_index_dir, feedback_depth=depth)
