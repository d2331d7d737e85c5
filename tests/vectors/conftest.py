"""Shared helpers for the index tests."""

from __future__ import annotations

import faiss
import numpy as np
import pytest


@pytest.fixture(autouse=True, scope="module")
def single_faiss_thread():
    """faiss's OpenMP threads spin against each other on a small shared machine (5x slower builds); the tests are
    the caller here, so they choose one thread."""
    previous = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    yield
    faiss.omp_set_num_threads(previous)


def normalise(a: np.ndarray) -> np.ndarray:
    return (a / np.linalg.norm(a, axis=1, keepdims=True)).astype(np.float32)
