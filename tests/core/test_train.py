"""Fine-tuning: strategies, resume equivalence, saved artefacts."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from enclip.artifacts import read_json
from enclip.errors import EnclipError
from enclip.models.ensemble import HeadCfg, Member, load_model
from enclip.train import objective, trainer
from enclip.train.run import train_system
from tests.conftest import tiny_run_cfg


def _heads(model_dir):
    ensemble, _ = load_model(model_dir)
    return [{k: v.clone() for k, v in m.state_dict().items()} for m in ensemble.members]


def interrupted_then_resumed(catalogue, cfg, out, monkeypatch, at_validation: int):
    """Train into ``out``, interrupted (Ctrl-C) at the ``at_validation``-th epoch's validation, then resume it."""
    real, calls = trainer.validation_recall, {"n": 0}

    def crash(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == at_validation:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(trainer, "validation_recall", crash)
    with pytest.raises(KeyboardInterrupt):
        train_system(catalogue, out, cfg)
    monkeypatch.setattr(trainer, "validation_recall", real)
    return train_system(catalogue, out, cfg, resume=True)


def test_contrastive_loss_does_not_penalise_confusing_items_with_the_same_title():
    unit = lambda rows: torch.nn.functional.normalize(torch.tensor(rows), dim=1)  # noqa: E731
    text = unit([[1.0, 0.2, 0.0], [1.0, 0.0, 0.2], [0.0, 1.0, 0.0]])
    image = unit([[1.0, 0.2, 0.0], [1.0, 0.0, 0.2], [0.0, 1.0, 0.0]])
    swapped = image[[1, 0, 2]]  # the photos of items 0 and 1 exchanged
    scale = torch.tensor(np.log(50.0))

    def loss(images, groups):
        return objective.contrastive_loss(images, text, scale, torch.tensor(groups)).item()

    assert loss(swapped, [0, 0, 1]) == pytest.approx(loss(image, [0, 0, 1]))  # same title: either photo is right
    assert loss(swapped, [0, 1, 2]) > loss(image, [0, 1, 2]) + 0.1  # different titles: the swap is an error
    assert objective.title_groups(["Red Shirt", "red  shirt", "Blue Shirt"]).tolist() == [0, 0, 1]


def test_sigmoid_pair_loss_scores_each_pair_as_a_match_by_title_group():
    unit = lambda rows: torch.nn.functional.normalize(torch.tensor(rows), dim=1)  # noqa: E731
    text = unit([[1.0, 0.2, 0.0], [1.0, 0.0, 0.2], [0.0, 1.0, 0.0]])
    image, scale = text.clone(), torch.tensor(np.log(10.0))
    pair = objective.PairLoss("sigmoid", bias=-2.0)
    groups = torch.tensor([0, 0, 1])
    logits = 10.0 * image @ text.T - 2.0
    signs = torch.tensor([[1.0, 1.0, -1.0], [1.0, 1.0, -1.0], [-1.0, -1.0, 1.0]])  # same title group: a match
    expected = -torch.nn.functional.logsigmoid(signs * logits).sum() / 3
    assert pair(image, text, scale, groups).item() == pytest.approx(expected.item(), rel=1e-6)
    assert pair(image[[1, 0, 2]], text, scale, groups).item() == pytest.approx(expected.item(), rel=1e-6)
    assert pair(image[[2, 1, 0]], text, scale, groups).item() > expected.item() + 1.0  # a mismatch costs
    softmax = objective.PairLoss("softmax")
    assert list(softmax.parameters()) == [] and list(pair.parameters()) == [pair.bias]  # only sigmoid has a bias
    assert softmax(image, text, scale, groups).item() == objective.contrastive_loss(image, text, scale, groups).item()
    with pytest.raises(EnclipError, match="softmax, sigmoid"):
        objective.PairLoss("hinge")


def test_training_with_the_sigmoid_loss_learns_its_bias_and_checkpoints_it(tmp_path, catalogue):
    out = train_system(catalogue, tmp_path / "m", tiny_run_cfg(epochs=2, lr=5e-3, patience=5, loss="sigmoid"))
    checkpoint = torch.load(out / "members/0/checkpoint.pt", weights_only=False)
    losses = [h["loss"] for h in checkpoint["state"]["history"]]
    assert losses[-1] < losses[0]
    assert set(checkpoint["pair"]) == {"bias"} and checkpoint["pair"]["bias"].item() != -10.0
    ensemble, _ = load_model(out)
    assert not any("bias" == name for name, _ in ensemble.members[0].named_parameters())  # not part of the model


def test_an_objective_reads_checkpoints_written_before_the_pair_loss_had_a_part():
    softmax = objective.Objective(objective.PairLoss("softmax"), None, {})
    softmax.load_state_dict({"aux": None})  # what a checkpoint held before: no "pair" entry
    sigmoid = objective.Objective(objective.PairLoss("sigmoid"), None, {})
    saved = sigmoid.state_dict()
    saved["pair"]["bias"] = torch.tensor(-3.0)
    sigmoid.load_state_dict(saved)
    assert sigmoid.pair.bias.item() == -3.0 and softmax.parameters() == []


def test_a_starting_temperature_sets_the_members_scale_before_its_first_step(tmp_path, catalogue, monkeypatch):
    seen = []
    real = trainer._step

    def spy(heads, *args, **kwargs):
        seen.append(float(heads.logit_scale.detach().exp()))
        return real(heads, *args, **kwargs)

    monkeypatch.setattr(trainer, "_step", spy)
    train_system(catalogue, tmp_path / "m", tiny_run_cfg(epochs=1, temperature=0.02))
    assert seen[0] == pytest.approx(50.0, rel=1e-5) and seen[-1] != seen[0]  # a start, then learned


@pytest.mark.parametrize(("setting", "message"), [({"loss": "hinge"}, "unknown --loss 'hinge'; choose one of softmax"),
                                                  ({"temperature": 0.0}, "--temperature is above 0")])
def test_bad_loss_settings_are_refused_before_anything_is_written(tmp_path, catalogue, setting, message):
    with pytest.raises(EnclipError, match=message):
        train_system(catalogue, tmp_path / "m", tiny_run_cfg(**setting))
    assert not (tmp_path / "m").exists()


def test_training_writes_a_loadable_model_that_beats_its_start(tmp_path, catalogue):
    out = train_system(catalogue, tmp_path / "m", tiny_run_cfg(epochs=3, lr=5e-3, patience=5))
    ensemble, info = load_model(out)
    assert info.strategy == "seeds" and len(ensemble) == 1
    state = torch.load(out / "members/0/checkpoint.pt", weights_only=False)["state"]
    recalls = [h["val_R@10"] for h in state["history"]]
    losses = [h["loss"] for h in state["history"]]
    assert len(recalls) == 3 and losses[-1] < losses[0]
    manifest = json.loads((out / "ensemble.json").read_text())
    epochs = sum(h["seconds"] for h in state["history"])
    assert manifest["member_train_seconds"] == [pytest.approx(epochs, abs=0.1)] and epochs > 0
    assert not (out / "cache").exists(), "the feature cache is removed after a finished run"


@pytest.mark.slow
def test_interrupted_training_resumes_to_the_same_weights(tmp_path, catalogue, monkeypatch):
    cfg = tiny_run_cfg(members=2, strategy="bagging", epochs=3, patience=5)
    reference = _heads(train_system(catalogue, tmp_path / "straight", cfg))

    # member 1, epoch 1: member 0 is finished, member 1 mid-way
    resumed = _heads(interrupted_then_resumed(catalogue, cfg, tmp_path / "resumed", monkeypatch, at_validation=4))
    for ref, got in zip(reference, resumed):
        assert ref.keys() == got.keys()
        for key in ref:
            assert torch.equal(ref[key], got[key]), key


@pytest.mark.parametrize("strategy", ["seeds", "bagging", "cluster"])
def test_each_strategy_trains_members_on_its_own_items(tmp_path, catalogue, strategy):
    # the tiny untrained net's pooled features at the last stage's input separate the synthetic photos into clusters
    heads = HeadCfg(trainable_image=1, trainable_text=1)
    out = train_system(catalogue, tmp_path / strategy, tiny_run_cfg(members=2, strategy=strategy, epochs=1,
                                                                    heads=heads))
    items = [read_json(out / "members" / str(i) / "model.json")["member_items"] for i in range(2)]
    train_items = len(catalogue) - sum(1 for i in catalogue.ids if int(i) % 10 in (0, 1))
    if strategy == "seeds":
        assert items == [train_items, train_items]
    if strategy == "cluster":
        assert (out / "clusters" / "contact_sheets.png").exists()
        assert all(n < train_items for n in items)


def test_a_finished_run_is_not_overwritten_without_resume(tmp_path, catalogue):
    train_system(catalogue, tmp_path / "m", tiny_run_cfg(epochs=1))
    with pytest.raises(EnclipError, match="--resume"):
        train_system(catalogue, tmp_path / "m", tiny_run_cfg(epochs=1), resume=False)


def test_bad_strategy_and_fraction_are_clear_errors(tmp_path, catalogue):
    with pytest.raises(EnclipError, match="strategy"):
        train_system(catalogue, tmp_path / "a", tiny_run_cfg(strategy="boosting"))
    cfg = tiny_run_cfg()
    cfg.ensemble.data_fraction = 0
    with pytest.raises(EnclipError, match="fraction"):
        train_system(catalogue, tmp_path / "b", cfg)


def test_bagging_gives_each_member_its_own_bootstrap_resample(tmp_path):
    from enclip.train.run import EnsembleCfg, member_runs

    rows = np.arange(1000)
    runs = member_runs(EnsembleCfg(members=3, strategy="bagging"), rows, tmp_path, seed=0, clustering=None)
    samples = [run.rows for run in runs]
    for sample in samples:
        assert len(sample) == len(rows) and set(sample.tolist()) <= set(rows.tolist())
        assert 0.55 < len(np.unique(sample)) / len(rows) < 0.70  # a bootstrap keeps about 1 - 1/e of the items
    assert not np.array_equal(samples[0], samples[1]) and not np.array_equal(samples[1], samples[2])
    again = member_runs(EnsembleCfg(members=3, strategy="bagging"), rows, tmp_path, seed=0, clustering=None)
    assert all(np.array_equal(a.rows, b.rows) for a, b in zip(runs, again))  # seeded: a resumed run redraws the same


def _image_head_at_start(cfg):
    from enclip.models.ensemble import Ensemble
    from enclip.models.registry import create_backbone

    return Ensemble(create_backbone(cfg.backbone), cfg.train.heads).members[0].image_head


def _frozen_parts(start, trained) -> dict[str, list[bool]]:
    """Which of the image head's depthwise filters, batch-norm statistics, batch-norm scales and other convolution
    weights are unchanged by training."""
    depthwise = trainer.depthwise_weights(trained)
    norms = [name for name, m in trained.named_modules() if isinstance(m, torch.nn.BatchNorm2d)]
    others = [name for name, w in trained.named_parameters() if w.ndim == 4 and not any(w is d for d in depthwise)]
    assert depthwise and norms and others, "the tiny EfficientNet's head has all three"
    return {
        "depthwise": [torch.equal(a, b) for a, b in zip(depthwise, trainer.depthwise_weights(start))],
        "norm statistics": [torch.equal(trained.get_submodule(n).running_mean, start.get_submodule(n).running_mean)
                            for n in norms],
        "norm scales": [torch.equal(trained.get_submodule(n).weight, start.get_submodule(n).weight) for n in norms],
        "other convolutions": [torch.equal(trained.get_parameter(n), start.get_parameter(n)) for n in others],
    }


def test_frozen_depthwise_and_frozen_norms_keep_what_they_name_and_train_the_rest(tmp_path, catalogue,
                                                                                  tiny_ensemble_dir, monkeypatch):
    cfg = tiny_run_cfg(epochs=1, lr=5e-3, frozen_depthwise=True, frozen_norms=True, cpu_amp=True)
    # the same tiny run, with --cpu-amp as on a CPU with bfloat16 tiles: training steps run the text head in
    # bfloat16 (captions and class names alike), validation does not
    monkeypatch.setattr(trainer, "cpu_has_bfloat16_tiles", lambda: True)
    asked = []
    real = Member.encode_text
    monkeypatch.setattr(Member, "encode_text", lambda self, features, bfloat16=False: (
        asked.append((self.training, bfloat16)), real(self, features, bfloat16))[1])
    trained = load_model(train_system(catalogue, tmp_path / "m", cfg))[0].members[0].image_head
    assert {bfloat16 for training, bfloat16 in asked if training} == {True}
    assert {bfloat16 for training, bfloat16 in asked if not training} == {False}
    kept = {part: set(flags) for part, flags in _frozen_parts(_image_head_at_start(cfg), trained).items()}
    assert kept == {"depthwise": {True}, "norm statistics": {True}, "norm scales": {False},
                    "other convolutions": {False}}
    default = load_model(tiny_ensemble_dir)[0].members[0].image_head  # trained with both off (the defaults)
    kept = {part: set(flags) for part, flags in _frozen_parts(_image_head_at_start(cfg), default).items()}
    assert kept == {"depthwise": {False}, "norm statistics": {False}, "norm scales": {False},
                    "other convolutions": {False}}


def test_a_bfloat16_text_head_gives_float32_embeddings_close_to_float32_and_float32_gradients():
    from enclip.models.ensemble import Ensemble
    from enclip.models.registry import BackboneCfg, create_backbone

    ensemble = Ensemble(create_backbone(BackboneCfg(name="tiny", embed_dim=16, image_size=32, context_length=16)),
                        HeadCfg(1, 1))
    member = ensemble.members[0].train()
    features = ensemble.text_features(["navy check shirt", "red dress for women", "black sports shoes"])
    exact = member.encode_text(features)
    half = member.encode_text(features, bfloat16=True)
    assert half.dtype == torch.float32 and torch.allclose(half.norm(dim=-1), torch.ones(3), atol=1e-5)
    assert not torch.equal(half, exact), "autocast ran the head in bfloat16"
    assert (half * exact).sum(dim=-1).min() > 0.99  # the same directions up to bfloat16 rounding
    half.sum().backward()
    grads = [p.grad for p in member.text_head.parameters() if p.grad is not None]
    assert grads and all(g.dtype == torch.float32 for g in grads)


def _normalised(head, features):
    return torch.nn.functional.normalize(head(features), dim=-1)


def test_training_steps_compile_the_image_head_when_asked_or_when_it_repays_the_compile(monkeypatch):
    head, features = torch.nn.Linear(4, 3), torch.randn(5, 4)
    compiled = []
    monkeypatch.setattr(torch, "compile", lambda module: compiled.append(module) or module)
    least = trainer.COMPILE_MIN_STEPS
    for mode, steps, compiles in (("off", 10 * least, False), ("auto", least - 1, False), ("auto", least, True),
                                  ("on", 1, True)):
        compiled.clear()
        encode = trainer.training_image_encoder(head, mode, steps)
        torch.testing.assert_close(encode(features), _normalised(head, features))
        assert compiled == ([head] if compiles else []), (mode, steps)
    with pytest.raises(EnclipError, match="compile mode 'sometimes'.*auto, on, off"):
        trainer.training_image_encoder(head, "sometimes", least)


def test_a_compiler_that_fails_is_logged_and_steps_run_eagerly_under_auto_but_raised_under_on(monkeypatch, caplog):
    head, features = torch.nn.Linear(4, 3), torch.randn(5, 4)
    attempts = []

    def no_toolchain(module):
        def call(inputs):
            attempts.append(inputs)
            raise RuntimeError("no C++ compiler found")
        return call

    monkeypatch.setattr(torch, "compile", no_toolchain)
    encode = trainer.training_image_encoder(head, "auto", trainer.COMPILE_MIN_STEPS)
    for _ in range(2):  # the second step goes straight to the eager head
        torch.testing.assert_close(encode(features), _normalised(head, features))
    assert len(attempts) == 1
    assert any("no C++ compiler found" in r.getMessage() and "eagerly" in r.getMessage() for r in caplog.records)
    with pytest.raises(RuntimeError, match="no C\\+\\+ compiler"):
        trainer.training_image_encoder(head, "on", 1)(features)


@pytest.mark.slow
def test_a_compiled_image_head_computes_the_eager_step_on_the_heads_own_weights():
    from PIL import Image

    from enclip.models.ensemble import Ensemble
    from enclip.models.registry import BackboneCfg, create_backbone

    ensemble = Ensemble(create_backbone(BackboneCfg(name="tiny", embed_dim=16, image_size=32)), HeadCfg())
    head = ensemble.members[0].image_head.train()
    rng = np.random.default_rng(0)
    photos = [Image.fromarray(rng.integers(0, 256, (80, 60, 3), dtype=np.uint8)) for _ in range(8)]
    with torch.no_grad():
        features = ensemble.image_trunk(ensemble.pixels(photos))
    upstream = torch.randn(8, 16, generator=torch.Generator().manual_seed(0))

    def step(encode):
        head.zero_grad()
        out = encode(features)
        (out * upstream).sum().backward()
        return out.detach(), {name: p.grad.clone() for name, p in head.named_parameters() if p.grad is not None}

    eager_out, eager_grads = step(trainer.training_image_encoder(head, "off", 1))
    compiled_out, compiled_grads = step(trainer.training_image_encoder(head, "on", 1))
    torch.testing.assert_close(compiled_out, eager_out, atol=1e-5, rtol=1e-4)
    assert compiled_grads.keys() == eager_grads.keys() and eager_grads  # the gradients land on the head's weights
    for name, grad in eager_grads.items():
        # fused kernels sum in another order: float rounding scales with the gradient's own size (up to 2.6e-5 on
        # gradients of 9 on an AVX-512 CPU), so the tolerance does too
        scale = max(1.0, grad.abs().max().item())
        torch.testing.assert_close(compiled_grads[name], grad, atol=1e-5 * scale, rtol=1e-4, msg=name)


def _training_views(catalogue, tmp_path, monkeypatch, **train) -> list[np.ndarray]:
    """The views each image batch of a tiny run asked for (training steps and validations alike)."""
    from enclip.train.features import FeatureCache

    real, seen = FeatureCache.image_batch, []

    def recording(self, rows, views, *args, **kwargs):
        seen.append(np.asarray(views).copy())
        return real(self, rows, views, *args, **kwargs)

    monkeypatch.setattr(FeatureCache, "image_batch", recording)
    train_system(catalogue, tmp_path, tiny_run_cfg(epochs=1, **train))
    return seen


@pytest.mark.parametrize("share", [None, 0.0, 1.0])
def test_the_degraded_share_sets_how_many_of_a_steps_photos_are_degraded(tmp_path, catalogue, monkeypatch, share):
    views = _training_views(catalogue, tmp_path / "m", monkeypatch, degraded_share=share)
    steps = [v for v in views if v.any()]  # validations embed clean photos (view 0) only
    if share is None:  # each cached view equally likely: every step mixes clean and degraded photos
        assert steps and all(0 < v.mean() < 1 for v in steps)
    elif share == 0:
        assert not steps
    else:
        assert steps and all((v == 1).all() for v in steps) and len(steps) == 4  # 64 items, batches of 16


@pytest.mark.parametrize("share, views", [(1.5, 1), (-0.1, 1), (0.5, 0)])
def test_a_degraded_share_out_of_range_or_without_views_is_refused(tmp_path, catalogue, share, views):
    with pytest.raises(EnclipError, match="--degraded-share is a share of the training photos"):
        train_system(catalogue, tmp_path / "m", tiny_run_cfg(degraded_share=share, views=views))
