"""A closed-form start for a member's new projections: canonical correlation analysis (CCA) of its training pairs.

A new projection starts random, so a budget's first steps are spent finding a joint space at all. Both towers are
pretrained, though, and the features just before each projection already correlate: the CCA of the training
photos' pooled image features with their titles' text features, a linear fit in seconds, ranks held-out photos
well above chance before any step (validation title R@10 about 0.15 on the catalogue, against 0.20 after a
whole epoch from a random start; RESULTS.md, issue 14, twenty-third pass). Training then starts from there: a
linear probe before fine-tuning (LP-FT; Kumar et al. 2022, "Fine-tuning can distort pretrained features and
underperform out-of-distribution").

The projections have no bias, so the fit is uncentred: the mean direction is one more shared component.
"""

from __future__ import annotations

import logging
import time

import numpy as np
import torch
from torch import nn

from enclip.errors import EnclipError
from enclip.models.ensemble import HEAD_CHUNK, Member
from enclip.train.features import FeatureCache

log = logging.getLogger(__name__)

PROJECTION_INITS = ("random", "cca")
RIDGE = 0.01  # each covariance's diagonal loading, as a share of its mean variance (validation: level from 1e-3 to 0.1)
POWER = 0.5  # each canonical direction scaled by its correlation to this power, so the better-aligned ones weigh more
# training pairs the fit reads at most (a seeded sample beyond): its inputs are held in memory, 1,280 + 384 float32
# numbers a pair with the default heads (about 1.3 GB at this cap); more pairs still helped at the catalogue's 35,577
MAX_PAIRS = 200_000


def projection(head: nn.Module) -> nn.Linear:
    """A head's new projection into the joint space: its one linear layer named ``projection`` (or the ``proj``
    inside it), wherever a wrapper (colour branch, text adapter) put it."""
    found = [module for name, module in head.named_modules() if isinstance(module, nn.Linear)
             and name.split(".")[-1] in ("projection", "proj") and "projection" in name.split(".")]
    if len(found) != 1 or found[0].bias is not None:
        has = f"{len(found)}" if len(found) != 1 else "one with a bias"
        raise EnclipError("the CCA start needs one bias-free linear projection per head, as new projections over "
                          f"timm and Hugging Face towers have; this head has {has}: train with "
                          "--projection-init random")
    return found[0]


def cca_directions(x, y, dim: int, ridge: float = RIDGE, power: float = POWER) -> tuple[np.ndarray, np.ndarray]:
    """(dx, k) and (dy, k) maps of paired rows ``x`` and ``y`` (arrays or tensors) onto their first
    k = min(dim, dx, dy) canonical directions (uncentred), each scaled by its correlation ** ``power``.

    Computed by torch in float64 on the CPU, so its threads are torch's: a member trained as a Ray task with the
    same torch threads as a local one fits the same start, bit for bit (numpy's BLAS would follow its own threads).
    """
    x, y = (torch.as_tensor(v).detach().to("cpu", torch.float64) for v in (x, y))
    if len(x) != len(y) or len(x) < 2:
        raise EnclipError(f"CCA needs two or more paired rows, got {len(x)} image and {len(y)} text rows")
    whiten_x, whiten_y = _inverse_sqrt(x.T @ x / len(x), ridge), _inverse_sqrt(y.T @ y / len(y), ridge)
    u, s, vt = torch.linalg.svd(whiten_x @ (x.T @ y / len(x)) @ whiten_y, full_matrices=False)
    k = min(dim, len(s))
    weight = s[:k].clamp_min(0.0) ** power
    return (whiten_x @ u[:, :k] * weight).numpy(), (whiten_y @ vt[:k].T * weight).numpy()


def _inverse_sqrt(covariance: torch.Tensor, ridge: float) -> torch.Tensor:
    loading = ridge * max(float(torch.trace(covariance)) / len(covariance), 1e-12)
    values, vectors = torch.linalg.eigh(covariance + loading * torch.eye(len(covariance), dtype=covariance.dtype))
    return (vectors / values.sqrt()) @ vectors.T


@torch.no_grad()
def cca_start(member: Member, train: FeatureCache, rows: np.ndarray, device) -> None:
    """Set ``member``'s image and text projections to the CCA of ``rows``' clean photos with their titles (at most
    MAX_PAIRS of them)."""
    started = time.perf_counter()
    if len(rows) > MAX_PAIRS:
        rows = np.sort(np.random.default_rng(len(rows)).choice(rows, MAX_PAIRS, replace=False))
    x, y = projection_inputs(member, train, rows, device)
    a, b = cca_directions(x, y, projection(member.image_head).out_features)
    set_projections(member, a, b, x, y)
    log.info("projections started from the CCA of %d training pairs (%d directions, %.1f s)", len(rows), a.shape[1],
             time.perf_counter() - started)


@torch.no_grad()
def projection_inputs(member: Member, train: FeatureCache, rows: np.ndarray, device
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """What ``member``'s image and text projections receive for ``rows``' clean photos and their titles: each head
    run once over the rows, in eval mode (the member's mode is restored)."""
    training = member.training
    member.eval()
    x = torch.cat([_projection_inputs(member.encode_image, projection(member.image_head),
                                      train.image_batch(chunk, np.zeros(len(chunk), int), device))
                   for chunk in np.array_split(rows, max(1, -(-len(rows) // HEAD_CHUNK)))])
    y = torch.cat([_projection_inputs(member.encode_text, projection(member.text_head),
                                      train.text_batch(train.first_caption[chunk], device))
                   for chunk in np.array_split(rows, max(1, -(-len(rows) // 512)))])
    member.train(training)
    return x, y


@torch.no_grad()
def set_projections(member: Member, a: np.ndarray, b: np.ndarray, x: torch.Tensor, y: torch.Tensor) -> None:
    """Put fitted maps ``a`` (image) and ``b`` (text), from :func:`cca_directions`, into ``member``'s projections.

    Joint dimensions beyond the fit's rank (a joint space wider than the text features) keep their random start,
    scaled to a hundredth of the fitted ones' output on the projections' inputs ``x`` and ``y``, so they neither
    swamp the fit nor sit at zero, where no gradient reaches them.
    """
    for layer, fitted, inputs in ((projection(member.image_head), a, x), (projection(member.text_head), b, y)):
        weight = layer.weight
        fitted = torch.from_numpy(fitted.T).to(weight)
        if len(fitted) < len(weight):
            scale = (inputs @ fitted.T).std() / (inputs @ weight[len(fitted):].T).std().clamp_min(1e-12)
            weight[len(fitted):] *= 0.01 * scale
        weight[: len(fitted)] = fitted


def _projection_inputs(encode, layer: nn.Linear, features) -> torch.Tensor:
    """What ``layer`` receives when ``encode`` runs on ``features``."""
    seen = []
    handle = layer.register_forward_pre_hook(lambda module, inputs: seen.append(inputs[0].detach().float()))
    try:
        encode(features)
    finally:
        handle.remove()
    return seen[0]
