"""A CLIP ensemble as enclip runs it: one frozen trunk per tower, shared by K trainable member heads.

A single fine-tuned model is the K=1 case. The trunk runs once per image or text whatever K is, so K members cost K
small heads, not K whole models. Each member is saved as a normal enclip model directory (``model.json`` +
``heads.pt``); an ensemble directory adds ``ensemble.json`` naming its members.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from enclip.artifacts import atomic_file, manifest, read_json, write_json
from enclip.errors import EnclipError
from enclip.models import towers
from enclip.models.registry import Backbone, BackboneCfg, create_backbone

log = logging.getLogger(__name__)

# Images per image-tower call when encoding many. Small calls keep the early stages' large activations in cache:
# on a quiet 2-core machine the trunk ran 591-634 images/s in calls of 24-32 against 347 in calls of 256, and trunk
# caching end to end 490 against 287 images/s (RESULTS.md, issue 14, seventh pass). Small calls lose when other
# processes share the cores (each call is another set of OpenMP barriers: RESULTS.md, issue 14, first pass).
TRUNK_CHUNK = 32
# Trunk outputs per image-head call at inference (validation, indexing from the trunk cache): the head ran 1,438
# images/s in calls of 128 against 822 in calls of 512 and 396 in calls of 1,024 (RESULTS.md, issue 14, seventh
# pass). Training steps keep their whole batch: batch norm takes its statistics over it.
HEAD_CHUNK = 128


@dataclass
class HeadCfg:
    # image tower blocks trained from the top (0 = projection only, -1 = all); two stages of EfficientNet-Lite0
    # learn far more per epoch than one (validation R@10 0.30 against 0.25 in 5 epochs: RESULTS.md, issue 14)
    trainable_image: int = 2
    # text tower layers trained from the top (0 = projection only, -1 = all). The whole text tower frozen: a trained
    # transformer layer was half of a CPU training step (1,044 against 542 ms, bench/step_cost.py), and in the same
    # 420 s the frozen tower's cheaper steps (448 against 333) won on validation: title R@10 0.3175 against 0.2855,
    # both2img 0.899 against 0.836 (RESULTS.md, issue 14, fifteenth pass)
    trainable_text: int = 0
    # a colour thumbnail of the photo beside the image trunk's output, read by a small MLP in the image head
    # (towers.ColourTrunk): with it and a block learning rate of 2e-3, validation R@10 0.317 against 0.288 in the same
    # 450 s (RESULTS.md, issue 14, ninth pass). Models saved without the field have no such branch
    colour: bool = True
    # hidden units of a residual MLP on each text embedding (towers.AdaptedHead; 0 = none): non-linear capacity for a
    # frozen or shallow text head at the cost of two small matrix products
    text_adapter: int = 0
    # rank of a learned vector per caption token added to each text embedding (towers.TokenBagHead; 0 = none), over a
    # frozen text tower's pooled output
    token_bag: int = 0

    def __post_init__(self):
        if self.text_adapter < 0:
            raise EnclipError(f"--text-adapter takes 0 (none) or a number of hidden units, got {self.text_adapter}")
        if self.token_bag < 0:
            raise EnclipError(f"--token-bag takes 0 (none) or a rank, got {self.token_bag}")


class Member(nn.Module):
    """The trainable part of one CLIP model: an image head, a text head and a temperature."""

    def __init__(self, image_head: nn.Module, text_head: nn.Module, logit_scale: float = float(np.log(1 / 0.07))):
        super().__init__()
        self.image_head = image_head
        self.text_head = text_head
        self.logit_scale = nn.Parameter(torch.tensor(logit_scale))

    def encode_image(self, features) -> torch.Tensor:
        return F.normalize(self.image_head(features).float(), dim=-1)

    def encode_text(self, features, bfloat16: bool = False) -> torch.Tensor:
        """Normalised text embeddings; ``bfloat16`` runs the head's layers under bfloat16 autocast (training on a
        CPU with bfloat16 tiles, where they are twice as fast), and the normalisation stays in float32."""
        device = (features[0] if isinstance(features, tuple) else features).device.type
        with torch.autocast(device, dtype=torch.bfloat16, enabled=bfloat16):
            out = self.text_head(*features) if isinstance(features, tuple) else self.text_head(features)
        return F.normalize(out.float(), dim=-1)


class Ensemble(nn.Module):
    """Frozen trunks plus K members; ``encode_*`` return (K, B, d) normalised embeddings."""

    def __init__(self, backbone: Backbone, head_cfg: HeadCfg, members: int = 1):
        super().__init__()
        self.backbone = backbone
        self.head_cfg = head_cfg
        image_split = backbone.split_image(head_cfg.trainable_image)
        text_split = backbone.split_text(head_cfg.trainable_text)
        loaded = image_split.trunk.eval().requires_grad_(False)
        probe = backbone.preprocess(Image.fromarray(np.zeros((80, 60, 3), np.uint8)))[None]
        folded = towers.fold_batch_norms(loaded, probe)  # runs ~1.7x faster, same outputs up to rounding
        if head_cfg.colour:
            image_split = towers.with_colour(towers.TowerSplit(folded, image_split.head, image_split.blocks), probe)
            folded = image_split.trunk
        self.image_trunk = folded
        self._loaded_image_trunk = (loaded,)  # fingerprints hash the weights as loaded (a tuple: not a submodule)
        if head_cfg.token_bag:
            text_split = towers.with_token_bag(text_split, backbone.tokenizer, backbone.pad_token_id,
                                               head_cfg.token_bag)
        if head_cfg.text_adapter:
            text_split = towers.with_text_adapter(text_split, backbone.tokenizer(["a"]), head_cfg.text_adapter)
        self.text_trunk = text_split.trunk.eval().requires_grad_(False)
        base_scale = float(getattr(backbone.model, "logit_scale", torch.tensor(np.log(1 / 0.07))).detach())
        self.members = nn.ModuleList(
            Member(towers.clone_head(image_split.head), towers.clone_head(text_split.head), base_scale)
            for _ in range(members)
        )
        if backbone.new_projections:  # pretrained projections (a real CLIP's) are kept by every member
            for member in list(self.members)[1:]:
                _redraw_projections(member)
        self._trunk_fingerprint: str | None = None
        self.to(memory_format=torch.channels_last)
        self.eval()  # encoding is deterministic until a trainer asks for train mode

    def train(self, mode: bool = True) -> "Ensemble":
        """Only member heads ever train: the frozen trunks keep their batch-norm statistics and no dropout."""
        super().train(mode)
        self.image_trunk.eval()
        self.text_trunk.eval()
        return self

    @property
    def device(self) -> torch.device:
        return next(self.members.parameters()).device

    def __len__(self) -> int:
        return len(self.members)

    # -- trunks: run once, cacheable -------------------------------------------------------------------------
    def pixels(self, images: Sequence[Image.Image]) -> torch.Tensor:
        if self.backbone.preprocess_batch is not None:
            batch = self.backbone.preprocess_batch(images)
        else:
            batch = torch.stack([self.backbone.preprocess(image) for image in images])
        return batch.to(self.device).contiguous(memory_format=torch.channels_last)

    @torch.inference_mode()
    def image_trunk_outputs(self, pixels: torch.Tensor) -> torch.Tensor:
        """The image trunk over a large batch, TRUNK_CHUNK images per call (for caching and catalogue embedding)."""
        return torch.cat([self.image_trunk(chunk) for chunk in pixels.split(TRUNK_CHUNK)])

    @torch.inference_mode()
    def encode_pixels(self, pixels: torch.Tensor) -> torch.Tensor:
        """(K, B, d) member embeddings of a large pixel batch, trunk and heads TRUNK_CHUNK images at a time."""
        return torch.cat([self.encode_image_features(self.image_trunk(chunk))
                          for chunk in pixels.split(TRUNK_CHUNK)], dim=1)

    def tokens(self, texts: Sequence[str]) -> torch.Tensor:
        ids = self.backbone.tokenizer(list(texts))
        if self.backbone.trim_padding:
            used = (ids != self.backbone.pad_token_id).any(dim=0).nonzero()
            ids = ids[:, : int(used.max()) + 1] if len(used) else ids[:, :1]
        return ids.to(self.device)

    @torch.no_grad()
    def image_features(self, images: Sequence[Image.Image]):
        return self.image_trunk(self.pixels(images))

    @torch.no_grad()
    def text_features(self, texts: Sequence[str]):
        return self.text_trunk(self.tokens(texts))

    # -- members ---------------------------------------------------------------------------------------------
    @torch.no_grad()
    def encode_image_features(self, features) -> torch.Tensor:
        """(K, B, d) member embeddings of image-trunk outputs, HEAD_CHUNK at a time."""
        return torch.cat([torch.stack([member.encode_image(chunk) for member in self.members])
                          for chunk in features.split(HEAD_CHUNK)], dim=1)

    @torch.no_grad()
    def encode_text_features(self, features) -> torch.Tensor:
        return torch.stack([member.encode_text(features) for member in self.members])

    def encode_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        return self.encode_image_features(self.image_features(images)).cpu().numpy()

    def encode_texts(self, texts: Sequence[str], chunk: int = 64) -> np.ndarray:
        """(K, n, d) text embeddings. Texts are encoded shortest first in chunks, each padded only to its own
        longest text, so a batch of short queries does not pay for its one long title."""
        texts = list(texts)
        if len(texts) <= chunk or not self.backbone.trim_padding:
            return self.encode_text_features(self.text_features(texts)).cpu().numpy()
        order = np.argsort([len(text) for text in texts], kind="stable")
        parts = [self.encode_texts([texts[i] for i in order[start : start + chunk]], chunk)
                 for start in range(0, len(texts), chunk)]
        out = np.empty_like(np.concatenate(parts, axis=1))
        out[:, order] = np.concatenate(parts, axis=1)
        return out

    # -- disk ------------------------------------------------------------------------------------------------
    def save_member(self, number: int, directory: Path, **info) -> None:
        """Write member ``number`` as a standalone enclip model directory (``info`` goes into its model.json)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        with atomic_file(directory / "heads.pt") as handle:
            torch.save(self.members[number].state_dict(), handle)
        write_json(
            directory / "model.json",
            manifest("model", backbone=asdict(self.backbone.cfg), heads=asdict(self.head_cfg),
                     trunk_fingerprint=self.trunk_fingerprint(), **info),
        )

    def load_member(self, number: int, directory: Path) -> None:
        state = torch.load(Path(directory) / "heads.pt", map_location=self.device, weights_only=True)
        self.members[number].load_state_dict(state)

    def trunk_fingerprint(self) -> str:
        """Hash of the frozen trunks' weights: saved heads are only valid on the very trunk they were trained on."""
        if self._trunk_fingerprint is None:
            self._trunk_fingerprint = _digest(self._loaded_image_trunk[0], self.text_trunk)
        return self._trunk_fingerprint

    def fingerprint(self) -> str:
        """Hash of every weight the model embeds with (trunks and member heads): what its vectors depend on."""
        return _digest(*self.members, extra=self.trunk_fingerprint())

    def image_cache_key(self) -> str:
        """Hash of what a cached image trunk output depends on: the image trunk's weights and the preprocessing
        (input size, normalisation). Models that differ only in their text split or heads share image caches."""
        probe = np.linspace(0, 255, 80 * 60 * 3).reshape(80, 60, 3).astype(np.uint8)  # a portrait photo's shape
        pixels = self.backbone.preprocess(Image.fromarray(probe))  # the preprocessing, fingerprinted by what it does
        colour = "colour" if self.head_cfg.colour else ""  # its outputs carry the thumbnail channels too
        return _digest(self._loaded_image_trunk[0],
                       extra=hashlib.sha256(pixels.numpy().tobytes()).hexdigest() + colour)


