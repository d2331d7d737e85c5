"""An opened index's parts that change together under live admin changes: the items, the photo and item-text
vectors, the keyword index, each item's hubness penalty and each item's cluster. One add or remove reaches every part, or none is attempted."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from enclip.embed.space import to_joint
from enclip.store.index_dir import IndexDir
from enclip.store.items import item_fields


class LiveIndex:
    """Rows are positions: row ``i`` of every part is catalogue item ``i``; removed rows are tombstoned in each."""

    def __init__(self, index_dir: IndexDir, members: int):
        self.members = members
        self.catalogue = index_dir.load_items()
        self.vectors = index_dir.load_vectors()
        self.text_vectors = index_dir.load_text_vectors()  # None for an index built without the item-text channel
        self.keywords = index_dir.load_keywords()  # None for an index built without the keyword channel
        self.hubness = index_dir.load_hubness()  # None for an index built without hubness penalties
        self.bridge = index_dir.load_bridge()  # None for an index built without it; fixed under live changes
        self.centroids, self.item_clusters = index_dir.load_routing()

    def add(self, items: Sequence[dict], images: Sequence[bytes], vectors: np.ndarray,
            text_vectors: np.ndarray | None) -> np.ndarray:
        """Append items with their stored (n, K*d) photo and item-text vectors; an id already live is replaced."""
        replaced = [str(item["id"]) for item in items if self.catalogue.has(str(item["id"]))]
        if replaced:
            self.remove(replaced)
        positions = self.catalogue.append(items, images)
        clusters = self._assign_clusters(vectors)
        fields = item_fields(self.catalogue, positions, clusters)  # what a Milvus store filters on
        self.vectors.add(vectors, fields)
        if self.text_vectors is not None:
            self.text_vectors.add(text_vectors, fields)
        if self.keywords is not None:
            self.keywords.add(positions, items)
        if self.hubness is not None:
            self.hubness.add(vectors, [str(item.get("title", "")) for item in items])
        self.item_clusters = np.concatenate([self.item_clusters, clusters])
        return positions

    def remove(self, ids: Sequence[str]) -> np.ndarray:
        """Tombstone live items by id in every part (an unknown id is an error and nothing is removed)."""
        positions = self.catalogue.remove([str(item_id) for item_id in ids])
        if len(positions):
            self.vectors.remove(positions)
            if self.text_vectors is not None:
                self.text_vectors.remove(positions)
            if self.keywords is not None:
                self.keywords.remove(positions)
        return positions

    def _assign_clusters(self, vectors: np.ndarray) -> np.ndarray:
        if not len(self.centroids):
            return np.full(len(vectors), -1)
        return np.argmax(to_joint(vectors, self.members) @ self.centroids.T, axis=1)
