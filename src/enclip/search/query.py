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

    @property
    def members(self) -> int:
        return len(self.model)

    def encode_one(self, text: str | None = None, image: Any = None, weight: float = 0.5) -> np.ndarray:
        """(K, d) member query vectors; with both inputs, ``weight`` is the text's share of the score."""
        check_query(text, image, weight)
        with torch_threads(self.single_query_threads):
            return self.encode([text], [image], [weight])[:, 0]

    def encode(self, texts: Sequence[str | None], images: Sequence[Any], weights: Sequence[float]) -> np.ndarray:
        """(K, B, d) vectors for B queries; query j is ``w_j * text_j + (1 - w_j) * image_j`` when it has both,
        else whichever it has. Images may be PIL images, paths or encoded bytes."""
        text_rows = [j for j, text in enumerate(texts) if text is not None]
        image_rows = [j for j, image in enumerate(images) if image is not None]
        parts = []
        with torch.inference_mode():
            if text_rows:
                shares = [weights[j] if images[j] is not None else 1.0 for j in text_rows]
                parts.append((text_rows, self.model.encode_texts([str(texts[j]) for j in text_rows]), shares))
            if image_rows:
                pictures = [_picture(images[j]) for j in image_rows]
                shares = [1.0 - weights[j] if texts[j] is not None else 1.0 for j in image_rows]
                parts.append((image_rows, self.model.encode_images(pictures), shares))
        if not parts:
            raise EnclipError("a query needs text, an image, or both")
        members, _, dim = parts[0][1].shape
        out = np.zeros((members, len(texts), dim), dtype=np.float32)
        for rows, vectors, shares in parts:
            out[:, rows] += vectors * np.asarray(shares, dtype=np.float32)[None, :, None]
        return out


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
