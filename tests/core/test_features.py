"""Trunk-feature caches: distinct captions encoded once, image caches keyed by what they depend on, shard layouts."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from enclip.embed.runner import run_sharded
from enclip.errors import EnclipError
from enclip.models.ensemble import Ensemble, HeadCfg
from enclip.models.registry import create_backbone
from enclip.train.features import _cache_texts
from tests.conftest import tiny_run_cfg


def _ensemble(heads: HeadCfg | None = None, **backbone) -> Ensemble:
    torch.manual_seed(0)
    return Ensemble(create_backbone(replace(tiny_run_cfg().backbone, **backbone)), heads or HeadCfg())


def test_repeated_captions_get_the_rows_of_encoding_each_caption_alone(tmp_path):
    ensemble = _ensemble()
    texts = ["navy check shirt", "red dress", "navy check shirt", "a longer title for a pair of shoes", "red dress"]
    cached = _cache_texts(ensemble, texts, tmp_path / "texts", batch_size=2)
    assert len(list((tmp_path / "texts").glob("shard-*.npz"))) == 1
    for row, text in enumerate(texts):
        hidden, mask = ensemble.text_features([text])
        used = int(mask.sum())
        assert cached["mask"][row].sum() == used and not cached["mask"][row, used:].any()
        np.testing.assert_allclose(cached["hidden"][row, :used], hidden[0, :used].numpy(), atol=2e-3)
    np.testing.assert_array_equal(cached["hidden"][0], cached["hidden"][2])


def test_image_cache_key_follows_the_image_trunk_and_preprocessing_only():
    base = _ensemble()
    assert _ensemble(HeadCfg(trainable_text=0)).image_cache_key() == base.image_cache_key()  # same image cut
    assert _ensemble(image_size=48).image_cache_key() != base.image_cache_key()
    assert _ensemble(image_width=24).image_cache_key() != base.image_cache_key()
    assert _ensemble(HeadCfg(trainable_image=0)).image_cache_key() != base.image_cache_key()


def test_shards_of_another_job_are_refused_not_mixed_in(tmp_path):
    def encode(rows):
        return {"x": np.asarray(rows, dtype=np.float32)[:, None]}

    first = run_sharded(10, lambda rows: rows, encode, tmp_path, shard_size=4)["x"]
    assert first[:, 0].tolist() == list(range(10))
    again = run_sharded(10, lambda rows: rows, lambda rows: pytest.fail("reused shards are not re-encoded"), tmp_path,
                        shard_size=4)["x"]
    np.testing.assert_array_equal(again, first)
    with pytest.raises(EnclipError, match="another job.*delete the directory"):
        run_sharded(12, lambda rows: rows, encode, tmp_path, shard_size=4)


def test_a_degraded_view_runs_the_trunk_only_on_the_photos_its_draw_degrades(tmp_path, catalogue):
    from enclip.data.degrade import AugmentCfg
    from enclip.embed.trunk_cache import cache_image_features

    ensemble = _ensemble()
    positions = np.arange(0, 60, 2)
    augment = AugmentCfg(p=0.5)
    clean = cache_image_features(ensemble, catalogue, positions, tmp_path / "clean")
    every = cache_image_features(ensemble, catalogue, positions, tmp_path / "every", view=1, augment=augment, seed=3)
    seen: list[int] = []
    original = ensemble.image_trunk_outputs
    ensemble.image_trunk_outputs = lambda pixels: (seen.append(len(pixels)), original(pixels))[1]
    skipping = cache_image_features(ensemble, catalogue, positions, tmp_path / "skip", view=1, augment=augment,
                                    seed=3, clean=clean)
    changed = np.abs(every.astype(np.float32) - clean.astype(np.float32)).reshape(len(positions), -1).max(axis=1) > 0
    assert 0 < changed.sum() < len(positions)  # p=0.5: some photos degraded, some left as they are
    assert sum(seen) == changed.sum()  # the trunk ran on exactly the degraded ones
    np.testing.assert_allclose(skipping.astype(np.float32), every.astype(np.float32), atol=2e-3)
    with pytest.raises(ValueError, match="clean holds"):
        cache_image_features(ensemble, catalogue, positions, tmp_path / "bad", view=1, clean=clean[:-1])