def _redraw_projections(member: Member) -> None:
    """Give a member its own random draw of the newly initialised projections (from the global torch RNG, so a
    seeded run stays reproducible). Members cloned from one head would otherwise start identical and differ only by
    data order and views, which leaves them too alike to gain from averaging (deep ensembles owe much of their
    diversity to independent initialisation: Lakshminarayanan et al., 2017). Pretrained blocks are shared as loaded."""
    for head in (member.image_head, member.text_head):
        for name, module in head.named_modules():
            top = name.removeprefix("head.").split(".")[0]  # a head wrapped in towers.ColourHead: its inner head's
            if top == "projection" and hasattr(module, "reset_parameters"):
                module.reset_parameters()


def _digest(*modules: nn.Module, extra: str = "") -> str:
    digest = hashlib.sha256(extra.encode())
    for module in modules:
        for name, tensor in module.state_dict().items():
            digest.update(name.encode())
            digest.update(memoryview(tensor.detach().cpu().contiguous().numpy()).cast("B"))
    return digest.hexdigest()[:16]


@dataclass
class EnsembleInfo:
    members: list[str]  # member model directories, relative to the ensemble directory
    strategy: str = "single"  # "single", "seeds", "bagging", "cluster" or "snapshot"
    fusion: str = "mean"  # default fusion rule at query time
    data_fingerprint: str = ""  # catalogue the members were trained on
    clusters: str | None = None  # clustering directory, relative, for cluster-trained ensembles


