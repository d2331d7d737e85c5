"""Queries to member vectors: text, a photo, or both, mixed by the text's share of the score.

One encoder serves the searcher and the evaluator, so ``enclip eval`` scores exactly what ``enclip search`` ranks.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
from PIL import Image

from enclip.data.images import load_image
from enclip.errors import EnclipError


def check_query(text: str | None, image: Any, weight: float) -> None:
    """A query needs text, a photo or both, non-empty text, and a text share between 0 and 1."""
    if text is None and image is None:
        raise EnclipError("a query needs text, an image, or both")
    if text is not None and not str(text).strip():
        raise EnclipError("the query text is empty")
    if not 0.0 <= weight <= 1.0:
        raise EnclipError(f"weight must be between 0 and 1 (the text's share), got {weight}")


class QueryEncoder:
    """Encodes batches of queries with a model's towers: each text and each photo once, then mixed.

    A single query runs on ``single_query_threads`` torch threads (default 1). Its matrices are tiny, so a second
    thread gains little on an idle machine, and on a busy one (or under concurrent requests) waiting threads spin
    for their share: on this project's 2 cores under load, one text query took 45 ms on one thread and 950 ms on two
    (docs/RESULTS.md). Batches keep the process's setting.
    """

    def __init__(self, model, single_query_threads: int = 1) -> None:
        self.model = model
        self.single_query_threads = single_query_threads

    def encode_one(self, text: str | None = None, image: Any = None, weight: float = 0.5) -> np.ndarray:
        """(K, d) member query vectors; with both inputs, ``weight`` is the text's share of the score."""
        check_query(text, image, weight)
        with torch_threads(self.single_query_threads):
            return self.encode([text], [image], [weight])[:, 0]

    def encode_parts(self, text: str | None = None, image: Any = None) -> tuple[np.ndarray | None, np.ndarray | None]:
        """One query's (K, d) text vectors and photo vectors, each None when absent: for callers that need both
        the mix (the photo channel) and the text alone (the item-text channel)."""
        check_query(text, image, 0.5)
        with torch_threads(self.single_query_threads), torch.inference_mode():
            text_vectors = self.model.encode_texts([str(text)])[:, 0] if text is not None else None
            image_vectors = self.model.encode_images([_picture(image)])[:, 0] if image is not None else None
        return text_vectors, image_vectors

    def encode(self, texts: Sequence[str | None], images: Sequence[Any], weights: Sequence[float]) -> np.ndarray:
        """(K, B, d) vectors for B queries, each mixed by :func:`mix`. Images may be PIL images, paths or bytes."""
        text_rows = [j for j, text in enumerate(texts) if text is not None]
        image_rows = [j for j, image in enumerate(images) if image is not None]
        if not text_rows and not image_rows:
            raise EnclipError("a query needs text, an image, or both")
        with torch.inference_mode():
            text_part = self.model.encode_texts([str(texts[j]) for j in text_rows]) if text_rows else None
            image_part = self.model.encode_images([_picture(images[j]) for j in image_rows]) if image_rows else None
        members, _, dim = (text_part if text_part is not None else image_part).shape
        both = [np.zeros((members, len(texts), dim), np.float32) for _ in range(2)]
        if text_part is not None:
            both[0][:, text_rows] = text_part
        if image_part is not None:
            both[1][:, image_rows] = image_part
        return mix(both[0], both[1], text_shares(texts, images, weights)[None, :, None])  # absent parts: zeros, share 0


def mix(text_vectors: np.ndarray | None, image_vectors: np.ndarray | None, weight) -> np.ndarray:
    """The one mixing rule: ``weight * text + (1 - weight) * image`` (either alone when the other is None).

    ``weight`` may broadcast against the vectors, e.g. one text share per query of a batch.
    """
    if text_vectors is None or image_vectors is None:
        return text_vectors if image_vectors is None else image_vectors
    weight = np.asarray(weight, dtype=np.float32)
    return (weight * text_vectors + (1.0 - weight) * image_vectors).astype(np.float32)


def text_shares(texts: Sequence[Any], images: Sequence[Any], weights: Sequence[float]) -> np.ndarray:
    """(B,) each query's text share: its weight when it has both, 1 with text only, 0 with a photo only."""
    has_text = np.array([t is not None for t in texts], dtype=bool)
    has_image = np.array([i is not None for i in images], dtype=bool)
    share = np.where(has_text & has_image, np.asarray(weights, dtype=np.float32), np.where(has_text, 1.0, 0.0))
    return share.astype(np.float32)


@contextmanager
def torch_threads(n: int | None):
    """Run torch with ``n`` intra-op threads inside the block (None: leave the setting alone). The setting is
    process-wide; switching it costs under a microsecond."""
    before = torch.get_num_threads()
    if n is None or n == before:
        yield
        return
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _picture(image: Any) -> Image.Image:
    return image if isinstance(image, Image.Image) else load_image(image)
