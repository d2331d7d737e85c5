"""Specialist assignment for the ``cluster`` strategy: one image cluster per ensemble member."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np

from enclip.cluster.catalogue import cluster_and_report
from enclip.cluster.kmeans import ClusterCfg, Clustering
from enclip.data.catalogue import Catalogue
from enclip.errors import EnclipError


def member_clusters(pooled: np.ndarray, positions: np.ndarray, catalogue: Catalogue, directory: Path,
                    members: int, cfg: ClusterCfg) -> Clustering:
    """One cluster per ensemble member, on the cached trunk features of the train items (reused on resume)."""
    if (directory / "clusters.json").exists():
        return Clustering.load(directory)
    clustering = cluster_and_report(pooled, positions, catalogue, directory, replace(cfg, k=members))
    if clustering.k != members:
        raise EnclipError(
            f"clustering found only {clustering.k} usable clusters for {members} members; "
            "use fewer members or the seeds/bagging strategy"
        )
    return clustering
