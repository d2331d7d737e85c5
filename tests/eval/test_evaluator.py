"""The one evaluator behind `enclip eval` and the trainer's early stopping."""

from __future__ import annotations

import numpy as np
import pytest

from enclip.errors import EnclipError
from enclip.eval.evaluator import RetrievalEvaluator


def test_primary_figure_and_per_query_values_are_hand_worked():
    evaluator = RetrievalEvaluator([{"a"}, {"b"}, {"c", "d"}], ("R@1", "R@2", "MRR@2"), primary="R@2")
    ranked = [["a", "x"], ["x", "b"], ["x", "y"]]
    per_query = evaluator.per_query(ranked)
    np.testing.assert_allclose(per_query["R@1"], [1, 0, 0])
    np.testing.assert_allclose(per_query["MRR@2"], [1, 0.5, 0])
    assert evaluator.primary_score(ranked) == pytest.approx(2 / 3)
    assert evaluator(ranked) == pytest.approx({"R@1": 1 / 3, "R@2": 2 / 3, "MRR@2": 0.5})


def test_the_primary_figure_must_be_reported():
    with pytest.raises(EnclipError, match="primary"):
        RetrievalEvaluator([{"a"}], ("R@1",), primary="R@10")


def test_the_trainer_selects_on_the_evaluators_recall(tmp_path, catalogue):
    """validation_recall equals R@10 computed by brute force from the same member embeddings."""
    import torch

    from enclip.models.ensemble import load_model
    from enclip.train import trainer
    from enclip.train.features import cache_features
    from enclip.train.run import train_system
    from tests.conftest import tiny_run_cfg

    model_dir = train_system(catalogue, tmp_path / "m", tiny_run_cfg(epochs=1))
    ensemble, _ = load_model(model_dir)
    rows = np.arange(len(catalogue))
    cache = cache_features(ensemble, catalogue, rows, tmp_path / "cache")
    got = trainer.validation_recall(ensemble, 0, cache, rows, k=10)
    member = ensemble.members[0]
    with torch.no_grad():
        images = trainer._embed_images(member, cache, rows, ensemble.device)
        texts = member.encode_text(cache.text_batch(cache.first_caption[rows], ensemble.device))
    scores = (texts @ images.T).numpy()
    own = scores[rows, rows]
    expected = float(((scores > own[:, None]).sum(axis=1) < 10).mean())
    assert got == pytest.approx(expected)
