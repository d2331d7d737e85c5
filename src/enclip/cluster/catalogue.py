"""Where clustering meets the models: cluster a catalogue's train images and write the readable report.

Base features are the frozen image trunk's outputs averaged over space (cached anyway for training, so clustering
costs nothing extra); ``enclip cluster --model DIR`` clusters a fine-tuned model's image embeddings instead.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from enclip.artifacts import write_json
from enclip.cluster.kmeans import ClusterCfg, Clustering, fit_clusters, write_cluster_report
from enclip.data.catalogue import Catalogue
from enclip.data.split import split_indices
from enclip.embed.space import l2_normalise
from enclip.errors import EnclipError
from enclip.models.ensemble import Ensemble, HeadCfg, load_model
from enclip.models.registry import create_backbone

log = logging.getLogger(__name__)


def cluster_and_report(features: np.ndarray, positions: np.ndarray, catalogue: Catalogue, directory: Path,
                       cfg: ClusterCfg) -> Clustering:
    """Fit clusters on ``features`` (rows = catalogue ``positions``) and write centroids, summary and contact sheets."""
    clustering = fit_clusters(l2_normalise(features.astype(np.float32)), cfg)
    attributes = {name: [values[p] for p in positions] for name, values in catalogue.attributes.items()}
    write_cluster_report(directory, clustering, attributes, lambda row: catalogue.image(int(positions[row])))
    clustering.save(directory)
    write_json(directory / "item_ids.json", {"ids": [catalogue.ids[p] for p in positions]})
    log.info("clusters: k=%d, sizes %s", clustering.k, clustering.sizes.tolist())
    return clustering


def _embed_train_images(catalogue: Catalogue, positions: np.ndarray, model: str | None) -> np.ndarray:
    if model:
        ensemble, _ = load_model(model)
    else:
        ensemble = Ensemble(create_backbone("offline"), HeadCfg(trainable_image=0, trainable_text=0, colour=False))
    chunks = []
    for start in range(0, len(positions), 256):
        images = [catalogue.image(int(p)) for p in positions[start : start + 256]]
        if model:
            members = ensemble.encode_images(images)  # (K, B, d): cluster in the joint space of all members
            chunks.append(members.transpose(1, 0, 2).reshape(len(images), -1))
        else:
            chunks.append(ensemble.image_features(images).float().numpy())
    return np.concatenate(chunks)


def cluster_catalogue(catalogue: Catalogue, out_dir: Path, k: int | None = None,
                      k_range: tuple[int, int] = (2, 12), model: str | None = None, seed: int = 0) -> Clustering:
    """``enclip cluster``: cluster the train split's images (never test items) and write the report."""
    positions = split_indices(catalogue.ids)["train"]
    if not len(positions):
        raise EnclipError("the catalogue has no train items to cluster (ids ending in 0 and 1 are held out)")
    features = _embed_train_images(catalogue, positions, model)
    cfg = ClusterCfg(k=k, k_range=k_range, seed=seed)
    return cluster_and_report(features, positions, catalogue, Path(out_dir), cfg)
