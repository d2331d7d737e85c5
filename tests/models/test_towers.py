"""Cutting a tower into a frozen trunk and a trainable head changes nothing it computes.

Cached fine-tuning relies on ``head(trunk(x)) == tower(x)`` for every ``trainable`` setting, on the trunk being
truly frozen, and on a saved head reproducing its embeddings when loaded onto a freshly built trunk.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from PIL import Image

from enclip.errors import EnclipError
from enclip.models.ensemble import Ensemble, HeadCfg, load_model
from enclip.models.registry import BackboneCfg, create_backbone
from enclip.models.towers import ALL, SmallMapDepthwiseConv2d, clone_head, small_map_depthwise

TINY = BackboneCfg(name="tiny", embed_dim=16, image_size=32, context_length=16)
TEXTS = ["red cotton shirt", "navy blue slim fit jeans for men", "watch", "black leather belt"]
TRAINABLE = [0, 1, 2, ALL]


def photos(n: int = 4, seed: int = 0) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, (80, 60, 3), dtype=np.uint8)) for _ in range(n)]


def tiny_backbone():
    backbone = create_backbone(TINY)
    backbone.model.eval()
    return backbone


@pytest.fixture(scope="module")
def tiny():
    return tiny_backbone()


def run_split(split, inputs: torch.Tensor) -> torch.Tensor:
    features = split.trunk(inputs)
    return split.head(*features) if isinstance(features, tuple) else split.head(features)


def trimmed(ids: torch.Tensor, pad: int) -> torch.Tensor:
    used = (ids != pad).any(dim=0).nonzero()
    return ids[:, : int(used.max()) + 1]


@pytest.mark.parametrize("trainable", TRAINABLE)
@torch.no_grad()
def test_image_head_of_trunk_is_the_tower(tiny, trainable):
    pixels = torch.stack([tiny.preprocess(image) for image in photos()])
    split = tiny.split_image(trainable)
    torch.testing.assert_close(run_split(split, pixels), tiny.model.encode_image(pixels), atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("trainable", TRAINABLE)
@torch.no_grad()
def test_text_head_of_trunk_is_the_tower_whatever_the_padding(tiny, trainable):
    split = tiny.split_text(trainable)
    padded = tiny.tokenizer(TEXTS)
    assert padded.shape == (len(TEXTS), 16) and (padded[2] == tiny.pad_token_id).sum() > 8  # "watch" is mostly padding
    expected = tiny.model.encode_text(padded)
    torch.testing.assert_close(run_split(split, padded), expected, atol=1e-5, rtol=1e-4)
    # as the ensemble feeds it: padding columns trimmed to the longest text of the batch
    torch.testing.assert_close(run_split(split, trimmed(padded, tiny.pad_token_id)), expected, atol=1e-5, rtol=1e-4)
    for i, text in enumerate(TEXTS):  # each text alone, with no padding at all
        alone = trimmed(tiny.tokenizer([text]), tiny.pad_token_id)
        torch.testing.assert_close(run_split(split, alone)[0], expected[i], atol=1e-5, rtol=1e-4)


def test_trainable_beyond_the_tower_depth_is_an_error(tiny):
    image_blocks, text_layers = tiny.split_image(0).blocks, tiny.split_text(0).blocks
    assert (image_blocks, text_layers) == (5, 2)
    tiny.split_image(image_blocks), tiny.split_text(text_layers)  # the deepest valid settings work
    with pytest.raises(EnclipError, match="at most 5"):
        tiny.split_image(image_blocks + 1)
    with pytest.raises(EnclipError, match="at most 2"):
        tiny.split_text(text_layers + 1)
    with pytest.raises(EnclipError):
        Ensemble(tiny, HeadCfg(trainable_image=0, trainable_text=3))


def param_ids(module: torch.nn.Module) -> set[int]:
    return {id(p) for p in module.parameters()}


@pytest.mark.parametrize("trainable", TRAINABLE)
def test_trunk_and_head_partition_the_tower(tiny, trainable):
    """No parameter is both frozen and trained, and none is dropped from both."""
    pairs = ((tiny.split_image(trainable), tiny.model.visual), (tiny.split_text(trainable), tiny.model.text))
    for split, tower in pairs:
        trunk, head = param_ids(split.trunk), param_ids(split.head)
        assert head and not trunk & head
        assert trunk | head == param_ids(tower)
        assert (not trunk) == (trainable == ALL)


@pytest.mark.parametrize("trainable", TRAINABLE)
def test_ensemble_freezes_the_trunk_and_trains_the_heads(trainable):
    ensemble = Ensemble(tiny_backbone(), HeadCfg(trainable, trainable), members=2).train()
    for trunk in (ensemble.image_trunk, ensemble.text_trunk):
        assert not trunk.training and not any(p.requires_grad for p in trunk.parameters())
    for member in ensemble.members:
        for head in (member.image_head, member.text_head):
            assert head.training and any(p.requires_grad for p in head.parameters())
    first, second = ensemble.members  # members are independent copies, not shared modules
    assert not param_ids(first) & param_ids(second)


def perturbed_ensemble() -> Ensemble:
    ensemble = Ensemble(tiny_backbone(), HeadCfg(trainable_image=1, trainable_text=1), members=2).eval()
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():  # stands in for training: member 1 moves away from the shared initial heads
        for p in ensemble.members[1].parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=generator))
    return ensemble


def test_saved_member_reproduces_its_embeddings_in_a_fresh_ensemble(tmp_path):
    trained = perturbed_ensemble()
    trained.save_member(1, tmp_path / "member")
    images = photos()
    expected_images, expected_texts = trained.encode_images(images)[1], trained.encode_texts(TEXTS)[1]
    fresh = Ensemble(tiny_backbone(), HeadCfg(trainable_image=1, trainable_text=1), members=1).eval()
    assert not np.allclose(fresh.encode_texts(TEXTS)[0], expected_texts, atol=1e-3)
    fresh.load_member(0, tmp_path / "member")
    np.testing.assert_array_equal(fresh.encode_images(images)[0], expected_images)
    np.testing.assert_array_equal(fresh.encode_texts(TEXTS)[0], expected_texts)


def test_load_model_rebuilds_the_same_untrained_trunk_under_saved_heads(tmp_path):
    """The trunk is not saved with a model: the tiny backbone must rebuild it identically, whatever the RNG state."""
    trained = perturbed_ensemble()
    trained.save_member(1, tmp_path / "member")
    torch.manual_seed(12345)
    loaded, _ = load_model(tmp_path / "member")
    np.testing.assert_array_equal(loaded.encode_texts(TEXTS)[0], trained.encode_texts(TEXTS)[1])
    np.testing.assert_array_equal(loaded.encode_images(photos())[0], trained.encode_images(photos())[1])


def test_a_non_square_input_is_saved_with_the_model_and_rebuilt_on_load(tmp_path):
    torch.manual_seed(0)
    ensemble = Ensemble(create_backbone(TINY, image_width=24), HeadCfg(trainable_image=1, trainable_text=1)).eval()
    assert ensemble.backbone.preprocess_batch(photos(2)).shape == (2, 3, 32, 24)
    ensemble.save_member(0, tmp_path / "member")
    loaded, _ = load_model(tmp_path / "member")
    assert loaded.backbone.preprocess(photos(1)[0]).shape == (3, 32, 24)
    np.testing.assert_array_equal(loaded.encode_images(photos())[0], ensemble.encode_images(photos())[0])


@pytest.mark.parametrize("height, width, kernel, stride", [(3, 3, 5, 1), (6, 6, 5, 2), (6, 5, 5, 2), (3, 2, 3, 1),
                                                          (12, 12, 5, 1)])
def test_small_map_depthwise_computes_what_the_convolution_computes(height, width, kernel, stride):
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(8, 8, kernel, stride, kernel // 2, groups=8, bias=True)
    swapped = small_map_depthwise(torch.nn.Sequential(copy.deepcopy(conv)))
    assert type(swapped[0]) is SmallMapDepthwiseConv2d and list(swapped.state_dict()) == ["0.weight", "0.bias"]
    inputs = [torch.randn(4, 8, height, width).contiguous(memory_format=torch.channels_last).requires_grad_()
              for _ in range(2)]
    with torch.no_grad():
        inputs[1].copy_(inputs[0])
    expected, got = conv(inputs[0]), swapped(inputs[1])
    assert got.shape == expected.shape and got.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    upstream = torch.randn_like(expected)
    (expected * upstream).sum().backward()
    (got * upstream).sum().backward()
    torch.testing.assert_close(inputs[1].grad, inputs[0].grad, atol=1e-5, rtol=1e-5)
    for name in ("weight", "bias"):
        torch.testing.assert_close(getattr(swapped[0], name).grad, getattr(conv, name).grad, atol=1e-4, rtol=1e-5)


def test_member_heads_run_small_map_depthwise_and_keep_the_state_dict_keys(tiny):
    head = tiny.split_image(1).head
    cloned = clone_head(head)
    assert any(isinstance(m, SmallMapDepthwiseConv2d) for m in cloned.modules())
    assert not any(isinstance(m, SmallMapDepthwiseConv2d) for m in head.modules())  # the backbone's own is left
    assert list(cloned.state_dict()) == list(head.state_dict())


def test_a_new_ensemble_encodes_deterministically():
    torch.manual_seed(0)
    ensemble = Ensemble(create_backbone(TINY), HeadCfg(trainable_image=1, trainable_text=1))
    np.testing.assert_array_equal(ensemble.encode_texts(TEXTS), ensemble.encode_texts(TEXTS))


def test_text_encoding_in_length_sorted_chunks_keeps_the_input_order():
    torch.manual_seed(0)
    ensemble = Ensemble(create_backbone(TINY), HeadCfg(trainable_image=1, trainable_text=1), members=2)
    texts = TEXTS * 3 + ["a"]
    whole = ensemble.encode_texts(texts, chunk=len(texts))
    chunked = ensemble.encode_texts(texts, chunk=2)
    assert chunked.shape == (2, len(texts), TINY.embed_dim)
    np.testing.assert_allclose(chunked, whole, atol=1e-5)
    np.testing.assert_allclose(chunked[:, 1], ensemble.encode_texts([texts[1]])[:, 0], atol=1e-5)


def test_members_draw_their_own_projections_and_share_pretrained_blocks():
    torch.manual_seed(0)
    single = Ensemble(create_backbone(TINY), HeadCfg(trainable_image=1, trainable_text=1))
    torch.manual_seed(0)
    ensemble = Ensemble(create_backbone(TINY), HeadCfg(trainable_image=1, trainable_text=1), members=3)
    states = [member.state_dict() for member in ensemble.members]
    for name, tensor in states[0].items():
        torch.testing.assert_close(tensor, single.members[0].state_dict()[name])  # member 0 = the single model
        for other in states[1:]:
            if "projection" in name:
                assert not torch.equal(tensor, other[name]), name
            else:
                torch.testing.assert_close(tensor, other[name])


@torch.no_grad()
def test_folded_trunk_computes_what_the_trunk_does_without_its_batch_norms(tiny):
    from enclip.models.towers import fold_batch_norms

    trunk = copy.deepcopy(tiny.split_image(1).trunk).eval()
    generator = torch.Generator().manual_seed(0)
    for module in trunk.modules():  # statistics and affine maps like a pretrained net's, not the identity
        if isinstance(module, torch.nn.BatchNorm2d):
            for tensor, low, high in ((module.running_mean, -1, 1), (module.running_var, 0.5, 2),
                                      (module.weight, 0.5, 1.5), (module.bias, -0.5, 0.5)):
                tensor.copy_(low + (high - low) * torch.rand(tensor.shape, generator=generator))
    pixels = torch.stack([tiny.preprocess(image) for image in photos()])
    folded = fold_batch_norms(trunk, pixels[:1])
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in trunk.modules()) > 0, "the loaded trunk is left as is"
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    torch.testing.assert_close(folded(pixels), trunk(pixels), atol=1e-4, rtol=1e-4)


def test_a_norm_not_fed_by_a_convolution_is_not_folded():
    from enclip.models.towers import fold_batch_norms

    trunk = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU(), torch.nn.BatchNorm2d(4)).eval()
    assert fold_batch_norms(trunk, torch.zeros(1, 3, 8, 8)) is trunk


def test_the_ensemble_runs_a_folded_trunk_but_keeps_the_loaded_weights_fingerprint(tiny):
    ensemble = Ensemble(tiny_backbone(), HeadCfg(trainable_image=1, trainable_text=1, colour=False))
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in ensemble.image_trunk.modules())
    loaded = tiny_backbone().split_image(1).trunk.eval()
    pixels = ensemble.pixels(photos())
    torch.testing.assert_close(ensemble.image_trunk_outputs(pixels), loaded(pixels), atol=1e-4, rtol=1e-4)
    from enclip.models.ensemble import _digest

    assert ensemble.trunk_fingerprint() == _digest(loaded, ensemble.text_trunk)  # saved models stay loadable


def colour_ensemble(members: int = 1, trainable: int = 1) -> Ensemble:
    torch.manual_seed(0)
    return Ensemble(tiny_backbone(), HeadCfg(trainable_image=trainable, trainable_text=1, colour=True),
                    members=members).eval()


@pytest.mark.parametrize("trainable", [0, 1, 2, ALL])
def test_the_colour_branch_starts_as_the_plain_head_and_its_trunk_carries_the_thumbnail(trainable):
    from enclip.models.towers import COLOUR_GRID, without_colour

    torch.manual_seed(0)
    plain = Ensemble(tiny_backbone(), HeadCfg(trainable_image=trainable, trainable_text=1, colour=False)).eval()
    coloured = colour_ensemble(trainable=trainable)
    pixels = coloured.pixels(photos())
    features, plain_features = coloured.image_trunk_outputs(pixels), plain.image_trunk_outputs(pixels)
    torch.testing.assert_close(without_colour(features), plain_features)
    # the rest is the photo, average-pooled to the trunk's grid (a map) or to a flattened thumbnail (a vector)
    pool = torch.nn.functional.adaptive_avg_pool2d
    thumbnail = (pool(pixels, features.shape[-2:]) if features.dim() == 4 else pool(pixels, COLOUR_GRID).flatten(1))
    torch.testing.assert_close(features[:, plain_features.shape[1]:], thumbnail)
    # the colour MLP's last layer starts at zero: the same embeddings as the plain model until it trains
    np.testing.assert_allclose(coloured.encode_images(photos()), plain.encode_images(photos()), atol=1e-6)
    assert coloured.image_cache_key() != plain.image_cache_key()  # their cached trunk outputs differ


def test_the_colour_branch_reads_the_photo_colours():
    ensemble = colour_ensemble()
    with torch.no_grad():  # stands in for training: the colour MLP's output layer moves off zero
        ensemble.members[0].image_head.colour_adapter[-1].weight.normal_(generator=torch.Generator().manual_seed(0))
    red, blue = (Image.new("RGB", (60, 80), colour) for colour in ((200, 30, 30), (30, 30, 200)))
    same_red = Image.new("RGB", (60, 80), (200, 30, 30))
    embeddings = ensemble.encode_images([red, blue, same_red])[0]
    np.testing.assert_array_equal(embeddings[0], embeddings[2])
    assert not np.allclose(embeddings[0], embeddings[1], atol=1e-3)


def test_a_colour_member_is_saved_and_rebuilt_with_its_branch(tmp_path):
    trained = colour_ensemble(members=2)
    with torch.no_grad():
        for p in trained.members[1].parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=torch.Generator().manual_seed(1)))
    trained.save_member(1, tmp_path / "member")
    loaded, _ = load_model(tmp_path / "member")
    assert loaded.head_cfg.colour
    np.testing.assert_array_equal(loaded.encode_images(photos())[0], trained.encode_images(photos())[1])


def test_a_model_saved_before_the_colour_branch_loads_without_one(tmp_path):
    import json

    plain = Ensemble(tiny_backbone(), HeadCfg(trainable_image=1, trainable_text=1, colour=False)).eval()
    plain.save_member(0, tmp_path / "member")
    manifest = json.loads((tmp_path / "member" / "model.json").read_text())
    del manifest["heads"]["colour"]  # as written by earlier versions
    (tmp_path / "member" / "model.json").write_text(json.dumps(manifest))
    loaded, _ = load_model(tmp_path / "member")
    assert not loaded.head_cfg.colour
    np.testing.assert_array_equal(loaded.encode_images(photos())[0], plain.encode_images(photos())[0])


def test_colour_members_redraw_their_projections_and_share_the_colour_start():
    states = [member.state_dict() for member in colour_ensemble(members=2).members]
    projections = [name for name in states[0] if ".projection." in name]
    assert projections
    for name in projections:
        assert not torch.equal(states[0][name], states[1][name]), name
    torch.testing.assert_close(states[0]["image_head.colour_adapter.2.weight"],
                               states[1]["image_head.colour_adapter.2.weight"])


def test_a_colour_branch_on_a_trunk_output_of_another_shape_is_refused_with_the_fix():
    from enclip.models.towers import TowerSplit, with_colour

    tokens = TowerSplit(torch.nn.Flatten(2), torch.nn.Identity(), 1)  # (N, C, H*W): token-like, neither map nor vector
    with pytest.raises(EnclipError, match="feature map or a pooled vector.*--no-colour-branch"):
        with_colour(tokens, torch.zeros(1, 3, 8, 8))


@pytest.mark.parametrize("trainable_text", [0, 1])
def test_a_text_adapter_starts_as_the_plain_head_and_is_saved_and_rebuilt(tmp_path, trainable_text):
    backbone = tiny_backbone()
    plain = Ensemble(backbone, HeadCfg(trainable_image=0, trainable_text=trainable_text, colour=False)).eval()
    adapted = Ensemble(backbone, HeadCfg(trainable_image=0, trainable_text=trainable_text, colour=False,
                                         text_adapter=8)).eval()
    # the MLP's last layer starts at zero: the same text embeddings until it trains; photos are untouched
    np.testing.assert_allclose(adapted.encode_texts(TEXTS), plain.encode_texts(TEXTS), atol=1e-6)
    adapter = adapted.members[0].text_head.text_adapter
    assert [tuple(p.shape) for p in adapter.parameters()] == [(8, 16), (8,), (16, 8), (16,)]
    with torch.no_grad():  # stands in for training: the output layer moves off zero
        adapter[-1].weight.normal_(generator=torch.Generator().manual_seed(0))
    moved = adapted.encode_texts(TEXTS)
    assert not np.allclose(moved, plain.encode_texts(TEXTS), atol=1e-3)
    np.testing.assert_allclose(np.linalg.norm(moved, axis=-1), 1.0, atol=1e-5)
    adapted.save_member(0, tmp_path / "member")
    loaded, _ = load_model(tmp_path / "member")
    assert loaded.head_cfg.text_adapter == 8
    np.testing.assert_array_equal(loaded.encode_texts(TEXTS), moved)


def test_a_text_adapter_trains_at_the_new_layers_rate_and_a_negative_width_is_refused():
    from enclip.train.trainer import TrainCfg, _param_groups

    member = Ensemble(tiny_backbone(), HeadCfg(trainable_image=0, trainable_text=0, colour=False,
                                               text_adapter=8)).members[0]
    new_layers = {id(p) for p in _param_groups(member, TrainCfg())[0]["params"]}
    adapter = member.text_head.text_adapter
    assert {id(adapter[0].weight), id(adapter[2].weight)} <= new_layers
    with pytest.raises(EnclipError, match="--text-adapter takes 0"):
        HeadCfg(text_adapter=-1)


def test_a_token_bag_starts_as_the_plain_head_tells_captions_apart_by_their_words_and_is_saved(tmp_path):
    backbone = tiny_backbone()
    plain = Ensemble(backbone, HeadCfg(trainable_image=0, trainable_text=0, colour=False)).eval()
    bagged = Ensemble(backbone, HeadCfg(trainable_image=0, trainable_text=0, colour=False, token_bag=4)).eval()
    # the map into the joint space starts at zero: the same text embeddings until it trains
    np.testing.assert_allclose(bagged.encode_texts(TEXTS), plain.encode_texts(TEXTS), atol=1e-6)
    head = bagged.members[0].text_head
    assert head.token_bag.weight.shape == (len(backbone.tokenizer.tokenizer), 4)
    with torch.no_grad():  # stands in for training: the map moves off zero
        head.token_adapter.weight.normal_(generator=torch.Generator().manual_seed(0))
    moved = bagged.encode_texts(TEXTS)
    assert not np.allclose(moved, plain.encode_texts(TEXTS), atol=1e-3)
    # the bag is the mean vector of the caption's own word pieces, framing tokens left out
    ids = [i for i in backbone.tokenizer(["watch"])[0].tolist() if i not in backbone.tokenizer([""])[0].tolist()]
    features = bagged.text_features(["watch"])
    expected = head.head(features[:, : -2 * head.length]) + head.token_adapter(head.token_bag.weight[ids].mean(0))
    torch.testing.assert_close(head(features), expected)
    bagged.save_member(0, tmp_path / "member")
    loaded, _ = load_model(tmp_path / "member")
    assert loaded.head_cfg.token_bag == 4
    np.testing.assert_array_equal(loaded.encode_texts(TEXTS), moved)


def test_token_ids_survive_a_float16_cache_and_a_padded_batch():
    from enclip.models.towers import TokenBagTrunk

    trunk = TokenBagTrunk(lambda ids: torch.zeros(len(ids), 3), length=6, pad_id=0, ignore_ids=[101, 102])
    ids = torch.tensor([[101, 30521, 2048, 2049, 102], [101, 7, 102, 0, 0]])
    out = trunk(ids).half().float()  # as a cached row reads back
    digits = out[:, 3:]
    decoded = (digits[:, :6] * 256 + digits[:, 6:]).long()
    assert decoded.tolist() == [[0, 30521, 2048, 2049, 0, 0], [0, 7, 0, 0, 0, 0]]


def test_a_token_bag_trains_at_the_new_layers_rate_and_needs_a_pooled_text_trunk():
    from enclip.train.trainer import TrainCfg, _param_groups

    member = Ensemble(tiny_backbone(), HeadCfg(trainable_image=0, trainable_text=0, colour=False,
                                               token_bag=4)).members[0]
    new_layers = {id(p) for p in _param_groups(member, TrainCfg())[0]["params"]}
    head = member.text_head
    assert {id(head.token_bag.weight), id(head.token_adapter.weight)} <= new_layers
    with pytest.raises(EnclipError, match="pooled vectors.*--trainable-text 0"):
        Ensemble(tiny_backbone(), HeadCfg(trainable_image=0, trainable_text=1, colour=False, token_bag=4))
    with pytest.raises(EnclipError, match="--token-bag takes 0"):
        HeadCfg(token_bag=-1)
