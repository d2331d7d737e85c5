"""The Ray embedding engine against the local one: a local cluster, a two-node cluster on loopback where both
nodes work, a worker node killed mid-job, and resume across engines. Vectors must equal the local engine's."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

pytest.importorskip("ray")

from enclip.embed.catalogue import encode_catalogue  # noqa: E402
from enclip.embed.ray_engine import RayEmbedCfg, RayEmbedReport, encode_catalogue_ray, shard_path  # noqa: E402
from enclip.models.ensemble import load_model  # noqa: E402
from enclip.train.run import train_system  # noqa: E402
from tests.conftest import synthetic_catalogue, tiny_run_cfg  # noqa: E402
from tests.scale.loopback import driver, loopback_cluster  # noqa: E402

pytestmark = pytest.mark.slow

ITEMS = 400
SHARD = 10  # many small shards: the two-node job runs long enough to lose a node in the middle of it


@pytest.fixture(scope="module")
def catalogue():
    return synthetic_catalogue(ITEMS, seed=3)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, catalogue):
    return train_system(catalogue, tmp_path_factory.mktemp("model"), tiny_run_cfg(members=2, epochs=1))


@pytest.fixture(scope="module")
def local_vectors(tmp_path_factory, model_dir, catalogue):
    ensemble, _ = load_model(model_dir)
    return encode_catalogue(ensemble, catalogue, tmp_path_factory.mktemp("local"), batch_size=16, shard_size=SHARD)


def assert_same_vectors(got: np.ndarray, want: np.ndarray) -> None:
    assert got.shape == want.shape and got.dtype == want.dtype
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)


def test_local_cluster_equals_local_engine_and_resumes_its_shards(tmp_path, model_dir, catalogue, local_vectors):
    ensemble, _ = load_model(model_dir)
    work = tmp_path / "work"
    encode_catalogue(ensemble, catalogue, work, batch_size=16, shard_size=SHARD)  # the local engine's shards
    for shard in (0, 7, ITEMS // SHARD - 1):
        shard_path(work, shard).unlink()
    report = RayEmbedReport()
    vectors = encode_catalogue_ray(model_dir, catalogue, work, RayEmbedCfg(batch_size=16, shard_size=SHARD),
                                   report=report)
    assert report.items == 3 * SHARD, "only the missing shards are encoded again"
    assert_same_vectors(vectors, local_vectors)
    fresh = encode_catalogue_ray(model_dir, catalogue, tmp_path / "fresh", RayEmbedCfg(batch_size=16, shard_size=SHARD))
    assert_same_vectors(fresh, local_vectors)


def test_two_nodes_both_work_and_a_killed_worker_node_loses_and_duplicates_nothing(
        tmp_path, model_dir, catalogue, local_vectors):
    cfg = RayEmbedCfg(workers=2, cpus_per_worker=1, batch_size=16, shard_size=SHARD)
    with loopback_cluster(tmp_path) as (address, worker_node), driver(address) as ray:
        head_id = next(n["NodeID"] for n in ray.nodes() if n["Alive"] and "node:__internal_head__" in n["Resources"])
        report = RayEmbedReport()
        vectors = encode_catalogue_ray(model_dir, catalogue, tmp_path / "both", cfg, report=report)
        assert len(report.nodes) == 2, f"both nodes should encode shards, got {report.nodes}"
        assert_same_vectors(vectors, local_vectors)

        killed = RayEmbedReport()
        result: dict = {}
        job = threading.Thread(target=lambda: result.update(vectors=encode_catalogue_ray(
            model_dir, catalogue, tmp_path / "killed", cfg, report=killed)))
        job.start()
        deadline = time.monotonic() + 120
        while len(killed.nodes) < 2 and job.is_alive() and time.monotonic() < deadline:
            time.sleep(0.05)
        shards_before_kill = killed.items // SHARD
        worker_node.kill()
        job.join(timeout=300)
        assert not job.is_alive(), "the job must finish on the surviving node"
        assert shards_before_kill < ITEMS // SHARD, "the worker node must die while the job is still running"
        assert killed.nodes - {head_id}, "the worker node did encode shards before it was killed"
        assert killed.items >= ITEMS  # every shard came back at least once...
        written = sorted(p.name for p in (tmp_path / "killed").glob("shard-*.npz"))
        assert written == [shard_path(tmp_path, s).name for s in range(ITEMS // SHARD)]
        assert_same_vectors(result["vectors"], local_vectors)  # ...once each: no item lost, none duplicated


def test_cli_index_on_ray_into_milvus_equals_the_local_faiss_index(tmp_path):
    pytest.importorskip("pymilvus")
    from enclip.cli import main
    from enclip.vectors import load_index
    from enclip.vectors.milvus import release_lite
    from tests.core.test_cli import TINY_FLAGS
    from tests.data.conftest import make_items, write_hf_parquet

    data = write_hf_parquet(tmp_path / "data", make_items(50, seed=4))
    assert main(["train", "--data", str(data), "--out", str(tmp_path / "model"), *TINY_FLAGS, "--members", "2"]) == 0
    common = ["index", "--data", str(data), "--model", str(tmp_path / "model"), "--kind", "flat"]
    uri = str(tmp_path / "milvus.db")
    assert main([*common, "--out", str(tmp_path / "local")]) == 0
    assert main([*common, "--out", str(tmp_path / "ray"), "--engine", "ray", "--store", "milvus", "--uri", uri]) == 0
    local, on_ray = load_index(tmp_path / "local" / "vectors"), load_index(tmp_path / "ray" / "vectors")
    try:
        assert on_ray.kind == "milvus" and len(on_ray) == len(local) == 50
        everything = np.arange(50)
        assert_same_vectors(on_ray.reconstruct(everything), local.reconstruct(everything))
    finally:
        on_ray.close()
        release_lite(uri)
