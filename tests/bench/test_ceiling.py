"""The ceilings of bench/ceiling.py, from the catalogue's labels."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from bench.ceiling import attribute_ceiling, ceiling, value_sizes
from enclip.eval.tasks import MISSING_VALUES


def test_a_value_with_fewer_items_than_k_caps_its_precision():
    assert attribute_ceiling([1, 10, 20]) == pytest.approx((0.1 + 1.0 + 1.0) / 3)
    assert attribute_ceiling([25, 30], k=10) == 1.0


def test_value_sizes_count_every_known_value_of_each_attribute(catalogue):
    sizes = value_sizes(catalogue)
    assert sizes and all(sizes.values())
    for name, counted in sizes.items():
        known = Counter(v for v in catalogue.attributes[name] if v not in MISSING_VALUES)
        assert sorted(counted) == sorted(known.values())


def test_title_ceiling_is_one_over_group_size_when_groups_are_large(catalogue):
    queries = np.arange(len(catalogue))
    exact = ceiling(catalogue, ("title",), queries, k=1)
    counts = Counter(catalogue.titles)
    assert exact == pytest.approx(np.mean([1 / counts[t] for t in catalogue.titles]))