def read_model_info(directory: str | Path) -> EnsembleInfo:
    """What a model directory holds: an ensemble (``ensemble.json``) or one model (``model.json``)."""
    directory = Path(directory)
    if (directory / "ensemble.json").exists():
        raw = read_json(directory / "ensemble.json")
        return EnsembleInfo(**{k: raw[k] for k in EnsembleInfo.__dataclass_fields__ if k in raw})
    if (directory / "model.json").exists():
        raw = read_json(directory / "model.json")
        return EnsembleInfo(members=["."], data_fingerprint=raw.get("data_fingerprint", ""))
    raise EnclipError(f"{directory} is not an enclip model: it has neither ensemble.json nor model.json")


def load_model(directory: str | Path, device: str = "cpu") -> tuple[Ensemble, EnsembleInfo]:
    """Load a single model directory (``model.json``) or an ensemble directory (``ensemble.json``)."""
    directory = Path(directory)
    info = read_model_info(directory)
    member_dirs = [directory / m for m in info.members]
    first = read_json(member_dirs[0] / "model.json")
    backbone = create_backbone(BackboneCfg(**first["backbone"]))
    ensemble = Ensemble(backbone, HeadCfg(**{"colour": False, **first["heads"]}), members=len(member_dirs)).to(device)
    expected = first.get("trunk_fingerprint")
    if expected and expected != ensemble.trunk_fingerprint():
        raise EnclipError(
            f"{directory} was trained on different frozen backbone weights than {backbone.cfg.name!r} loads here "
            f"(trunk fingerprint {ensemble.trunk_fingerprint()} != {expected}); install the versions in its "
            "model.json 'versions' or retrain"
        )
    for i, member_dir in enumerate(member_dirs):
        ensemble.load_member(i, member_dir)
    return ensemble.eval(), info
