"""Image clusters that ensemble members specialise on (member i is trained mostly on cluster i).

Clustering is spherical k-means on L2-normalised image embeddings, done with ``faiss.Kmeans(spherical=True)``
rather than scikit-learn's ``KMeans``: faiss renormalises the centroids after every update, so the objective it
optimises is exactly the cosine assignment that :meth:`Clustering.assign` uses later (scikit-learn would run
Euclidean k-means whose mean centroids are not unit length), it supports k-means++ seeding with restarts
(``nredo``, best objective kept), it is multithreaded, and faiss is already a dependency of the index.
scikit-learn only provides the silhouette / Davies-Bouldin scores used to choose k.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import faiss
import numpy as np
from PIL import Image, ImageDraw, ImageFont, ImageOps
from sklearn.metrics import davies_bouldin_score, silhouette_score

from enclip.artifacts import atomic_file, write_json
from enclip.embed.space import l2_normalise
from enclip.errors import EnclipError

logger = logging.getLogger(__name__)

THUMB_SIZE = (60, 80)  # (width, height) of contact-sheet thumbnails, the catalogue's own portrait format
SHEET_COLUMNS = 8  # thumbnails per row in both kinds of contact sheet
LABEL_HEIGHT = 16  # pixels of caption band above a per-cluster sheet
OVERVIEW_LABEL_WIDTH = 170  # pixels of caption column left of each row in contact_sheets.png
SUMMARY_COLUMNS = ("articleType", "baseColour", "gender", "masterCategory")


@dataclass
class ClusterCfg:
    k: int | None = 5  # number of clusters; None = choose by `criterion` over k_range
    k_range: tuple[int, int] = (2, 12)  # inclusive range searched when k is None
    criterion: str = "silhouette"  # "silhouette" (higher is better) | "davies_bouldin" (lower is better)
    n_init: int = 5  # k-means restarts (best objective kept)
    max_iter: int = 50  # k-means iterations per restart
    seed: int = 0  # seeds k-means++ initialisation and the selection sample
    min_cluster_size: int = 2  # smaller clusters are merged into their nearest other centroid
    selection_sample: int = 5000  # rows sampled (seeded) for the silhouette/DB score to keep selection fast


@dataclass
class Clustering:
    centroids: np.ndarray  # (k, d) float32, L2-normalised
    assignments: np.ndarray  # (n,) int64 cluster id of each fitted row; ids ordered by size descending
    sizes: np.ndarray  # (k,) int64 rows per cluster, never zero
    scores: dict[int, float] = field(default_factory=dict)  # k -> selection score, when k was chosen automatically
    cfg: ClusterCfg | None = None  # the configuration that produced this clustering

    @property
    def k(self) -> int:
        return int(self.centroids.shape[0])

    def similarities(self, vectors: np.ndarray) -> np.ndarray:
        """(n, k) cosine similarity of each vector to each centroid; used for routing queries to members."""
        unit = _checked_unit_rows(vectors, expected_dim=self.centroids.shape[1])
        return unit @ self.centroids.T

    def assign(self, vectors: np.ndarray) -> np.ndarray:
        """Nearest centroid by inner product (ties go to the lower, i.e. larger, cluster id)."""
        return np.argmax(self.similarities(vectors), axis=1).astype(np.int64)

    def save(self, directory: Path) -> None:
        """Write centroids.npy, assignments.npy and clusters.json so the clustering reloads from disk alone."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        for name, array in (("centroids.npy", self.centroids), ("assignments.npy", self.assignments)):
            with atomic_file(directory / name) as handle:
                np.save(handle, array)
        meta = {
            "k": self.k,
            "sizes": self.sizes.tolist(),
            "scores": {str(k): v for k, v in self.scores.items()},
            "cfg": asdict(self.cfg) if self.cfg is not None else None,
        }
        write_json(directory / "clusters.json", meta)

    @classmethod
    def load(cls, directory: Path) -> "Clustering":
        directory = Path(directory)
        paths = [directory / name for name in ("centroids.npy", "assignments.npy", "clusters.json")]
        missing = [p.name for p in paths if not p.exists()]
        if missing:
            raise EnclipError(
                f"{directory} is not a saved clustering (missing {missing}); run the clustering step first")
        meta = json.loads(paths[2].read_text())
        cfg = None
        if meta.get("cfg") is not None:
            cfg = ClusterCfg(**{**meta["cfg"], "k_range": tuple(meta["cfg"]["k_range"])})
        return cls(
            centroids=np.load(paths[0]).astype(np.float32),
            assignments=np.load(paths[1]).astype(np.int64),
            sizes=np.asarray(meta["sizes"], dtype=np.int64),
            scores={int(k): float(v) for k, v in meta["scores"].items()},
            cfg=cfg,
        )


