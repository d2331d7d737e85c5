"""The CCA start of new projections (train/alignment.py): the fit, the heads it sets, and when training calls it."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from enclip.errors import EnclipError
from enclip.models.ensemble import Ensemble, HeadCfg
from enclip.models.registry import BackboneCfg, create_backbone
from enclip.train import trainer
from enclip.train.alignment import cca_directions, cca_start, projection
from enclip.train.features import FeatureCache
from enclip.train.run import train_system
from tests.conftest import tiny_run_cfg


def _paired(n: int = 2000, dx: int = 24, dy: int = 12, shared: int = 4, noise: float = 0.3, seed: int = 0):
    """Rows of x and y that share ``shared`` latent factors, each seen through its own random mixing, plus noise."""
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(n, shared))
    x = z @ rng.normal(size=(shared, dx)) + noise * rng.normal(size=(n, dx))
    y = z @ rng.normal(size=(shared, dy)) + noise * rng.normal(size=(n, dy))
    return x, y


def _recall_at_1(a: np.ndarray, b: np.ndarray) -> float:
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return float(np.mean(np.argmax(a @ b.T, axis=1) == np.arange(len(a))))


def test_cca_finds_the_shared_factors_and_orders_them_by_correlation():
    x, y = _paired()
    a, b = cca_directions(x, y, dim=8, power=0.0)
    assert a.shape == (24, 8) and b.shape == (12, 8)
    u, v = x @ a, y @ b
    correlations = [float(np.mean(u[:, i] * v[:, i]) / np.sqrt(np.mean(u[:, i] ** 2) * np.mean(v[:, i] ** 2)))
                    for i in range(8)]
    assert min(correlations[:4]) > 0.9  # the four shared factors
    assert max(correlations[4:]) < 0.3  # beyond them, noise only
    assert correlations == sorted(correlations, reverse=True)


def _correlations(x, y, a, b):
    u, v = x @ a, y @ b
    return np.array([np.mean(u[:, i] * v[:, i]) / np.sqrt(np.mean(u[:, i] ** 2) * np.mean(v[:, i] ** 2))
                     for i in range(a.shape[1])])


def test_cca_does_not_depend_on_the_scale_of_each_feature():
    # what makes it CCA rather than a covariance fit (PLS): a loud feature unrelated to the other side is not chosen
    x, y = _paired()
    scales = np.geomspace(0.01, 100, x.shape[1])
    plain = _correlations(x, y, *cca_directions(x, y, dim=6, ridge=1e-9))
    scaled = _correlations(x * scales, y, *cca_directions(x * scales, y, dim=6, ridge=1e-9))
    np.testing.assert_allclose(scaled, plain, atol=1e-4)


def test_the_fitted_directions_match_held_out_pairs_far_above_chance():
    x, y = _paired(n=2400)
    a, b = cca_directions(x[:2000], y[:2000], dim=4)
    assert _recall_at_1(y[2000:] @ b, x[2000:] @ a) > 0.2  # 400 candidates: chance is 0.0025


def test_cca_keeps_at_most_as_many_directions_as_the_narrower_side_has():
    x, y = _paired(dy=6)
    a, b = cca_directions(x, y, dim=16)
    assert a.shape == (24, 6) and b.shape == (6, 6)


def test_cca_refuses_unpaired_rows():
    with pytest.raises(EnclipError, match="paired rows"):
        cca_directions(np.ones((5, 3)), np.ones((4, 3)), dim=2)


def _tiny_ensemble(embed_dim: int = 16, **heads) -> Ensemble:
    backbone = create_backbone(BackboneCfg(name="tiny", embed_dim=embed_dim, image_size=32, context_length=16))
    return Ensemble(backbone, HeadCfg(**heads))


def _paired_cache(ensemble: Ensemble, n: int = 120, seed: int = 0) -> FeatureCache:
    """Trunk outputs of ``n`` random photos, and text trunk outputs that are a noisy linear map of the photos'
    pooled head features, so the two sides have something to align."""
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    with torch.no_grad():
        images = ensemble.image_trunk(torch.randn(n, 3, 32, 32))
        image_projection = projection(ensemble.members[0].image_head)
        pooled = []
        hook = image_projection.register_forward_pre_hook(lambda module, inputs: pooled.append(inputs[0]))
        ensemble.members[0].encode_image(images)
        hook.remove()
    width = projection(ensemble.members[0].text_head).in_features
    texts = pooled[0].numpy() @ rng.normal(size=(pooled[0].shape[1], width)) + 0.1 * rng.normal(size=(n, width))
    return FeatureCache(np.arange(n), [images.numpy().astype(np.float16)], {"pooled": texts.astype(np.float16)},
                        np.arange(n), np.arange(n))


def _training_pair_recall(ensemble: Ensemble, cache: FeatureCache) -> float:
    member = ensemble.members[0]
    with torch.no_grad():
        images = member.encode_image(cache.image_batch(np.arange(len(cache)), np.zeros(len(cache), int), "cpu"))
        texts = member.encode_text(cache.text_batch(np.arange(len(cache)), "cpu"))
    return _recall_at_1(texts.numpy(), images.numpy())


def test_the_cca_start_sets_both_projections_so_training_pairs_match_and_leaves_the_rest():
    ensemble = _tiny_ensemble(trainable_image=1, trainable_text=0)
    cache = _paired_cache(ensemble)
    member = ensemble.members[0]
    before = {name: value.clone() for name, value in member.state_dict().items()}
    start = _training_pair_recall(ensemble, cache)
    cca_start(member, cache, np.arange(len(cache)), "cpu")
    changed = {name for name, value in member.state_dict().items() if not torch.equal(value, before[name])}
    assert changed == {"image_head.head.projection.proj.weight", "text_head.projection.weight"}
    assert _training_pair_recall(ensemble, cache) > max(0.5, 5 * start)
    assert member.training is False  # as it was: an ensemble encodes in eval mode until a trainer asks


def test_a_joint_space_wider_than_the_fit_keeps_small_random_dimensions():
    ensemble = _tiny_ensemble(embed_dim=96, trainable_image=1, trainable_text=0)
    cache = _paired_cache(ensemble)
    member = ensemble.members[0]
    image, text = projection(member.image_head), projection(member.text_head)
    fitted = min(image.in_features, text.in_features)
    assert fitted < 96  # the tiny towers' features are narrower than this joint space
    cca_start(member, cache, np.arange(len(cache)), "cpu")
    texts = torch.from_numpy(cache.texts["pooled"]).float()
    out = texts @ text.weight.T
    assert (text.weight[fitted:].norm(dim=1) > 0).all() and (image.weight[fitted:].norm(dim=1) > 0).all()
    assert 0 < out[:, fitted:].std() < 0.05 * out[:, :fitted].std()  # neither at zero nor swamping the fit


def test_a_head_without_one_bias_free_projection_is_refused_by_name():
    with pytest.raises(EnclipError, match="--projection-init random"):
        projection(torch.nn.Sequential(torch.nn.Linear(4, 4)))


def test_training_with_the_cca_start_fits_before_the_first_step_and_not_again_on_resume(tmp_path, catalogue,
                                                                                    monkeypatch):
    seen = []
    real_start, real_step = trainer.cca_start, trainer._step
    monkeypatch.setattr(trainer, "cca_start", lambda *args: (seen.append("cca"), real_start(*args))[1])
    monkeypatch.setattr(trainer, "_step", lambda *args: (seen.append("step"), real_step(*args))[1])
    out = train_system(catalogue, tmp_path / "m", tiny_run_cfg(epochs=1))  # the default start
    assert seen[0] == "cca" and seen.count("cca") == 1 and "step" in seen
    seen.clear()
    train_system(catalogue, out, tiny_run_cfg(epochs=1), resume=True)
    assert "cca" not in seen


def test_the_random_start_never_fits(tmp_path, catalogue, monkeypatch):
    monkeypatch.setattr(trainer, "cca_start", lambda *args: pytest.fail("the CCA start ran"))
    train_system(catalogue, tmp_path / "m", tiny_run_cfg(epochs=1, projection_init="random"))


def test_an_unknown_projection_start_is_refused_before_anything_is_written(tmp_path, catalogue):
    with pytest.raises(EnclipError, match="unknown projection start 'pca'; choose one of random, cca"):
        train_system(catalogue, tmp_path / "m", tiny_run_cfg(projection_init="pca"))
    assert not (tmp_path / "m").exists()


def test_the_cli_flag_sets_the_start_and_offers_only_known_ones(capsys):
    from enclip.cli import build_parser, run_cfg

    parser = build_parser()
    assert run_cfg(parser.parse_args(["train", "--out", "m"])).train.projection_init == "cca"
    assert run_cfg(parser.parse_args(["train", "--out", "m", "--projection-init", "random"])).train.projection_init \
        == "random"
    with pytest.raises(SystemExit):
        parser.parse_args(["train", "--out", "m", "--projection-init", "pca"])
    assert "invalid choice: 'pca'" in capsys.readouterr().err


def test_a_fit_over_more_pairs_than_the_cap_reads_a_sample_of_them(monkeypatch):
    from enclip.train import alignment

    ensemble = _tiny_ensemble(trainable_image=1, trainable_text=0)
    cache = _paired_cache(ensemble)
    read = []
    real = alignment.projection_inputs

    def spy(member, train, rows, device):
        read.append(rows)
        return real(member, train, rows, device)

    monkeypatch.setattr(alignment, "projection_inputs", spy)
    monkeypatch.setattr(alignment, "MAX_PAIRS", 50)
    cca_start(ensemble.members[0], cache, np.arange(len(cache)), "cpu")
    assert len(read[0]) == 50 and len(set(read[0].tolist())) == 50 and set(read[0].tolist()) <= set(range(120))
    assert list(read[0]) == sorted(read[0])
