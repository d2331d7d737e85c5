"""Spherical k-means clusters: recovery of separated blobs, k selection, edge cases, persistence, report."""

import json
import logging

import numpy as np
import pytest
from PIL import Image
from sklearn.metrics import adjusted_rand_score

from enclip.cluster.kmeans import ClusterCfg, Clustering, fit_clusters, summarise_clusters, write_cluster_report
from enclip.errors import EnclipError


def blobs(k=4, per=30, dim=16, spread=0.05, seed=0):
    """Seeded points around k random unit directions, with their true labels."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(k, dim))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    labels = np.repeat(np.arange(k), per)
    points = centres[labels] + rng.normal(0, spread, size=(k * per, dim))
    return points.astype(np.float32), labels


def test_recovers_separated_blobs_exactly():
    points, labels = blobs(k=4)
    clustering = fit_clusters(points, ClusterCfg(k=4))
    assert adjusted_rand_score(labels, clustering.assignments) == 1.0
    assert clustering.assignments.dtype == np.int64 and clustering.sizes.tolist() == [30, 30, 30, 30]
    np.testing.assert_allclose(np.linalg.norm(clustering.centroids, axis=1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(clustering.assign(points), clustering.assignments)
    sims = clustering.similarities(points * 3.0)
    assert sims.shape == (120, 4) and sims.max() <= 1.0 + 1e-5


@pytest.mark.parametrize("criterion", ["silhouette", "davies_bouldin"])
def test_chooses_true_k_for_separated_blobs(criterion):
    points, labels = blobs(k=5, per=20)
    clustering = fit_clusters(points, ClusterCfg(k=None, k_range=(2, 8), criterion=criterion, n_init=2))
    assert clustering.k == 5
    assert sorted(clustering.scores) == list(range(2, 9))
    assert adjusted_rand_score(labels, clustering.assignments) == 1.0


def test_ids_are_ordered_by_size_descending():
    rng = np.random.default_rng(1)
    directions = np.eye(3, 8)
    sizes = [5, 20, 11]
    points = np.vstack([directions[i] + rng.normal(0, 0.02, size=(s, 8)) for i, s in enumerate(sizes)])
    clustering = fit_clusters(points, ClusterCfg(k=3))
    assert clustering.sizes.tolist() == [20, 11, 5]
    assert np.bincount(clustering.assignments).tolist() == [20, 11, 5]
    assert (clustering.assignments[5:25] == 0).all()


def test_k_above_distinct_rows_is_reduced_with_warning(caplog):
    rows = np.repeat(np.eye(3, 6, dtype=np.float32), 10, axis=0)  # 30 rows, 3 distinct images
    with caplog.at_level(logging.WARNING, logger="enclip.cluster.kmeans"):
        clustering = fit_clusters(rows, ClusterCfg(k=5))
    assert "distinct" in caplog.text
    assert clustering.k == 3 and clustering.sizes.tolist() == [10, 10, 10]
    assert adjusted_rand_score(np.repeat(np.arange(3), 10), clustering.assignments) == 1.0


def test_single_distinct_row_gives_one_cluster():
    clustering = fit_clusters(np.ones((7, 4)), ClusterCfg(k=3))
    assert clustering.k == 1 and clustering.sizes.tolist() == [7]
    assert (clustering.assignments == 0).all()


def test_tiny_cluster_is_merged_into_nearest_other_centroid():
    rng = np.random.default_rng(2)
    big_a = np.array([1.0, 0.0, 0.0, 0.0]) + rng.normal(0, 0.02, size=(20, 4))
    big_b = np.array([0.0, 1.0, 0.0, 0.0]) + rng.normal(0, 0.02, size=(20, 4))
    # two outliers close to each other and nearer to blob A than to blob B
    outliers = np.array([[0.5, 0.0, 0.85, 0.0], [0.5, 0.0, 0.87, 0.0]])
    points = np.vstack([big_a, big_b, outliers])
    kept = fit_clusters(points, ClusterCfg(k=3, min_cluster_size=2))
    assert kept.k == 3 and sorted(kept.sizes.tolist()) == [2, 20, 20]
    merged = fit_clusters(points, ClusterCfg(k=3, min_cluster_size=3))
    assert merged.k == 2 and merged.sizes.tolist() == [22, 20]
    a_label = merged.assignments[0]
    assert (merged.assignments[:20] == a_label).all() and (merged.assignments[40:] == a_label).all()
    assert (merged.assignments[20:40] != a_label).all()
    np.testing.assert_array_equal(merged.assign(points), merged.assignments)
    assert set(np.unique(merged.assignments)) == {0, 1}


def test_no_empty_cluster_and_ids_contiguous():
    points, _ = blobs(k=3, per=4, dim=5, spread=0.3, seed=3)
    for k in range(1, 13):
        clustering = fit_clusters(points, ClusterCfg(k=k, min_cluster_size=1))
        assert (clustering.sizes > 0).all()
        assert np.bincount(clustering.assignments, minlength=clustering.k).tolist() == clustering.sizes.tolist()
        assert (np.diff(clustering.sizes) <= 0).all()


@pytest.mark.parametrize("bad", [np.zeros((0, 8)), np.array([])])
def test_empty_input_raises(bad):
    with pytest.raises(EnclipError, match="empty"):
        fit_clusters(bad, ClusterCfg(k=2))


@pytest.mark.parametrize("cfg", [ClusterCfg(k=0), ClusterCfg(k=-2), ClusterCfg(criterion="elbow")])
def test_invalid_config_raises(cfg):
    with pytest.raises(EnclipError):
        fit_clusters(blobs()[0], cfg)


def test_zero_rows_raise():
    points = blobs()[0]
    points[3] = 0.0
    with pytest.raises(EnclipError, match="zero"):
        fit_clusters(points, ClusterCfg(k=2))


def test_deterministic_for_a_seed():
    points, _ = blobs(k=6, per=15, spread=0.4, seed=4)
    first = fit_clusters(points, ClusterCfg(k=6, seed=7))
    second = fit_clusters(points, ClusterCfg(k=6, seed=7))
    np.testing.assert_array_equal(first.assignments, second.assignments)
    np.testing.assert_array_equal(first.centroids, second.centroids)


def test_fit_does_not_mutate_input():
    points, _ = blobs()
    before = points.copy()
    fit_clusters(points, ClusterCfg(k=4))
    np.testing.assert_array_equal(points, before)


def test_save_load_roundtrip(tmp_path):
    points, _ = blobs(k=3, per=10)
    original = fit_clusters(points, ClusterCfg(k=None, k_range=(2, 4), seed=3))
    original.save(tmp_path / "clusters")
    loaded = Clustering.load(tmp_path / "clusters")
    np.testing.assert_array_equal(loaded.centroids, original.centroids)
    np.testing.assert_array_equal(loaded.assignments, original.assignments)
    np.testing.assert_array_equal(loaded.sizes, original.sizes)
    assert loaded.scores == pytest.approx(original.scores) and set(loaded.scores) == {2, 3, 4}
    assert loaded.cfg == original.cfg
    np.testing.assert_array_equal(loaded.assign(points), original.assign(points))
    with pytest.raises(EnclipError):
        Clustering.load(tmp_path / "missing")


def _catalogue():
    points, _ = blobs(k=3, per=10, seed=5)
    clustering = fit_clusters(points, ClusterCfg(k=3))
    article = {0: "Tshirts", 1: "Shoes", 2: "Watches"}
    attributes = {
        "articleType": [article[c] for c in clustering.assignments],
        "baseColour": ["Blue" if i % 3 else "Red" for i in range(30)],
    }
    return clustering, attributes


def test_summarise_clusters_counts_top_values():
    clustering, attributes = _catalogue()
    summary = summarise_clusters(clustering, attributes, top=2)
    assert [entry["size"] for entry in summary] == clustering.sizes.tolist()
    for entry in summary:
        rows = np.flatnonzero(clustering.assignments == entry["cluster"])
        assert entry["top"]["articleType"] == [[attributes["articleType"][rows[0]], len(rows)]]
        reds = sum(attributes["baseColour"][i] == "Red" for i in rows)
        expected = sorted([["Blue", len(rows) - reds], ["Red", reds]], key=lambda item: (-item[1], item[0]))
        assert entry["top"]["baseColour"] == [pair for pair in expected if pair[1] > 0]
    assert "gender" not in summary[0]["top"]
    with pytest.raises(EnclipError):
        summarise_clusters(clustering, {"articleType": ["x"]})


def test_write_cluster_report_writes_readable_sheets(tmp_path):
    clustering, attributes = _catalogue()
    colours = [(255, 0, 0), (0, 255, 0), (0, 0, 255)]
    loaded = []

    def image(row):
        loaded.append(row)
        return Image.new("RGB", (30, 40) if row % 2 else (120, 90), colours[clustering.assignments[row]])

    write_cluster_report(tmp_path, clustering, attributes, image, per_cluster=4)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary == json.loads(json.dumps(summarise_clusters(clustering, attributes)))
    assert "| cluster | size |" in (tmp_path / "summary.md").read_text()
    assert len(loaded) == 3 * 4 * 2  # 4 sampled rows per cluster, in the per-cluster and overview sheets
    for cluster in range(3):
        with Image.open(tmp_path / f"contact_sheet_{cluster}.png") as sheet:
            assert sheet.size == (8 * 60, 16 + 80)
            # the first thumbnail is filled with the cluster's colour (padding is white)
            assert sheet.convert("RGB").getpixel((30, 16 + 40)) == colours[cluster]
    with Image.open(tmp_path / "contact_sheets.png") as overview:
        assert overview.size == (170 + 8 * 60, 3 * 80)
        assert overview.convert("RGB").getpixel((170 + 30, 80 + 40)) == colours[1]
