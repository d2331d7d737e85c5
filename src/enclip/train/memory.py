"""Cross-batch memory: the photo and caption embeddings of recent training steps, reused as extra negatives.

A step's contrastive loss sees only its own batch: 255 negatives per item at the default batch of 256, while the
search ranks a title against 44,000 photos. Embeddings that earlier steps already computed are a cheap source of
many more negatives: they cost a matrix product, not a forward pass (the memory bank of MoCo and of Wang et al.,
"Cross-Batch Memory for Embedding Learning", CVPR 2020). They are a few steps stale, since the heads have moved
since, and carry no gradient. Items that share a title with a batch item count as its positives, as in the batch.
"""

from __future__ import annotations

import torch


class CrossBatchMemory:
    """A first-in, first-out store of the latest ``size`` (photo, caption, title group) embeddings of training."""

    def __init__(self, size: int):
        if size < 0:
            raise ValueError(f"a cross-batch memory holds zero or more items, got {size}")
        self.size = size
        self.image: torch.Tensor | None = None  # (n, d), newest first
        self.text: torch.Tensor | None = None
        self.groups: torch.Tensor | None = None  # (n,) title groups

    def __len__(self) -> int:
        return 0 if self.groups is None else len(self.groups)

    def keys(self, image: torch.Tensor, text: torch.Tensor, groups: torch.Tensor):
        """The batch's photos, captions and groups followed by the memory's: what each batch item is contrasted
        against."""
        if not len(self):
            return image, text, groups
        return (torch.cat([image, self.image.to(image.dtype)]), torch.cat([text, self.text.to(text.dtype)]),
                torch.cat([groups, self.groups]))

    @torch.no_grad()
    def push(self, image: torch.Tensor, text: torch.Tensor, groups: torch.Tensor) -> None:
        """Remember a batch (detached), dropping the oldest items beyond ``size``."""
        if not self.size:
            return
        image, text, groups = image.detach().float(), text.detach().float(), groups.detach()
        if len(self):
            image, text, groups = (torch.cat([image, self.image]), torch.cat([text, self.text]),
                                   torch.cat([groups, self.groups]))
        self.image, self.text, self.groups = image[: self.size], text[: self.size], groups[: self.size]

    def state_dict(self) -> dict:
        """What a checkpoint keeps, so that a resumed run continues with the same negatives."""
        return {"size": self.size, "image": self.image, "text": self.text, "groups": self.groups}

    def load_state_dict(self, state: dict, device=None) -> None:
        if state["size"] != self.size:
            raise ValueError(f"this checkpoint's cross-batch memory holds {state['size']} items, not {self.size}")
        move = (lambda t: t) if device is None else (lambda t: None if t is None else t.to(device))
        self.image, self.text, self.groups = move(state["image"]), move(state["text"]), move(state["groups"])
