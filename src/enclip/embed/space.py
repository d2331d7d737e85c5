"""The vector spaces search works in, defined once.

A model with K members embeds an item as K unit vectors of dimension d. The index stores their concatenation,
``[x_1 .. x_K]`` (norm sqrt(K)); the *joint* vector is that concatenation divided by sqrt(K), a unit vector whose
inner product with another joint vector is the mean of the K member cosines. Cluster centroids and query routing
live in the joint space.
"""

from __future__ import annotations

import numpy as np


def l2_normalise(vectors: np.ndarray, axis: int = -1) -> np.ndarray:
    """Unit-length rows (along ``axis``); zero rows stay zero instead of becoming NaN."""
    vectors = np.asarray(vectors)
    vectors = vectors if np.issubdtype(vectors.dtype, np.floating) else vectors.astype(np.float32)
    return vectors / np.maximum(np.linalg.norm(vectors, axis=axis, keepdims=True), 1e-12)


def concat_members(member_vectors: np.ndarray) -> np.ndarray:
    """(K, n, d) member vectors -> (n, K*d) stored rows."""
    members, n, dim = member_vectors.shape
    return np.ascontiguousarray(member_vectors.transpose(1, 0, 2).reshape(n, members * dim))


def to_joint(stored: np.ndarray, members: int) -> np.ndarray:
    """Stored rows (..., K*d) -> joint vectors: divided by sqrt(K), so inner products are member-mean cosines."""
    return np.asarray(stored, dtype=np.float32) / np.float32(np.sqrt(members))
