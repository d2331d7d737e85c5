"""An index whose vectors live in Milvus (embedded Milvus Lite) against the same index on faiss: the CLI, the Python
API and the service answer alike, and admin changes reach Milvus durably and survive a restart of the service."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("pymilvus")
pytest.importorskip("milvus_lite")

from fastapi.testclient import TestClient  # noqa: E402

from enclip.cli import main  # noqa: E402
from enclip.search import load_searcher  # noqa: E402
from enclip.serve.app import ServeCfg, create_app  # noqa: E402
from enclip.vectors.milvus import release_lite  # noqa: E402
from tests.core.test_cli import TINY_FLAGS  # noqa: E402
from tests.data.conftest import make_items, write_hf_parquet  # noqa: E402
from tests.serve.conftest import ADMIN_TOKEN, image_bytes  # noqa: E402

pytestmark = pytest.mark.slow

AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
QUERIES = [{"text": "Men Red Shirts"}, {"text": "shirt", "filters": {"gender": ["Women"]}},
           {"text": "blue", "filters": {"gender": ["Men", "Women"]}, "fusion": "rrf"},
           {"text": "watch", "channels": ["image"]}]


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("stores")
    data = write_hf_parquet(root / "data", make_items(60, seed=3))
    uri = str(root / "milvus.db")
    assert main(["train", "--data", str(data), "--out", str(root / "model"), *TINY_FLAGS,
                 "--members", "2", "--strategy", "bagging"]) == 0
    common = ["index", "--data", str(data), "--model", str(root / "model"), "--kind", "flat"]
    assert main([*common, "--out", str(root / "faiss")]) == 0
    assert main([*common, "--out", str(root / "milvus"), "--store", "milvus", "--uri", uri]) == 0
    yield root, uri
    release_lite(uri)


class Score(float):
    """A score that equals another within float32 noise (two stores sum the same float32 products in another order)."""

    def __eq__(self, other) -> bool:
        return abs(float(self) - float(other)) <= 1e-4

    __hash__ = float.__hash__


def hits(result) -> list[tuple[str, float]]:
    return [(hit["id"], Score(hit["score"])) for hit in result["hits"]]


def test_index_directory_points_at_the_milvus_collection(built):
    root, uri = built
    info = json.loads((root / "milvus" / "vectors" / "index_info.json").read_text())
    assert info["kind"] == "milvus" and info["uri"] == uri and info["n"] == 60
    assert not (root / "milvus" / "vectors" / "vectors.npy").exists(), "the vectors live in Milvus only"
    text = json.loads((root / "milvus" / "text_vectors" / "index_info.json").read_text())
    assert text["kind"] == "milvus" and text["collection"] != info["collection"], "item-text vectors: their own"


def test_cli_search_answers_alike_on_both_stores(built, capsys):
    root, _ = built
    for query in QUERIES:
        results = []
        for store in ("faiss", "milvus"):
            flags = ["--text", query["text"], "--k", "5", "--json"]
            for key, values in query.get("filters", {}).items():
                for value in values:
                    flags += ["--filter", f"{key}={value}"]
            if "fusion" in query:
                flags += ["--fusion", query["fusion"]]
            assert main(["search", "--index", str(root / store), *flags]) == 0
            results.append(hits(json.loads(capsys.readouterr().out)))
        assert results[0] == results[1] and results[0], query


def test_python_api_and_service_answer_alike(built):
    root, _ = built
    searchers = {store: load_searcher(root / store) for store in ("faiss", "milvus")}
    try:
        for query in QUERIES:
            got = {store: hits(s.search(k=5, **query).to_dict()) for store, s in searchers.items()}
            assert got["faiss"] == got["milvus"], query
        with TestClient(create_app(searchers["milvus"], ServeCfg())) as client:
            served = client.post("/search", json={"text": "shirt", "k": 5, "filters": {"gender": ["Women"]}}).json()
        assert hits(served) == hits(searchers["faiss"].search(text="shirt", k=5, filters={"gender": "Women"})
                                    .to_dict())
    finally:
        close(searchers["milvus"])


def close(searcher) -> None:
    """Stop the service's Milvus connection (and Lite's in-process server), as a process exit would."""
    searcher.index.close()
    if searcher.text_index is not None:
        searcher.text_index.close()


def serve(index, changelog):
    searcher = load_searcher(index)
    cfg = ServeCfg(admin_token=ADMIN_TOKEN, changelog_path=changelog)
    return searcher, TestClient(create_app(searcher, cfg))


def admin_changes(client) -> None:
    new = {"id": "900001", "title": "Women Purple Velvet Blazer", "attributes": {"gender": "Women"}}
    replaced = {"id": "1002", "title": "Men Green Linen Shirt", "attributes": {"gender": "Men"}}
    for item, colour in ((new, (120, 40, 160)), (replaced, (40, 160, 60))):
        response = client.post("/admin/items", data={"item": json.dumps(item)}, headers=AUTH,
                               files={"image": ("item.png", image_bytes(colour), "image/png")})
        assert response.status_code in (200, 201), response.text
    assert client.delete("/admin/items/1005", headers=AUTH).status_code in (200, 204)


def answers(client) -> list:
    queries = [{"text": "purple blazer", "k": 5}, {"text": "green shirt", "k": 5, "filters": {"gender": ["Men"]}}]
    return [hits(client.post("/search", json=q).json()) for q in queries] + [client.get("/health").json()["items"]]


def test_admin_changes_reach_milvus_durably_and_survive_a_restart(built, tmp_path):
    root, _ = built
    reference, faiss_client = serve(root / "faiss", tmp_path / "faiss.changes.jsonl")
    with faiss_client:
        admin_changes(faiss_client)
        want = answers(faiss_client)
    searcher, client = serve(root / "milvus", tmp_path / "milvus.changes.jsonl")
    with client:
        admin_changes(client)
        assert answers(client) == want
        rows = searcher.index.client.query(searcher.index.collection, filter="", output_fields=["count(*)"])
        assert rows[0]["count(*)"] == want[-1] == 60 + 1 - 1, "one added, one removed"
    close(searcher)  # the service stops; Milvus Lite's files are all that remains

    restarted, client = serve(root / "milvus", tmp_path / "milvus.changes.jsonl")  # replays the changelog
    try:
        with client:
            assert answers(client) == want
            found = restarted.index.client.query(restarted.index.collection, filter='item_id in ["1005"]',
                                                 output_fields=["item_id"])
            assert found == [], "the removed item is gone from Milvus, not only hidden"
            ids = [row["item_id"] for row in restarted.index.client.query(
                restarted.index.collection, filter="", output_fields=["item_id"], limit=1000)]
            assert len(ids) == len(set(ids)) == 60, "no row duplicated by the replay"
            assert np.isin(["900001", "1002"], ids).all()
    finally:
        close(restarted)


@pytest.mark.realdata
def test_milvus_hnsw_recall_on_real_embeddings(real_data, tmp_path):
    """Milvus HNSW against exact search on real photo embeddings (the default trunk, K=5 heads: 1,280 numbers),
    after its index build has finished."""
    import torch

    from enclip.data.catalogue import load_catalogue
    from enclip.embed.catalogue import encode_catalogue
    from enclip.models.ensemble import Ensemble, HeadCfg
    from enclip.models.registry import create_backbone
    from enclip.vectors import IndexCfg, ItemFields, create_index
    from tests.vectors.test_congruence import recall

    catalogue = load_catalogue(real_data, limit=3000, validate_images=False)[0]
    torch.manual_seed(0)
    vectors = encode_catalogue(Ensemble(create_backbone("offline"), HeadCfg(), members=5), catalogue, tmp_path / "w")
    queries, gallery = vectors[:100], vectors[100:]
    fields = ItemFields(ids=catalogue.ids[100:], attributes={"gender": catalogue.attributes["gender"][100:]})
    uri = str(tmp_path / "real.db")
    exact, hnsw = create_index(gallery.shape[1], IndexCfg(kind="exact")), create_index(
        gallery.shape[1], IndexCfg(kind="milvus", milvus_uri=uri, milvus_index="hnsw"))
    try:
        exact.add(gallery)
        hnsw.add(gallery, fields)
        hnsw.wait_for_index()
        assert recall(hnsw.search(queries, 10)[1], exact.search(queries, 10)[1]) >= 0.95
    finally:
        hnsw.close()
