"""Auxiliary attribute losses: labels per column, prototypes that classify, exact resume with them on."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from enclip.models.ensemble import load_model
from enclip.train import objective, trainer
from enclip.train.features import FeatureCache
from enclip.train.run import train_system
from tests.conftest import tiny_run_cfg

AUX = dict(aux_columns=("gender", "usage", "colour_that_is_absent", "season"), aux_weight=1.0)


def _cache(labels: dict[str, list[str]]) -> FeatureCache:
    n = len(next(iter(labels.values())))
    return FeatureCache(np.arange(n), [], {}, np.arange(n), np.arange(n),
                        {name: np.asarray(values) for name, values in labels.items()})


def test_labels_skip_missing_values_absent_columns_and_single_valued_columns():
    cache = _cache({"gender": ["Men", "Women", "Men", ""], "usage": ["Casual", "NA", "Formal", "Casual"],
                    "season": ["Summer"] * 4})
    labels = objective.encode_labels(cache, ("gender", "usage", "nope", "season"))
    assert set(labels) == {"gender", "usage"}  # "nope" is absent, season has one value: nothing to learn
    assert labels["gender"][0] == ["Men", "Women"] and labels["gender"][1].tolist() == [0, 1, 0, -1]
    assert labels["usage"][0] == ["Casual", "Formal"] and labels["usage"][1].tolist() == [0, -1, 1, 0]


def test_attribute_loss_is_low_only_when_both_embeddings_point_at_the_item_class():
    heads = objective.AttributeHeads(2, {"gender": 2}, seed=0)
    with torch.no_grad():
        heads.prototypes["gender"].copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
    right = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    labels = {"gender": torch.tensor([0, 1])}
    good = heads.loss(right, right, labels)
    assert heads.loss(right.flip(0), right, labels) > good + 1  # the image embedding says the wrong class
    assert heads.loss(right, right.flip(0), labels) > good + 1  # the text embedding does
    assert heads.loss(right.flip(0), right.flip(0), {"gender": torch.tensor([-1, -1])}) == 0  # unknown: no loss


def _name_heads(values: list[str], **train):
    from enclip.models.ensemble import Ensemble, HeadCfg
    from enclip.models.registry import BackboneCfg, create_backbone

    ensemble = Ensemble(create_backbone(BackboneCfg(name="tiny", embed_dim=16, image_size=32,
                                                           context_length=16)), HeadCfg(1, 1))
    member = ensemble.members[0]
    cache = _cache({"colour": values})
    cache.texts, cache.first_caption = _text_cache(ensemble, ["a"] * len(values)), np.arange(len(values))
    _, heads, labels = trainer.member_objective(ensemble, member, cache, trainer.TrainCfg(
        aux_columns=("colour",), aux_prototypes="names", **train), seed=0)
    return ensemble, member, heads, labels


def test_name_prototypes_are_the_members_text_embeddings_of_the_class_values():
    ensemble, member, heads, labels = _name_heads(["Navy Blue", "Red", "Red"])
    assert list(heads.parameters()) == []  # nothing free: the class vectors are the text head's
    vectors = heads.class_vectors("colour", member=member)
    assert torch.allclose(vectors, torch.from_numpy(ensemble.encode_texts(["Navy Blue", "Red"])[0]), atol=1e-5)
    assert labels["colour"].tolist() == [0, 1, 1]
    image = vectors[[0, 1, 1]].detach()  # photos that show their own class
    heads.loss(image, image, labels, member).backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in member.text_head.parameters())  # it learns


def test_name_prototypes_contrast_the_classes_present_in_the_batch():
    ensemble, member, heads, labels = _name_heads(["Navy Blue", "Red", "Dark Olive Green", "White"])
    torch.manual_seed(0)
    image, text = (torch.nn.functional.normalize(torch.randn(3, 16), dim=-1) for _ in range(2))
    batch = {"colour": labels["colour"][[3, 0, 3]]}  # White, Navy Blue, White: two of the four classes
    with torch.no_grad():
        present = heads.class_vectors("colour", member=member)[[1, 3]]  # classes sort: Dark Olive Green, Navy..., White
        target = torch.tensor([1, 0, 1])
        expected = 0.5 * sum(torch.nn.functional.cross_entropy(heads.scale * e @ present.T, target)
                             for e in (image, text))
        assert torch.allclose(heads.loss(image, text, batch, member), expected, atol=1e-5)


def test_ranking_photos_by_class_rewards_a_class_whose_own_photos_score_highest():
    target = torch.tensor([0, 0, 1, 1])  # two photos of each class
    right = torch.tensor([[5.0, 0.0], [5.0, 0.0], [0.0, 5.0], [0.0, 5.0]])  # each class scores its own photos
    best = objective.photos_ranked_by_class(right, target)
    assert best == pytest.approx(float(np.log(2)), abs=0.02)  # the mass is split evenly over the two own photos
    assert objective.photos_ranked_by_class(right.flip(0), target) > best + 4  # each class prefers the other's
    missed = right.clone()
    missed[3, 1] = -5.0  # class 1 no longer finds its photo 3
    assert objective.photos_ranked_by_class(missed, target) > best + 1


def test_ranking_photos_by_class_sees_what_classifying_each_photo_does_not():
    """Each photo can be classified right while a class ranks another class's photo above its own: only the
    photo-ranking direction is penalised for it."""
    prototypes = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    plain, ranked = (objective.AttributeHeads(3, {"gender": 2}, seed=0, rank_photos=r) for r in (0.0, 0.5))
    for h in (plain, ranked):
        with torch.no_grad():
            h.prototypes["gender"].copy_(prototypes)
    image = torch.tensor([[0.5, 0.1, 0.86], [0.6, 0.8, 0.0]])  # unit rows: photo 0 is class 0, photo 1 class 1
    labels = {"gender": torch.tensor([0, 1])}
    scores = image @ prototypes.T
    assert scores.argmax(1).tolist() == [0, 1]  # both photos are classified right
    assert scores[1, 0] > scores[0, 0]  # yet class 0 ranks photo 1 above its own photo 0
    extra = ranked.loss(image, image, labels) - plain.loss(image, image, labels)
    assert torch.allclose(extra, 0.5 * objective.photos_ranked_by_class(plain.scale * scores, labels["gender"]))
    grads = []
    for h in (plain, ranked):
        photos = image.clone().requires_grad_(True)
        h.loss(photos, image, labels).backward()
        grads.append(photos.grad)
    assert grads[1][1, 0] > grads[0][1, 0] > 0  # the ranked loss lowers photo 1's class-0 score harder


def test_the_flag_reaches_the_attribute_heads():
    from enclip.cli import build_parser, run_cfg

    def weight(*flags):
        return run_cfg(build_parser().parse_args(["train", "--out", "x", *flags])).train.aux_rank_photos

    assert (weight(), weight("--aux-rank-photos"), weight("--aux-rank-photos", "0.25")) == (0.0, 0.5, 0.25)
    cfg = run_cfg(build_parser().parse_args(["train", "--out", "x", "--aux-rank-photos"])).train
    _, member, heads, labels = _name_heads(["Navy Blue", "Red", "Red"], aux_rank_photos=cfg.aux_rank_photos)
    assert heads.rank_photos
    image = heads.class_vectors("colour", member=member)[[1, 0, 0]].detach()  # every photo shows the wrong class
    plain = _name_heads(["Navy Blue", "Red", "Red"])[2]
    assert heads.loss(image, image, labels, member) > plain.loss(image, image, labels, member)


def _text_cache(ensemble, texts):
    output = ensemble.text_features(texts)
    if isinstance(output, tuple):
        return {"hidden": output[0].numpy(), "mask": output[1].numpy()}
    return {"pooled": output.numpy()}


@pytest.mark.slow  # a resume- or kill-equivalence run: the slow set
@pytest.mark.parametrize("prototypes", objective.PROTOTYPES)
def test_training_with_auxiliary_losses_resumes_to_the_same_weights(tmp_path, catalogue, monkeypatch, prototypes):
    cfg = tiny_run_cfg(epochs=3, patience=5, aux_prototypes=prototypes, **AUX)
    reference = load_model(train_system(catalogue, tmp_path / "straight", cfg))[0].members[0].state_dict()
    checkpoint = torch.load(tmp_path / "straight/members/0/checkpoint.pt", weights_only=False)
    free = {"prototypes.gender", "prototypes.usage"}  # season is single-valued here
    assert set(checkpoint["aux"]) == (free if prototypes == "learned" else set())  # names: the text head's own

    real, calls = trainer.validation_recall, {"n": 0}

    def crash_on_second(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(trainer, "validation_recall", crash_on_second)
    try:
        train_system(catalogue, tmp_path / "resumed", cfg)
    except KeyboardInterrupt:
        pass
    monkeypatch.setattr(trainer, "validation_recall", real)
    resumed = load_model(train_system(catalogue, tmp_path / "resumed", cfg, resume=True))[0].members[0].state_dict()
    for key in reference:
        assert torch.equal(reference[key], resumed[key]), key


def test_unknown_prototypes_are_refused_with_the_choices():
    from enclip.errors import EnclipError

    with pytest.raises(EnclipError, match="learned, names"):
        trainer.member_objective(None, None, _cache({"gender": ["Men", "Women"]}),
                                 trainer.TrainCfg(aux_prototypes="nope"), seed=0)


def test_a_negative_photo_ranking_weight_is_refused():
    from enclip.errors import EnclipError

    with pytest.raises(EnclipError, match="aux-rank-photos is a weight of 0"):
        _name_heads(["Navy Blue", "Red"], aux_rank_photos=-0.5)
