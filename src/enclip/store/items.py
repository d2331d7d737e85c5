"""The items an index serves: the catalogue it was built from, plus live additions, minus live removals.

Live changes append rows and tombstone removed ones (a removed-mask), so row positions never move: position ``i``
is row ``i`` of the vector index too. A removed item cannot be found by id, read, or searched, whatever it was
called; re-adding an id appends a fresh row.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pyarrow as pa

from enclip.data.catalogue import Catalogue
from enclip.errors import EnclipError
from enclip.vectors import ItemFields


class ArrowImages:
    """Image bytes read on demand from an Arrow column (a list of 44k Python bytes objects would cost ~100 MB more),
    plus any images appended by live changes."""

    def __init__(self, column: pa.ChunkedArray):
        self._column = column.combine_chunks()
        self._added: list[bytes] = []

    def __len__(self) -> int:
        return len(self._column) + len(self._added)

    def __getitem__(self, i: int) -> bytes:
        if i < 0:
            i += len(self)
        return self._column[i].as_py() if i < len(self._column) else self._added[i - len(self._column)]

    def __iter__(self):
        return (self[i] for i in range(len(self)))

    def append(self, image: bytes) -> None:
        self._added.append(image)


class LiveCatalogue(Catalogue):
    """A catalogue that live changes can append to and remove from (by tombstone)."""

    def __init__(self, ids, titles, attributes, images, source: str = ""):
        super().__init__(ids=list(ids), titles=list(titles), attributes={k: list(v) for k, v in attributes.items()},
                         images=images, source=source)
        self.removed = np.zeros(len(self.ids), dtype=bool)
        self._live: dict[str, int] = {item_id: i for i, item_id in enumerate(self.ids)}

    @classmethod
    def from_table(cls, table: pa.Table, source: str) -> LiveCatalogue:
        data = table.drop_columns(["image"]).to_pydict()
        attributes = {name[5:]: values for name, values in data.items() if name.startswith("attr.")}
        return cls(data["id"], data["title"], attributes, ArrowImages(table.column("image")), source)

    @property
    def live_count(self) -> int:
        return len(self.ids) - int(self.removed.sum())

    def index_of(self, item_id: str) -> int:
        position = self._live.get(str(item_id))
        if position is None:
            raise EnclipError(f"item id {item_id!r} is not in the index ({self.live_count} items)")
        return position

    def has(self, item_id: str) -> bool:
        return str(item_id) in self._live

    def append(self, items: Sequence[dict], images: Sequence[bytes]) -> np.ndarray:
        """Add rows at the end; returns their positions. Ids must not be live (remove them first to replace)."""
        taken = [str(item["id"]) for item in items if self.has(str(item["id"]))]
        if taken:
            raise EnclipError(f"items {taken} are already in the index; remove them before adding them again")
        start = len(self.ids)
        for item, data in zip(items, images):
            self._live[str(item["id"])] = len(self.ids)
            self.ids.append(str(item["id"]))
            self.titles.append(str(item.get("title", "")))
            for name, column in self.attributes.items():
                column.append(str((item.get("attributes") or {}).get(name, "")))
            self.images.append(bytes(data))
        self.removed = np.concatenate([self.removed, np.zeros(len(self.ids) - start, dtype=bool)])
        return np.arange(start, len(self.ids))

    def remove(self, ids: Sequence[str]) -> np.ndarray:
        """Tombstone live items by id; returns their positions. Unknown ids are an error (nothing is removed)."""
        missing = [str(item_id) for item_id in ids if not self.has(str(item_id))]
        if missing:
            raise EnclipError(f"items {missing} are not in the index")
        positions = np.array([self._live.pop(str(item_id)) for item_id in dict.fromkeys(map(str, ids))], np.int64)
        self.removed[positions] = True
        return positions

    def attribute_values(self) -> dict[str, list[str]]:
        """Sorted distinct non-empty values per attribute, over live items only."""
        live = ~self.removed
        return {name: sorted({v for v, keep in zip(values, live) if v and keep})
                for name, values in self.attributes.items()}


def items_table(catalogue: Catalogue) -> pa.Table:
    """The items.parquet table: id, title, one ``attr.NAME`` column per attribute, and the image bytes."""
    columns = {"id": catalogue.ids, "title": catalogue.titles}
    columns.update({f"attr.{name}": values for name, values in catalogue.attributes.items()})
    columns["image"] = pa.array([catalogue.image_bytes(i) for i in range(len(catalogue))], type=pa.binary())
    return pa.table(columns)


def item_fields(catalogue: Catalogue, positions: Sequence[int] | np.ndarray, clusters: np.ndarray) -> ItemFields:
    """The stored fields of the rows at ``positions`` (id, attributes, cluster), for vector stores that filter on
    them (Milvus)."""
    rows = [int(p) for p in positions]
    return ItemFields(ids=[catalogue.ids[p] for p in rows],
                      attributes={name: [values[p] for p in rows] for name, values in catalogue.attributes.items()},
                      clusters=[int(c) for c in clusters])

