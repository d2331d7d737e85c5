"""Trunk-feature caches: distinct captions encoded once, image caches keyed by what they depend on, shard layouts."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from enclip.embed.runner import prefetch_pays, run_sharded
from enclip.errors import EnclipError
from enclip.models.ensemble import Ensemble, HeadCfg
from enclip.models.registry import create_backbone
from enclip.train.features import _cache_texts
from tests.conftest import tiny_run_cfg


def _ensemble(heads: HeadCfg | None = None, **backbone) -> Ensemble:
    torch.manual_seed(0)
    return Ensemble(create_backbone(replace(tiny_run_cfg().backbone, **backbone)), heads or HeadCfg())


def test_repeated_captions_get_the_rows_of_encoding_each_caption_alone(tmp_path):
    ensemble = _ensemble(HeadCfg(trainable_text=1))  # a trained text layer: token states and masks are cached
    texts = ["navy check shirt", "red dress", "navy check shirt", "a longer title for a pair of shoes", "red dress"]
    cached = _cache_texts(ensemble, texts, tmp_path / "texts", batch_size=2)
    assert len(list((tmp_path / "texts").glob("shard-*.npz"))) == 1
    for row, text in enumerate(texts):
        hidden, mask = ensemble.text_features([text])
        used = int(mask.sum())
        assert cached["mask"][row].sum() == used and not cached["mask"][row, used:].any()
        np.testing.assert_allclose(cached["hidden"][row, :used], hidden[0, :used].numpy(), atol=2e-3)
    np.testing.assert_array_equal(cached["hidden"][0], cached["hidden"][2])


def test_a_frozen_text_tower_caches_one_pooled_vector_per_caption(tmp_path):
    ensemble = _ensemble(HeadCfg(trainable_text=0))  # the default: the head is the projection only
    texts = ["navy check shirt", "a longer title for a pair of shoes", "navy check shirt"]
    cached = _cache_texts(ensemble, texts, tmp_path / "texts", batch_size=2)
    assert set(cached) == {"pooled"}
    for row, text in enumerate(texts):
        np.testing.assert_allclose(cached["pooled"][row], ensemble.text_features([text])[0].numpy(), atol=2e-3)


def test_a_token_bag_reads_the_same_words_from_a_cached_row_as_from_the_caption_alone(tmp_path):
    ensemble = _ensemble(HeadCfg(trainable_text=0, token_bag=4))
    head = ensemble.members[0].text_head
    with torch.no_grad():  # stands in for training: token vectors that show in the embedding
        head.token_adapter.weight.normal_(generator=torch.Generator().manual_seed(0))
    # batches of two, shortest first and trimmed to their longest: the ids still land in fixed columns
    texts = ["navy check shirt", "a longer title for a pair of shoes", "red dress", "navy check shirt"]
    cached = _cache_texts(ensemble, texts, tmp_path / "texts", batch_size=2)
    with torch.no_grad():
        from_cache = ensemble.members[0].encode_text(torch.from_numpy(cached["pooled"]).float())
    np.testing.assert_allclose(from_cache.numpy(), ensemble.encode_texts(texts)[0], atol=2e-3)


def test_image_cache_key_follows_the_image_trunk_and_preprocessing_only():
    base = _ensemble()
    assert _ensemble(HeadCfg(trainable_text=1)).image_cache_key() == base.image_cache_key()  # same image cut
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


@pytest.mark.parametrize("prefetch", [True, False])
def test_reading_ahead_in_a_thread_or_inline_writes_the_same_shards_and_surfaces_reader_errors(tmp_path, prefetch):
    events = []

    def read(rows):
        events.append(("read", int(rows[0])))
        return rows

    def encode(rows):
        events.append(("encode", int(rows[0])))
        return {"x": np.asarray(rows, dtype=np.float32)[:, None] * 2}

    out = run_sharded(10, read, encode, tmp_path / "ok", batch_size=2, shard_size=4, prefetch=prefetch)["x"]
    assert out[:, 0].tolist() == [2 * i for i in range(10)]
    if not prefetch:  # inline: each batch is read just before it is encoded, nothing ahead
        assert events == [(kind, start) for start in range(0, 10, 2) for kind in ("read", "encode")]

    def broken(rows):
        if rows[0] >= 4:
            raise OSError("truncated image file")
        return rows

    with pytest.raises(OSError, match="truncated"):
        run_sharded(10, broken, encode, tmp_path / "broken", batch_size=2, shard_size=4, prefetch=prefetch)
    assert sorted(p.name for p in (tmp_path / "broken").glob("shard-*.npz")) == ["shard-00000.npz"]


def test_only_an_accelerator_reads_ahead_in_a_thread():
    assert not prefetch_pays(torch.device("cpu")) and prefetch_pays(torch.device("cuda"))
    assert not prefetch_pays("cpu") and prefetch_pays("cuda:0")


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


def test_clustering_features_leave_out_the_colour_thumbnail():
    from enclip.train.features import FeatureCache

    maps = np.arange(2 * 5 * 2 * 2, dtype=np.float16).reshape(2, 5, 2, 2)  # 2 channels of features + 3 of colour
    cache = FeatureCache(positions=np.arange(2), images=[maps], texts={}, caption_owner=np.arange(2),
                         first_caption=np.arange(2))
    np.testing.assert_array_equal(cache.pooled_images(colour=True), maps[:, :2].astype(np.float32).mean(axis=(2, 3)))
    assert cache.pooled_images().shape == (2, 5)


def _feature_cache(images: np.ndarray):
    from enclip.train.features import FeatureCache

    n = len(images)
    return FeatureCache(np.arange(n), [images], {}, np.arange(n), np.arange(n))


def test_mirrored_rows_get_their_feature_map_flipped_left_to_right_and_the_rest_stay_as_cached():
    maps = np.arange(3 * 2 * 2 * 3, dtype=np.float16).reshape(3, 2, 2, 3)  # (n, channels, height, width)
    cache = _feature_cache(maps)
    rows, views = np.array([2, 0, 1]), np.zeros(3, int)
    batch = cache.image_batch(rows, views, "cpu", mirrored=np.array([True, False, True])).numpy()
    np.testing.assert_array_equal(batch[0], maps[2][..., ::-1])
    np.testing.assert_array_equal(batch[1], maps[0])
    np.testing.assert_array_equal(batch[2], maps[1][..., ::-1])
    assert batch[0, 0, 0].tolist() == [26.0, 25.0, 24.0]  # one row of the first channel, read backwards
    np.testing.assert_array_equal(cache.image_batch(rows, views, "cpu").numpy(), maps[rows])


def test_mirroring_pooled_trunk_outputs_is_refused_with_what_to_do():
    cache = _feature_cache(np.ones((2, 8), np.float16))
    np.testing.assert_array_equal(cache.image_batch(np.arange(2), np.zeros(2, int), "cpu",
                                                    mirrored=np.zeros(2, bool)).numpy(), np.ones((2, 8)))
    with pytest.raises(EnclipError, match="mirrored views need feature maps.*--trainable-image"):
        cache.image_batch(np.arange(2), np.zeros(2, int), "cpu", mirrored=np.array([True, False]))


def test_the_mirror_flag_sets_the_share_and_a_share_outside_zero_to_one_is_refused(catalogue, tmp_path):
    from enclip.cli import build_parser, run_cfg
    from enclip.train.run import train_system

    def share(*flags):
        return run_cfg(build_parser().parse_args(["train", "--out", "x", *flags])).train.mirror

    assert (share(), share("--mirror"), share("--mirror", "0.25")) == (0.0, 0.5, 0.25)
    cfg = tiny_run_cfg()
    with pytest.raises(EnclipError, match="--mirror is a share of the training photos, from 0"):
        train_system(catalogue, tmp_path / "model", replace(cfg, train=replace(cfg.train, mirror=1.5)))
    assert not (tmp_path / "model" / "ensemble.json").exists()
