"""The title bridge: the training items' titles and photo vectors, for text queries on the photo channel (an
index part).

A title says more to another title than to a photo: the text tower places a query near the titles of the
products it names far more surely than near their photos. The bridge uses that. A text query finds its nearest
*training* titles and borrows their items' photo vectors: its photo-channel vector becomes, per member,

    normalise(q + weight * sum_i softmax(cos(q, t_i) / temperature) p_i)   over its ``depth`` nearest titles t_i,

where ``p_i`` is the photo vector of the item titled ``t_i``. Catalogues hold product families (the same shirt in
three colours, one brand's watches), so a new item's nearest training title often names a sibling whose photo
looks like its own. This is a memory of known pairs at query time, as cache models keep training examples beside
a frozen CLIP (Zhang et al., 2022, "Tip-Adapter"); the towers are unchanged. The supports are the catalogue's
*training* items only (:func:`enclip.data.split.split_of`), so that no held-out item lends its own photo to the
query that looks for it, and the figures of ``enclip eval`` stay honest (docs/RESULTS.md, twenty-eighth pass).

Attribute values are supports too (*label supports*, :func:`label_prototypes`). Each value of the catalogue's
attribute columns ("Tshirts", "Navy Blue", "Women") that training items carry has a "title", the value's own text
vector, and a "photo": per member, the value's direction in a linear probe of its column (a logistic regression
over those training items' stored photo vectors), or their mean (``kind="mean"``). A query also moves towards each
value's photo by

    label_weight * share * max(cos(q, v), 0) ** label_exactness

where ``share`` is the value's share of a softmax over the query's nearest titles *and* the values, and ``v`` is the
value's text vector. A query that *is* a value ("tshirts") finds it nearer than any title, at a cosine near 1, and
borrows the class's direction; a query that names a product finds its titles nearer, and its move is the titles'
alone. The exactness factor keeps a value's pull to queries that name it and nothing else: a shopper's "yellow
deodorant" has its largest share on "Deodorant" (the text tower hears the product word loudest), but at a cosine
near 0.6, so ``0.6 ** 16`` leaves it where the titles put it rather than among all deodorants, whatever their colour
(docs/RESULTS.md, thirtieth pass). The titles' own move does not depend on the values, so label supports change no
query that names no value.

The bridge is fixed when the index is built: items added live are not supports, and a support removed live still
lends its photo vector (never itself as a hit) until the index is rebuilt.

Files, inside the index directory's ``bridge/`` part::

    bridge.json    members, supports, distinct titles, the label supports' values (the last rows)
    titles.npy     (m, K*d) float16: each distinct support title's concatenated member text vectors
    title_of.npy   (n,) int32: the distinct title of each support
    photos.npy     (n, K*d) float16: each support's photo vector (an item's stored one, or a value's direction)
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from enclip.artifacts import read_json, write_json
from enclip.embed.space import l2_normalise
from enclip.errors import EnclipError


class TitleBridge:
    """Support titles and photo vectors, and the expansion of text queries through them."""

    def __init__(self, titles: np.ndarray, title_of: np.ndarray, photos: np.ndarray, members: int,
                 values: Sequence[str] = ()):
        titles, photos = np.asarray(titles), np.asarray(photos)
        title_of = np.asarray(title_of, np.int64)
        if not len(photos) or len(title_of) != len(photos) or title_of.min() < 0 or title_of.max() >= len(titles):
            raise EnclipError(f"a title bridge needs at least one support, one title row per support photo, and "
                              f"title rows within its {len(titles)} titles ({len(photos)} photos, "
                              f"{len(title_of)} title rows)")
        if titles.shape[1] != photos.shape[1] or titles.shape[1] % members:
            raise EnclipError(f"a title bridge's title and photo vectors must both hold {members} members' vectors "
                              f"(got widths {titles.shape[1]} and {photos.shape[1]})")
        self.members, self.dim = int(members), titles.shape[1] // int(members)
        self.title_of = title_of
        self.values = list(values)  # the label supports' attribute values: the last rows
        if len(self.values) >= len(photos):
            raise EnclipError(f"a title bridge needs at least one item support besides its {len(self.values)} label "
                              f"supports (it has {len(photos)} supports in all)")
        # each member's block, contiguous: titles in float32, which every query multiplies whole; photos in float16,
        # of which a query reads only its nearest supports' rows
        self._titles = [np.ascontiguousarray(titles[:, m * self.dim:(m + 1) * self.dim], np.float32)
                        for m in range(self.members)]
        self._photos = [np.ascontiguousarray(photos[:, m * self.dim:(m + 1) * self.dim], np.float16)
                        for m in range(self.members)]

    @classmethod
    def build(cls, bank: np.ndarray, bank_titles: list[str], item_titles: list[str], supports: np.ndarray,
              vectors: np.ndarray, members: int,
              labels: tuple[list[str], np.ndarray, np.ndarray] | None = None) -> TitleBridge:
        """A bridge over the items at positions ``supports``: their titles' rows of the title ``bank`` ((m, K*d),
        one row per ``bank_titles``) and their stored photo ``vectors`` rows ((n, K*d)); and, given ``labels``
        (L attribute values, their (L, K*d) text vectors and (L, K*d) photo vectors), L label supports after
        them."""
        row_of = {title: row for row, title in enumerate(bank_titles)}
        missing = [item_titles[p] for p in supports if item_titles[p] not in row_of]
        if missing:
            raise EnclipError(f"{len(missing)} support titles are not in the title bank (e.g. {missing[0]!r}); "
                              f"the bank must be encoded from the same catalogue")
        bank_rows = np.array([row_of[item_titles[p]] for p in supports], dtype=np.int64)
        used, title_of = np.unique(bank_rows, return_inverse=True)
        # stored as float16 (as the title bank is): the bridge holds what a reload gives
        titles = np.asarray(bank, np.float16)[used]
        photos = np.asarray(vectors, np.float16)[np.asarray(supports, np.int64)]
        values: list[str] = []
        if labels is not None:
            values = list(labels[0])
            texts, means = (np.asarray(part, np.float16) for part in labels[1:])
            if not len(values) == len(texts) == len(means):
                raise EnclipError(f"label supports need one text vector and one photo vector per value ({len(values)} "
                                  f"values, {len(texts)} text vectors, {len(means)} photo vectors)")
            title_of = np.concatenate([title_of, len(titles) + np.arange(len(values))])
            titles, photos = np.concatenate([titles, texts]), np.concatenate([photos, means])
        return cls(titles, title_of, photos, members, values)

    def __len__(self) -> int:
        return len(self.title_of)

    @property
    def labels(self) -> int:
        """How many label supports (the last rows)."""
        return len(self.values)

    def without_labels(self) -> TitleBridge:
        """The same bridge over its item supports only (itself when it has no label supports)."""
        if not self.labels:
            return self
        items = len(self) - self.labels
        return TitleBridge(self.titles[:self.title_of[:items].max() + 1], self.title_of[:items],
                           self.photos[:items], self.members)

    @property
    def titles(self) -> np.ndarray:
        """(m, K*d) distinct support titles' member text vectors."""
        return np.concatenate(self._titles, axis=1)

    @property
    def photos(self) -> np.ndarray:
        """(n, K*d) support items' member photo vectors."""
        return np.concatenate(self._photos, axis=1)

    def expand(self, queries: np.ndarray, weight: float, depth: int, temperature: float,
               label_weight: float | None = None, label_exactness: float = 0.0) -> np.ndarray:
        """(K, B, d) text queries moved towards the photos of their nearest support titles (module docstring), each
        member in its own space, and normalised again; and towards the photo vectors (directions) of the attribute
        values they name, at ``label_weight`` (None: ``weight``) times their share, times their text cosine to the
        query raised to ``label_exactness`` (0: the share alone)."""
        out = np.array(queries, dtype=np.float32, copy=True)
        items = len(self) - self.labels
        depth = min(depth, items)
        label_weight = weight if label_weight is None else label_weight
        for m in range(self.members):
            cosines = (out[m] @ self._titles[m].T)[:, self.title_of]  # (B, n): each support's title cosine
            nearest = np.argpartition(-cosines[:, :items], depth - 1, axis=1)[:, :depth]
            logits = np.take_along_axis(cosines, nearest, axis=1) / temperature
            label_logits = cosines[:, items:] / temperature
            # the titles' photos by their own softmax
            shares = np.exp(logits - logits.max(axis=1, keepdims=True))
            out[m] += np.float32(weight) * np.einsum("bj,bjd->bd", shares / shares.sum(axis=1, keepdims=True),
                                                     self._photos[m][nearest].astype(np.float32))
            if self.labels:  # a value's direction by its share of a softmax over those titles and the values
                top = np.maximum(logits.max(axis=1, keepdims=True), label_logits.max(axis=1, keepdims=True))
                label_shares = np.exp(label_logits - top)
                label_shares /= np.exp(logits - top).sum(axis=1, keepdims=True) + label_shares.sum(axis=1,
                                                                                                  keepdims=True)
                if label_exactness:  # only a query that is the value itself keeps its whole share
                    label_shares *= np.maximum(cosines[:, items:], 0.0) ** np.float32(label_exactness)
                out[m] += np.float32(label_weight) * label_shares @ self._photos[m][items:].astype(np.float32)
        return out / np.maximum(np.linalg.norm(out, axis=2, keepdims=True), 1e-12)

    def save(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        np.save(directory / "titles.npy", self.titles.astype(np.float16))
        np.save(directory / "title_of.npy", self.title_of.astype(np.int32))
        np.save(directory / "photos.npy", self.photos.astype(np.float16))
        write_json(directory / "bridge.json", {"members": self.members, "supports": len(self),
                                               "titles": len(self._titles[0]), "values": self.values})

    @classmethod
    def load(cls, directory: Path) -> TitleBridge:
        info = read_json(directory / "bridge.json")
        return cls(np.load(directory / "titles.npy"), np.load(directory / "title_of.npy"),
                   np.load(directory / "photos.npy"), info["members"], info.get("values", ()))


LABEL_KINDS = ("probe", "mean")  # how a label support's photo vector is made (see label_prototypes)


def label_prototypes(vectors: np.ndarray, attributes: dict[str, list[str]], supports: np.ndarray, members: int,
                     columns: tuple[str, ...] | None = None, kind: str = "probe") -> tuple[list[str], np.ndarray]:
    """The label supports' values and their (L, K*d) photo vectors, one unit direction per member, for each value
    of each attribute column (``columns``, default all) that the items at positions ``supports`` carry.

    ``kind`` "probe" (the default): the value's weight vector in a multinomial logistic regression of its column
    over those items' stored photo ``vectors`` (a linear probe, fitted per member), so a photo's cosine to it ranks
    photos as the probe scores the value; "mean": the mean of those items' vectors. The probe points away from what
    the column's values share, and on validation it gained over the mean at the same weight (docs/RESULTS.md,
    twenty-ninth pass). A column with a single value gets its mean. Empty and purely numeric values (a year) are
    left out; a value in two columns ("Bags" as sub-category and article type) gets the mean of its two
    directions."""
    if kind not in LABEL_KINDS:
        raise EnclipError(f"unknown label support kind {kind!r}; choose one of {', '.join(LABEL_KINDS)}")
    unknown = sorted(set(columns or ()) - set(attributes))
    if unknown:
        raise EnclipError(f"no attribute column {', '.join(map(repr, unknown))} in the catalogue (it has "
                          f"{', '.join(attributes) or 'none'}); name its attribute columns")
    supports = np.asarray(supports, np.int64)
    dim = vectors.shape[1] // members
    photos = np.asarray(vectors[supports], np.float32).reshape(len(supports), members, dim)
    directions: dict[str, list[np.ndarray]] = {}
    for name in columns or tuple(attributes):
        labels = np.array([attributes[name][p].strip() for p in supports], dtype=object)
        valid = np.array([bool(v) and not v.replace(".", "").isdigit() for v in labels], dtype=bool)
        if not valid.any():
            continue
        for value, direction in _column_directions(photos[valid], labels[valid], kind).items():
            directions.setdefault(value, []).append(direction)
    names = sorted(directions)
    out = (np.stack([l2_normalise(np.mean(directions[v], axis=0)) for v in names]) if names
           else np.zeros((0, members, dim)))
    return names, out.reshape(len(names), members * dim).astype(np.float32)


def _column_directions(photos: np.ndarray, labels: np.ndarray, kind: str) -> dict[str, np.ndarray]:
    """Each value of one column: its (K, d) unit direction over the (n, K, d) ``photos`` that carry ``labels``."""
    classes = sorted(set(labels))
    if kind == "mean" or len(classes) < 2:
        return {c: l2_normalise(photos[labels == c].mean(axis=0)) for c in classes}
    from sklearn.linear_model import LogisticRegression  # index time only

    weights = np.zeros((len(classes), photos.shape[1], photos.shape[2]), np.float32)
    for m in range(photos.shape[1]):
        probe = LogisticRegression(max_iter=300).fit(photos[:, m], labels)
        coef = probe.coef_ if len(probe.classes_) > 2 else np.vstack([-probe.coef_[0], probe.coef_[0]])
        weights[:, m] = coef[[list(probe.classes_).index(c) for c in classes]]
    return {c: l2_normalise(w) for c, w in zip(classes, weights)}
