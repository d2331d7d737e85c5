"""What a member's training steps minimise, beside its weights: the contrastive pair loss over a batch (CLIP's
softmax or SigLIP's sigmoid, with items that share a title counted as positives of each other) and the auxiliary
attribute-classification heads. Their parameters are training-only: checkpointed with a run, never saved with a
model.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from enclip.errors import EnclipError
from enclip.models.ensemble import Ensemble
from enclip.train.features import FeatureCache

log = logging.getLogger(__name__)


def title_groups(titles: list[str]) -> np.ndarray:
    """Integer label per item; items with the same normalised title share it."""
    seen: dict[str, int] = {}
    return np.array([seen.setdefault(" ".join(t.lower().split()), len(seen)) for t in titles], dtype=np.int64)


def contrastive_loss(image: torch.Tensor, text: torch.Tensor, scale: torch.Tensor,
                     groups: torch.Tensor) -> torch.Tensor:
    """Symmetric cross-entropy over the batch similarity matrix with multi-positive soft targets."""
    logits = scale.exp().clamp(max=100) * image @ text.T
    positives = (groups[:, None] == groups[None, :]).float()
    targets = positives / positives.sum(dim=1, keepdim=True)
    return 0.5 * (F.cross_entropy(logits, targets) + F.cross_entropy(logits.T, targets.T))


PAIR_LOSSES = ("softmax", "sigmoid")  # TrainCfg.loss


def check_loss(kind: str) -> None:
    if kind not in PAIR_LOSSES:
        raise EnclipError(f"unknown --loss {kind!r}; choose one of {', '.join(PAIR_LOSSES)}")


class PairLoss(nn.Module):
    """The contrastive loss of a batch (TrainCfg.loss): ``softmax`` is :func:`contrastive_loss`; ``sigmoid`` scores
    every photo-caption pair as a binary match, positive where the two share a title group, with a learned bias
    (SigLIP's initial -10) that offsets the many negatives. Used in training only, never saved with the model: a
    constant shift of the scores leaves every ranking as it is."""

    def __init__(self, kind: str = "softmax", bias: float = -10.0):
        super().__init__()
        check_loss(kind)
        self.kind = kind
        self.bias = nn.Parameter(torch.tensor(float(bias))) if kind == "sigmoid" else None

    def forward(self, image: torch.Tensor, text: torch.Tensor, scale: torch.Tensor,
                groups: torch.Tensor) -> torch.Tensor:
        if self.bias is None:
            return contrastive_loss(image, text, scale, groups)
        logits = scale.exp().clamp(max=100) * image @ text.T + self.bias
        signs = 2.0 * (groups[:, None] == groups[None, :]).to(logits.dtype) - 1.0
        return -F.logsigmoid(signs * logits).sum() / len(image)


MISSING_LABELS = ("", "NA")  # attribute values that say nothing about the item
PROTOTYPES = ("learned", "names")  # where the auxiliary losses' class vectors come from (TrainCfg.aux_prototypes)


class AttributeHeads(nn.Module):
    """Auxiliary multi-task heads: per attribute column, class prototypes in the joint space that the image and the
    text embedding of an item must both point to. They tell the towers what a photo shows (gender, type, colour)
    without adding text pairs that dilute the title signal; used in training only, never saved with the model.

    ``names`` given (column -> text-trunk features of its class values, e.g. "Navy Blue"), a class's prototype is
    the member's own text embedding of its name, as in zero-shot CLIP classification: the text head then learns to
    place a bare attribute word, which is what a shopper types, where the photos showing it are. Otherwise each
    prototype is a free vector, which teaches the photo side only.
    """

    def __init__(self, dim: int, classes: dict[str, int], seed: int, scale: float = 16.0,
                 names: dict[str, object] | None = None, rank_photos: float = 0.0):
        super().__init__()
        self.scale = scale
        self.names = names
        self.rank_photos = float(rank_photos)  # weight of the class-to-photos direction (TrainCfg.aux_rank_photos)
        generator = torch.Generator().manual_seed(seed)
        self.prototypes = nn.ParameterDict() if names is not None else nn.ParameterDict(
            {name: nn.Parameter(torch.randn(n, dim, generator=generator) * 0.02) for name, n in classes.items()})

    @property
    def columns(self) -> list[str]:
        return list(self.names if self.names is not None else self.prototypes)

    def class_vectors(self, column: str, classes: torch.Tensor | None = None,
                      member: nn.Module | None = None, bfloat16: bool = False) -> torch.Tensor:
        """Normalised (classes, d) prototypes of one column (only ``classes``, when given); name prototypes run
        through ``member``'s text head (in bfloat16 autocast when asked)."""
        if self.names is None:
            prototypes = self.prototypes[column]
            return F.normalize(prototypes if classes is None else prototypes[classes], dim=-1)
        return member.encode_text(_rows(self.names[column], classes), bfloat16=bfloat16)

    def loss(self, image: torch.Tensor, text: torch.Tensor, labels: dict[str, torch.Tensor],
             member: nn.Module | None = None, bfloat16: bool = False) -> torch.Tensor:
        total = image.new_zeros(())
        for column in self.columns:
            known = labels[column] >= 0
            if not bool(known.any()):
                continue
            target = labels[column][known]
            if self.names is None:
                weights = self.class_vectors(column)
            else:  # the batch's classes only (about 56 of 142 types), as CLIP contrasts in-batch negatives: half the
                # extra step cost of every class name (+6% a step instead of +12%, bench/step_cost.py)
                present, target = target.unique(return_inverse=True)
                weights = self.class_vectors(column, present, member, bfloat16)
            for embedding in (image, text):
                total = total + 0.5 * F.cross_entropy(self.scale * embedding[known] @ weights.T, target)
            if self.rank_photos:
                total = total + self.rank_photos * photos_ranked_by_class(self.scale * image[known] @ weights.T,
                                                                          target)
        return total / max(1, len(self.columns))


def photos_ranked_by_class(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean over the classes present of -log of the softmax mass, over the batch's photos (``logits``' rows), that
    each class puts on its own photos' scores, averaged over those photos (a multi-positive softmax per class)."""
    present, target = target.unique(return_inverse=True)
    logits = logits[:, present]  # learned prototypes score every class; only those present have photos here
    own = F.one_hot(target, len(present)).to(logits.dtype)
    log_share = F.log_softmax(logits, dim=0)  # each column: a class's distribution over the photos
    return (-(log_share * own).sum(0) / own.sum(0)).mean()


def _rows(features, rows: torch.Tensor | None):
    """Rows of text-trunk features, pooled or (hidden, mask) trimmed to the longest of those rows."""
    if rows is None:
        return features
    if not isinstance(features, tuple):
        return features[rows]
    hidden, mask = features[0][rows], features[1][rows]
    used = int(mask.any(dim=0).nonzero().max()) + 1
    return hidden[:, :used], mask[:, :used]


def encode_labels(cache: FeatureCache, columns: tuple[str, ...]) -> dict[str, tuple[list[str], np.ndarray]]:
    """Per usable column, its class values (sorted) and the integer class of each item (-1 where missing); columns
    absent or single-valued are skipped, so one setting serves catalogues with other columns."""
    encoded = {}
    for name in columns:
        if name not in cache.labels:
            log.warning("auxiliary column %r is not in the catalogue; skipped", name)
            continue
        values = cache.labels[name]
        classes = sorted(set(values.tolist()) - set(MISSING_LABELS))
        if len(classes) < 2:
            continue
        lookup = {value: i for i, value in enumerate(classes)}
        encoded[name] = (classes, np.array([lookup.get(value, -1) for value in values.tolist()], dtype=np.int64))
    return encoded


def attribute_heads(ensemble: Ensemble, member, train: FeatureCache, seed: int, columns: Sequence[str],
                    weight: float, prototypes: str = "names", rank_photos: float = 0.0):
    """(heads, labels) for the auxiliary losses over ``columns``, or (None, {}) when they are off (``weight`` 0, or
    no usable column)."""
    if prototypes not in PROTOTYPES:
        raise EnclipError(f"unknown auxiliary prototypes {prototypes!r}; choose one of {', '.join(PROTOTYPES)}")
    if rank_photos < 0:
        raise EnclipError(f"--aux-rank-photos is a weight of 0 (off) or more, got {rank_photos}")
    encoded = encode_labels(train, tuple(columns)) if weight > 0 else {}
    if not encoded:
        return None, {}
    device = ensemble.device
    with torch.no_grad():
        dim = member.encode_text(train.text_batch(train.first_caption[:2], device)).shape[-1]
    names = None
    if prototypes == "names":  # the frozen text trunk runs once over the class names; the head every step
        names = {name: ensemble.text_features(classes) for name, (classes, _) in encoded.items()}
    heads = AttributeHeads(dim, {name: len(classes) for name, (classes, _) in encoded.items()}, seed, names=names,
                           rank_photos=rank_photos)
    tensors = {name: torch.from_numpy(codes).to(device) for name, (_, codes) in encoded.items()}
    return heads.to(device), tensors


class Objective(NamedTuple):
    """What a member's steps minimise, beside its own weights: the contrastive loss and the auxiliary attribute heads
    with the items' labels (None and {} when off). Both hold training-only parameters, checkpointed with the run."""

    pair: PairLoss
    aux: AttributeHeads | None
    labels: dict[str, torch.Tensor]

    def parameters(self) -> list[nn.Parameter]:
        return list(self.pair.parameters()) + ([] if self.aux is None else list(self.aux.parameters()))

    def state_dict(self) -> dict:
        return {"pair": self.pair.state_dict(), "aux": None if self.aux is None else self.aux.state_dict()}

    def load_state_dict(self, saved: dict) -> None:
        """Load what `state_dict` saved (a checkpoint from before the pair loss held any has only "aux")."""
        self.pair.load_state_dict(saved.get("pair") or {})
        if self.aux is not None:
            self.aux.load_state_dict(saved["aux"])


def build_objective(ensemble: Ensemble, member, train: FeatureCache, seed: int, loss: str = "softmax",
                    aux_columns: Sequence[str] = (), aux_weight: float = 0.0, aux_prototypes: str = "names",
                    aux_rank_photos: float = 0.0) -> Objective:
    """A member's objective: the pair loss ``loss`` and, with ``aux_weight`` above 0, attribute heads over the usable
    ``aux_columns`` of ``train`` (TrainCfg's fields of the same names)."""
    aux, labels = attribute_heads(ensemble, member, train, seed, aux_columns, aux_weight, aux_prototypes,
                                  aux_rank_photos)
    return Objective(PairLoss(loss).to(ensemble.device), aux, labels)
