"""Attribute filters over an index's items: validated once, cached as boolean masks, in both forms engines need."""

from __future__ import annotations

import difflib
from collections.abc import Mapping

import numpy as np

from enclip.errors import EnclipError
from enclip.store import LiveCatalogue
from enclip.vectors import Where


class FilterIndex:
    """Turns ``{"gender": ["Men"], "baseColour": "Navy Blue"}`` into a :class:`Where`, caching one mask per value.

    Keys are ANDed, the values of one key ORed. A key or value no item has is an error that lists what exists, so
    a typo never silently returns nothing. Call :meth:`invalidate` after the items change.
    """

    def __init__(self, catalogue: LiveCatalogue) -> None:
        self.catalogue = catalogue
        self._masks: dict[tuple[str, str], np.ndarray] = {}
        self._values: dict[str, set[str]] | None = None

    @property
    def keys(self) -> list[str]:
        return sorted(self.catalogue.attributes)

    def invalidate(self) -> None:
        self._masks.clear()
        self._values = None

    def where(self, filters: Mapping | None, clusters: tuple[int, ...] | None = None,
              item_clusters: np.ndarray | None = None) -> Where | None:
        """The rows ``filters`` (and, optionally, membership in ``clusters``) allow; None when everything is."""
        if not filters and clusters is None:
            return None
        wanted = {key: self._check(key, values) for key, values in (filters or {}).items()}
        mask = None
        for key, values in wanted.items():
            key_mask = np.logical_or.reduce([self._mask(key, value) for value in values])
            mask = key_mask if mask is None else mask & key_mask
        if clusters is not None:
            in_clusters = np.isin(item_clusters, clusters)
            mask = in_clusters if mask is None else mask & in_clusters
        return Where(attributes=wanted, clusters=clusters, mask=mask)

    def _check(self, key: str, values) -> tuple[str, ...]:
        if key not in self.catalogue.attributes:
            raise EnclipError(f"unknown filter {key!r}; filterable attributes: {', '.join(self.keys)}")
        values = [values] if isinstance(values, str) else list(values)
        if not values or any(not isinstance(v, str) or not v for v in values):
            raise EnclipError(f"filter {key!r} needs non-empty text values, e.g. {key}=VALUE; got {values!r}")
        known = self._known()[key]
        for value in values:
            if value not in known:
                close = difflib.get_close_matches(value, sorted(known), n=3, cutoff=0.5)
                hint = f"; did you mean {' or '.join(map(repr, close))}?" if close else \
                    f"; values of {key!r} include {', '.join(map(repr, sorted(known)[:8]))}"
                raise EnclipError(f"no item has {key}={value!r}{hint}")
        return tuple(values)

    def _known(self) -> dict[str, set[str]]:
        if self._values is None:
            self._values = {key: set(values) for key, values in self.catalogue.attribute_values().items()}
        return self._values

    def _mask(self, key: str, value: str) -> np.ndarray:
        if (key, value) not in self._masks:
            self._masks[(key, value)] = np.asarray(self.catalogue.attributes[key], dtype=object) == value
        return self._masks[(key, value)]