def _checked_unit_rows(vectors: np.ndarray, expected_dim: int | None = None) -> np.ndarray:
    """Float32 unit rows; zero or non-finite rows are a user error (they have no direction to cluster on)."""
    x = np.asarray(vectors, dtype=np.float32)
    if x.ndim != 2:
        raise EnclipError(f"expected a 2-D (rows, dim) embedding array, got shape {x.shape}")
    if expected_dim is not None and x.shape[1] != expected_dim:
        raise EnclipError(f"embeddings have dimension {x.shape[1]} but the clustering expects {expected_dim}; "
                          "embed with the same model that was clustered")
    if not np.isfinite(x).all():
        raise EnclipError("embeddings contain NaN or infinite values; re-encode the affected images")
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    if (norms == 0).any():
        raise EnclipError(f"{int((norms == 0).sum())} embedding rows are all zero; drop or re-encode those images")
    return np.ascontiguousarray(l2_normalise(x))


def _kmeans(unit: np.ndarray, k: int, cfg: ClusterCfg) -> np.ndarray:
    """(k, d) unit centroids of spherical k-means on all rows (no faiss subsampling, no small-n warning)."""
    n, d = unit.shape
    km = faiss.Kmeans(
        d, k, niter=cfg.max_iter, nredo=cfg.n_init, spherical=True, seed=cfg.seed, verbose=False,
        min_points_per_centroid=1, max_points_per_centroid=max(256, -(-n // k) + 1),
        init_method=faiss.ClusteringInitMethod_KMEANS_PLUS_PLUS,
    )
    km.train(unit)
    return _checked_unit_rows(km.centroids)


def _prune_and_order(unit: np.ndarray, centroids: np.ndarray, min_size: int) -> Clustering:
    """Drop clusters below min_size (smallest first) until none remain, then number clusters by size.

    Dropping a centroid and reassigning sends each of its rows to that row's nearest other centroid, and
    other clusters can only grow, so merging ends. Labels are recomputed after each reordering so that
    ``assign(fitted rows) == assignments`` holds exactly, even for rows tied between two centroids.
    Empty clusters (possible with duplicated rows) are always dropped. At least one cluster is kept.
    """
    min_size = max(1, min_size)
    for _ in range(10 * len(centroids) + 10):  # reordering settles at once bar exact ties; bound it anyway
        labels = np.argmax(unit @ centroids.T, axis=1)
        sizes = np.bincount(labels, minlength=len(centroids))
        small = np.flatnonzero(sizes < min_size)
        if small.size and len(centroids) > 1:
            centroids = np.delete(centroids, small[np.argmin(sizes[small])], axis=0)
            continue
        order = np.argsort(-sizes, kind="stable")
        if (order == np.arange(len(order))).all():
            break
        centroids = centroids[order]
    return Clustering(
        centroids=np.ascontiguousarray(centroids, dtype=np.float32),
        assignments=labels.astype(np.int64),
        sizes=sizes.astype(np.int64),
    )


def _fit_k(unit: np.ndarray, k: int, cfg: ClusterCfg) -> Clustering:
    return _prune_and_order(unit, _kmeans(unit, k, cfg), cfg.min_cluster_size)


def _selection_score(unit: np.ndarray, labels: np.ndarray, criterion: str) -> float:
    """Score of a labelling on the (sampled) rows, or NaN when it has fewer than 2 or more than n-1 clusters."""
    n_labels = len(np.unique(labels))
    if n_labels < 2 or n_labels > len(labels) - 1:
        return float("nan")
    if criterion == "silhouette":
        return float(silhouette_score(unit, labels, metric="euclidean"))
    return float(davies_bouldin_score(unit, labels))


def _select_k(unit: np.ndarray, distinct: int, cfg: ClusterCfg) -> Clustering:
    """Fit every k in k_range and keep the best-scoring one (ties and NaN-only -> the smallest k)."""
    low, high = cfg.k_range
    if low < 1 or high < low:
        raise EnclipError(f"k_range {cfg.k_range} is not an inclusive range of positive integers; use e.g. (2, 12)")
    if high > distinct:
        logger.warning("k_range upper bound %d exceeds the %d distinct rows; searching up to %d",
                       high, distinct, distinct)
    candidates = range(min(low, distinct), min(high, distinct) + 1)
    rng = np.random.default_rng(cfg.seed)
    sample = np.sort(rng.choice(len(unit), size=min(cfg.selection_sample, len(unit)), replace=False))
    sign = 1.0 if cfg.criterion == "silhouette" else -1.0
    best, best_value, scores = None, -np.inf, {}
    for k in candidates:
        clustering = _fit_k(unit, k, cfg)
        scores[k] = _selection_score(unit[sample], clustering.assignments[sample], cfg.criterion)
        value = sign * scores[k] if np.isfinite(scores[k]) else -np.inf
        if best is None or value > best_value:
            best, best_value = clustering, value
    logger.info("chose k=%d by %s: %s", best.k, cfg.criterion, scores)
    best.scores = scores
    return best


def fit_clusters(embeddings: np.ndarray, cfg: ClusterCfg) -> Clustering:
    """Spherical k-means clusters of image embeddings, deterministic for ``cfg.seed``.

    k is capped at the number of distinct (normalised) rows, because duplicated images cannot be split;
    clusters smaller than ``cfg.min_cluster_size`` are merged away and ids are ordered by size descending,
    so cluster 0 is always the largest and member 0 its specialist.
    """
    if cfg.criterion not in ("silhouette", "davies_bouldin"):
        raise EnclipError(f"unknown cluster criterion {cfg.criterion!r}; use 'silhouette' or 'davies_bouldin'")
    if cfg.k is not None and cfg.k < 1:
        raise EnclipError(f"number of clusters k={cfg.k} must be at least 1 (or None to choose it automatically)")
    if cfg.n_init < 1 or cfg.max_iter < 1:
        raise EnclipError(f"n_init={cfg.n_init} and max_iter={cfg.max_iter} must both be at least 1")
    if np.asarray(embeddings).size == 0:
        raise EnclipError("cannot cluster an empty embedding array; embed the catalogue images first")
    unit = _checked_unit_rows(embeddings)
    distinct = len(np.unique(unit, axis=0))
    if cfg.k is None:
        clustering = _select_k(unit, distinct, cfg)
    else:
        k = cfg.k
        if k > distinct:
            logger.warning("k=%d exceeds the %d distinct embedding rows (duplicate images); using k=%d",
                           k, distinct, distinct)
            k = distinct
        clustering = _fit_k(unit, k, cfg)
    clustering.cfg = cfg
    logger.info("clustered %d rows into %d clusters of sizes %s", len(unit), clustering.k, clustering.sizes.tolist())
    return clustering


def summarise_clusters(clustering: Clustering, attributes: dict[str, list[str]], top: int = 3,
                       columns: Sequence[str] = SUMMARY_COLUMNS) -> list[dict]:
    """Most common catalogue attributes per cluster, to judge what each specialist member will see.

    ``attributes`` maps a column name to one value per clustered row; requested columns it lacks are skipped.
    Counts tie-break by value so the summary is reproducible.
    """
    n = len(clustering.assignments)
    present = [c for c in columns if c in attributes]
    for column in present:
        if len(attributes[column]) != n:
            raise EnclipError(f"attribute column {column!r} has {len(attributes[column])} values but {n} rows were "
                              "clustered; pass attributes aligned with the clustered embeddings")
    summary = []
    for cluster in range(clustering.k):
        rows = np.flatnonzero(clustering.assignments == cluster)
        tops = {}
        for column in present:
            counts = Counter(str(attributes[column][i]) for i in rows)
            ranked = sorted(counts.items(), key=lambda item: (-item[1], item[0]))[:top]
            tops[column] = [[value, count] for value, count in ranked]
        summary.append({"cluster": cluster, "size": int(rows.size), "top": tops})
    return summary


def _summary_markdown(summary: list[dict]) -> str:
    columns = list(summary[0]["top"]) if summary else []
    lines = ["| cluster | size | " + " | ".join(columns) + " |", "|---|---|" + "---|" * len(columns)]
    for entry in summary:
        cells = [", ".join(f"{value} ({count})" for value, count in entry["top"][c]) for c in columns]
        lines.append(f"| {entry['cluster']} | {entry['size']} | " + " | ".join(cells) + " |")
    return "# Image clusters\n\n" + "\n".join(lines) + "\n"


def _label(entry: dict) -> str:
    article = entry["top"].get("articleType") or [["?", 0]]
    return f"cluster {entry['cluster']}  n={entry['size']}  {article[0][0]}"


def _thumbnail(image: Image.Image) -> Image.Image:
    return ImageOps.pad(image.convert("RGB"), THUMB_SIZE, color=(255, 255, 255))


def _sample_members(clustering: Clustering, cluster: int, count: int, seed: int) -> np.ndarray:
    rows = np.flatnonzero(clustering.assignments == cluster)
    rng = np.random.default_rng([seed, cluster])
    return np.sort(rng.choice(rows, size=min(count, rows.size), replace=False))


def _cluster_sheet(rows: np.ndarray, images: Callable[[int], Image.Image], label: str) -> Image.Image:
    width, height = THUMB_SIZE
    grid_rows = max(1, -(-len(rows) // SHEET_COLUMNS))
    sheet = Image.new("RGB", (width * SHEET_COLUMNS, LABEL_HEIGHT + height * grid_rows), "white")
    for slot, row in enumerate(rows):
        col, line = slot % SHEET_COLUMNS, slot // SHEET_COLUMNS
        sheet.paste(_thumbnail(images(int(row))), (col * width, LABEL_HEIGHT + line * height))
    ImageDraw.Draw(sheet).text((2, 2), label, fill="black", font=ImageFont.load_default())
    return sheet


def _overview_sheet(samples: list[np.ndarray], images: Callable[[int], Image.Image], labels: list[str]) -> Image.Image:
    width, height = THUMB_SIZE
    sheet = Image.new("RGB", (OVERVIEW_LABEL_WIDTH + width * SHEET_COLUMNS, height * len(samples)), "white")
    draw = ImageDraw.Draw(sheet)
    for line, (rows, label) in enumerate(zip(samples, labels)):
        draw.text((2, line * height + height // 2 - 6), label, fill="black", font=ImageFont.load_default())
        for col, row in enumerate(rows[:SHEET_COLUMNS]):
            sheet.paste(_thumbnail(images(int(row))), (OVERVIEW_LABEL_WIDTH + col * width, line * height))
    return sheet


def write_cluster_report(directory: Path, clustering: Clustering, attributes: dict[str, list[str]],
                         images: Callable[[int], Image.Image], per_cluster: int = 24, seed: int = 0) -> None:
    """Write summary.json, summary.md, contact_sheet_<i>.png per cluster and contact_sheets.png (all clusters).

    ``images(row)`` returns the PIL image of a clustered row; only sampled rows are loaded. The sample is
    seeded per cluster, and the overview shows the first 8 of each cluster's sample.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    summary = summarise_clusters(clustering, attributes)
    write_json(directory / "summary.json", summary)
    with atomic_file(directory / "summary.md", "w") as handle:
        handle.write(_summary_markdown(summary))
    samples = [_sample_members(clustering, c, per_cluster, seed) for c in range(clustering.k)]
    labels = [_label(entry) for entry in summary]
    for cluster, (rows, label) in enumerate(zip(samples, labels)):
        _cluster_sheet(rows, images, label).save(directory / f"contact_sheet_{cluster}.png")
    _overview_sheet(samples, images, labels).save(directory / "contact_sheets.png")
    logger.info("wrote cluster report for %d clusters to %s", clustering.k, directory)
