"""The search API through FastAPI's TestClient: every endpoint, and every bad input a client can send."""

from __future__ import annotations

import importlib.util
import io
import json
import random
import struct
import sys
import zlib
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from enclip.errors import EnclipError
from enclip.serve.app import ServeCfg, attach_searcher, create_app, percentile, serve
from tests.serve.conftest import image_bytes, running_server
from tests.serve.fake_searcher import COLOURS, FILTER_KEYS, FUSION_RULES, FakeSearcher

REPO = Path(__file__).resolve().parents[2]


def reference_ids(fake, k, text=None, image=None, weight=0.5, keep=lambda item: True) -> list[str]:
    """Brute force: score every item the way the fake does, best first, ties by id."""
    ids = [item_id for item_id in fake._items if keep(fake.item(item_id))]
    scored = sorted(ids, key=lambda i: (-round(fake.score(i, text, image, weight), 6), i))
    return scored[:k]


def png_declaring(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims a huge canvas (a decompression bomb, as far as a decoder can tell)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(
        b"IEND", b"")


# --- searching -------------------------------------------------------------------------------------------------

def test_text_search_returns_the_reference_ranking_with_agreement_and_image_urls(client, fake):
    response = client.post("/search", json={"text": "women red dresses", "k": 5})
    assert response.status_code == 200
    body = response.json()
    assert [hit["id"] for hit in body["hits"]] == reference_ids(fake, 5, text="women red dresses")
    first = body["hits"][0]
    assert set(first) == {"id", "score", "title", "attributes", "member_scores", "spread", "votes", "channels",
                          "explanation", "image_url"}
    assert first["image_url"] == f"/items/{first['id']}/image"
    assert len(first["member_scores"]) == 3 and first["votes"] == 3 and first["spread"] > 0
    assert body["fusion"] == "mean" and body["low_confidence"] is False


def test_json_search_passes_weight_fusion_filters_and_channels_through(client, fake):
    filters = {"gender": ["Women", "Men"], "usage": "Casual"}
    response = client.post("/search", json={"text": "shirts", "k": 7, "weight": 0.3, "fusion": "rrf",
                                            "filters": filters, "channels": ["image", "keyword"],
                                            "fusion_weights": {"keyword": 0.5}, "channel_fusion": "sum"})
    assert response.status_code == 200
    assert fake.calls[-1] == {"text": "shirts", "image": None, "k": 7, "filters": filters, "weight": 0.3,
                              "fusion": "rrf", "channels": ["image", "keyword"], "fusion_weights": {"keyword": 0.5},
                              "channel_fusion": "sum"}
    form = client.post("/search", data={"text": "shirts", "channels": "image,text",
                                        "fusion_weights": '{"text": 2}'})
    assert form.status_code == 200 and fake.calls[-1]["channels"] == ["image", "text"]
    assert fake.calls[-1]["fusion_weights"] == {"text": 2.0}
    bad = client.post("/search", json={"text": "shirts", "fusion_weights": {"keyword": -1}})
    assert bad.status_code == 422 and "fusion_weights" in bad.json()["error"]
    hits = response.json()["hits"]
    assert hits and all(h["attributes"]["gender"] in ("Women", "Men") for h in hits)
    assert all(h["attributes"]["usage"] == "Casual" for h in hits)
    assert response.json()["fusion"] == "rrf"


def test_multipart_search_with_text_image_and_repeated_filters(client, fake):
    photo = image_bytes(COLOURS["Blue"])
    response = client.post("/search", data={"text": "casual", "weight": "0.25", "k": "4",
                                            "filter": ["gender=Women", "gender=Unisex", "usage=Casual"]},
                           files={"image": ("photo.png", photo, "image/png")})
    assert response.status_code == 200
    call = fake.calls[-1]
    assert call["image"] == "Image" and call["k"] == 4 and call["weight"] == 0.25
    assert call["filters"] == {"gender": ["Women", "Unisex"], "usage": "Casual"}
    keep = lambda item: item["attributes"]["gender"] in ("Women", "Unisex") and item["attributes"]["usage"] == "Casual"
    expected = reference_ids(fake, 4, text="casual", image=Image.open(io.BytesIO(photo)), weight=0.25, keep=keep)
    assert [h["id"] for h in response.json()["hits"]] == expected


def test_multipart_filters_as_a_json_string(client, fake):
    response = client.post("/search", data={"text": "watches", "filters": json.dumps({"masterCategory": "Apparel"})})
    assert response.status_code == 200
    assert fake.calls[-1]["filters"] == {"masterCategory": "Apparel"}
    assert all(h["attributes"]["masterCategory"] == "Apparel" for h in response.json()["hits"])


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP", "GIF", "BMP"])
def test_photo_search_finds_items_of_the_photos_colour(client, fmt):
    photo = image_bytes(COLOURS["Green"], fmt=fmt)
    response = client.post("/search", data={"k": "3"}, files={"image": (f"x.{fmt.lower()}", photo, "image/x")})
    assert response.status_code == 200
    assert [h["attributes"]["baseColour"] for h in response.json()["hits"]] == ["Green"] * 3


def test_similar_search_uses_the_catalogue_image_of_image_id(client, fake):
    response = client.post("/search", json={"image_id": "1000", "k": 4})
    assert response.status_code == 200
    hits = response.json()["hits"]
    assert hits[0]["id"] == "1000"  # the item is its own nearest neighbour
    assert {h["attributes"]["baseColour"] for h in hits} == {fake.item("1000")["attributes"]["baseColour"]}
    assert fake.calls[-1]["image"] == "bytes"


def test_low_confidence_flag_is_reported(client):
    assert client.post("/search", json={"text": "qwerty"}).json()["low_confidence"] is True
    assert client.post("/search", json={"text": "red"}).json()["low_confidence"] is False


# --- bad search input ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("body, status, fragment", [
    ({}, 400, "empty query"),
    ({"text": "   "}, 400, "empty query"),
    ({"text": "x" * 101}, 422, "limit is 100"),
    ({"text": "red", "k": 0}, 422, "between 1 and 50"),
    ({"text": "red", "k": 51}, 422, "between 1 and 50"),
    ({"text": "red", "k": "many"}, 422, "k"),
    ({"text": "red", "weight": 1.5}, 422, "weight"),
    ({"text": "red", "fusion": "max"}, 422, "valid rules: " + ", ".join(FUSION_RULES)),
    ({"text": "red", "filters": {"colour": "Red", "gender": "Men"}}, 422, "valid keys: " + ", ".join(FILTER_KEYS)),
    ({"text": "red", "filters": {"gender": 3}}, 422, "filters"),
    ({"image_id": "no-such-item"}, 404, "no-such-item"),
])
def test_bad_json_search_is_refused_with_a_json_error(client, body, status, fragment):
    response = client.post("/search", json=body)
    assert response.status_code == status
    assert fragment in response.json()["error"]


def test_unknown_filter_key_error_names_the_bad_key(client):
    error = client.post("/search", json={"text": "red", "filters": {"colour": "Red"}}).json()["error"]
    assert "colour" in error and "baseColour" in error


@pytest.mark.parametrize("data, status, fragment", [
    ({"k": "5"}, 400, "empty query"),
    ({"text": "red", "k": "five"}, 422, "'k' must be a int"),
    ({"text": "red", "weight": "heavy"}, 422, "'weight' must be a float"),
    ({"text": "red", "filter": "gender"}, 422, "key=value"),
    ({"text": "red", "filters": "{not json"}, 422, "JSON object"),
    ({"text": "red", "filter": "season=Summer"}, 422, "valid keys"),
])
def test_bad_form_search_is_refused(client, data, status, fragment):
    response = client.post("/search", data=data, files={"unused": ("a.txt", b"x", "text/plain")})
    assert response.status_code == status
    assert fragment in response.json()["error"]


def test_malformed_json_and_unsupported_content_type(client):
    response = client.post("/search", content=b"{nope", headers={"content-type": "application/json"})
    assert response.status_code == 422 and "invalid JSON search request" in response.json()["error"]
    response = client.post("/search", content=b"text=red", headers={"content-type": "text/plain"})
    assert response.status_code == 415


def test_both_upload_and_image_id_is_ambiguous(client):
    response = client.post("/search", data={"image_id": "1000"}, files={"image": ("a.png", image_bytes(), "image/png")})
    assert response.status_code == 422 and "not both" in response.json()["error"]


# --- uploads ---------------------------------------------------------------------------------------------------

def upload(client, data: bytes, name: str = "photo.jpg", content_type: str = "image/jpeg"):
    return client.post("/search", data={"text": "red"}, files={"image": (name, data, content_type)})


def test_corrupted_jpeg_is_refused(client):
    noise = random.Random(0).randbytes(4000)
    response = upload(client, b"\xff\xd8\xff\xe0" + noise)  # a JPEG signature, then garbage
    assert response.status_code == 400 and "not a readable image" in response.json()["error"]
    response = upload(client, noise)
    assert response.status_code == 400 and "not a readable image" in response.json()["error"]


def test_non_image_and_unaccepted_formats_are_refused(client):
    assert upload(client, b"%PDF-1.4 not a photo", "doc.pdf", "application/pdf").status_code == 400
    assert upload(client, b"hello, world\n", "photo.png", "image/png").status_code == 400
    tiff = image_bytes(fmt="TIFF")  # PIL reads it, but it is not an accepted upload format
    assert upload(client, tiff, "photo.tif", "image/tiff").status_code == 400


def test_empty_upload_is_refused(client):
    response = upload(client, b"")
    assert response.status_code == 400 and "empty" in response.json()["error"]


def test_oversized_upload_is_refused_with_413(client, cfg):
    just_over = b"\xff" * (cfg.max_upload_bytes + 1)  # body under the form allowance: caught after parsing
    response = upload(client, just_over)
    assert response.status_code == 413 and "larger than" in response.json()["error"]
    far_over = b"\xff" * (cfg.max_upload_bytes * 4)  # caught from Content-Length before reading
    assert upload(client, far_over).status_code == 413


def test_streamed_body_without_content_length_is_cut_off(client, cfg):
    def chunks():
        for _ in range(cfg.max_upload_bytes // 10_000 + 40):
            yield b" " * 10_000

    response = client.post("/search", content=chunks(), headers={"content-type": "application/json"})
    assert response.status_code == 413


@pytest.mark.parametrize("width, height", [(100_000, 100_000), (2_000, 2_000)])
def test_decompression_bomb_headers_are_refused(client, width, height):
    response = upload(client, png_declaring(width, height), "bomb.png", "image/png")
    assert response.status_code == 400 and "decompression bomb" in response.json()["error"]


def test_highly_compressible_big_canvas_is_refused(client):
    big_blank = image_bytes((0, 0, 0), size=(1_500, 1_000))  # 1.5 Mpx in a few kB; the test limit is 1 Mpx
    assert len(big_blank) < 20_000
    assert upload(client, big_blank, "blank.png", "image/png").status_code == 400


# --- items, filters, health, stats, docs -----------------------------------------------------------------------

def test_get_item_and_unknown_item(client, fake):
    response = client.get("/items/1003")
    assert response.status_code == 200
    assert response.json() == {**fake.item("1003"), "image_url": "/items/1003/image"}
    missing = client.get("/items/nope")
    assert missing.status_code == 404 and "nope" in missing.json()["error"]


@pytest.mark.parametrize("item_id, content_type", [("1000", "image/png"), ("1001", "image/jpeg")])
def test_item_image_has_sniffed_type_and_cache_headers(client, fake, item_id, content_type):
    response = client.get(f"/items/{item_id}/image")
    assert response.status_code == 200
    assert response.headers["content-type"] == content_type
    assert response.content == fake.image_bytes(item_id)
    assert response.headers["cache-control"] == "public, max-age=86400"
    assert response.headers["etag"].startswith('"')


def test_item_image_etag_gives_304(client):
    etag = client.get("/items/1000/image").headers["etag"]
    for header in (etag, f'W/{etag}', f'"other", {etag}', "*"):
        response = client.get("/items/1000/image", headers={"If-None-Match": header})
        assert response.status_code == 304 and response.content == b""
        assert response.headers["etag"] == etag
    assert client.get("/items/1000/image", headers={"If-None-Match": '"stale"'}).status_code == 200
    assert client.get("/items/1001/image").headers["etag"] != etag
    assert client.get("/items/nope/image").status_code == 404


def test_filters_lists_values_of_filter_keys_only(client, fake):
    assert client.get("/filters").json() == {key: fake.attribute_values()[key] for key in FILTER_KEYS}
    fake.filter_keys = ["gender", "usage"]
    assert list(client.get("/filters").json()) == ["gender", "usage"]


def test_health_is_503_until_a_searcher_is_attached(cfg, fake):
    app = create_app(None, cfg)
    with TestClient(app) as test_client:
        assert test_client.get("/health").status_code == 503
        loading = test_client.post("/search", json={"text": "red"})
        assert loading.status_code == 503 and "loading" in loading.json()["error"]
        attach_searcher(app, fake)
        assert test_client.get("/health").json() == {"status": "ok", "items": len(fake)}
        assert test_client.post("/search", json={"text": "red"}).status_code == 200


def test_stats_counts_requests_per_route_template(client, fake):
    for text in ("red", "blue", "green"):
        client.post("/search", json={"text": text})
    client.post("/search", json={})
    client.get("/items/1000")
    client.get("/items/1001")
    stats = client.get("/stats").json()
    assert stats["items"] == len(fake) and stats["members"] == 3 and stats["index"]["kind"] == "exact"
    search = stats["requests"]["POST /search"]
    assert (search["count"], search["errors_4xx"], search["errors_5xx"]) == (4, 1, 0)
    assert 0 < search["p50_ms"] <= search["p99_ms"]
    assert stats["requests"]["GET /items/{item_id}"]["count"] == 2


def test_percentile_is_nearest_rank():
    values = [float(v) for v in range(100, 0, -1)]
    assert (percentile(values, 50), percentile(values, 99), percentile(values, 100)) == (50.0, 99.0, 100.0)
    assert percentile([3.0, 1.0, 2.0], 50) == 2.0
    assert percentile([7.0], 99) == 7.0 and percentile([], 50) == 0.0


def test_errors_are_json_everywhere(client, fake, cfg, monkeypatch):
    assert client.get("/no/such/route").json() == {"error": "Not Found"}
    monkeypatch.setattr(fake, "search", lambda **kwargs: 1 / 0)
    with TestClient(create_app(fake, cfg), raise_server_exceptions=False) as broken:
        response = broken.post("/search", json={"text": "red"})
    assert response.status_code == 500 and "internal error" in response.json()["error"]


def test_docs_and_openapi_describe_both_search_forms(client):
    assert client.get("/docs").status_code == 200
    content = client.get("/openapi.json").json()["paths"]["/search"]["post"]["requestBody"]["content"]
    assert set(content) == {"application/json", "multipart/form-data"}


def test_page_and_static_files_are_served(client):
    page = client.get("/")
    assert page.status_code == 200 and 'name="viewport"' in page.text and 'data-testid="query"' in page.text
    assert "javascript" in client.get("/static/app.js").headers["content-type"]
    assert client.get("/static/style.css").status_code == 200


def test_default_cfg_binds_to_loopback():
    assert ServeCfg().host == "127.0.0.1" and ServeCfg().admin_token is None


def test_serve_runs_uvicorn_on_the_configured_address(fake, cfg, monkeypatch):
    import uvicorn

    seen = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, **options: seen.update(app=app, **options))
    serve(fake, ServeCfg(port=8123, changelog_path=cfg.changelog_path))
    assert (seen["host"], seen["port"]) == ("127.0.0.1", 8123)
    assert TestClient(seen["app"]).get("/health").json() == {"status": "ok", "items": len(fake)}


def test_browser_form_without_a_chosen_file_is_a_text_search(client, fake):
    response = client.post("/search", data={"text": "red"}, files={"image": ("", b"", "application/octet-stream")})
    assert response.status_code == 200 and fake.calls[-1]["image"] is None


def _load_bench(monkeypatch):
    spec = importlib.util.spec_from_file_location("enclip_bench_load", REPO / "bench" / "load.py")
    bench = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, bench)  # dataclasses look their module up there
    spec.loader.exec_module(bench)
    return bench


def test_load_bench_reports_every_level_without_errors(live_server, served_searcher, capsys, monkeypatch):
    bench = _load_bench(monkeypatch)
    assert bench.main([live_server, "--duration", "0.3", "--clients", "1,2"]) == 0
    out = capsys.readouterr().out
    table = [line for line in out.splitlines() if line.startswith("| ")]
    rows = [[cell.strip() for cell in line.strip("|").split("|")] for line in table[1:]]
    assert [row[0] for row in rows] == ["1", "2"]
    assert all(int(row[1]) >= int(row[0]) and row[2] == "0" for row in rows), out  # each client sent one or more
    if hasattr(served_searcher, "calls"):  # the FakeSearcher records what it was asked
        assert {call["image"] for call in served_searcher.calls} == {None, "Image", "bytes"}  # all three kinds


class _FailsOnPhotos(FakeSearcher):
    """A searcher that raises ``error`` on every photo search (an EnclipError: the server answers 400; anything else:
    500) and answers text searches."""

    def __init__(self, error: Exception):
        super().__init__(n=30, seed=1)
        self.error = error

    def search(self, text=None, image=None, **options):
        if image is not None:
            raise self.error
        return super().search(text=text, **options)


@pytest.mark.parametrize(("error", "status"), [(EnclipError("no photo search here"), 400),
                                               (RuntimeError("broken photo encoder"), 500)])
def test_load_bench_names_what_failed_requests_got(tmp_path, capsys, monkeypatch, error, status):
    bench = _load_bench(monkeypatch)
    cfg = ServeCfg(changelog_path=tmp_path / "changelog.jsonl")
    with running_server(create_app(_FailsOnPhotos(error), cfg)) as url:
        assert bench.main([url, "--duration", "0.5", "--clients", "1"]) == 0
    out = capsys.readouterr().out
    row = [line for line in out.splitlines() if line.startswith("| 1 ")][0].split("|")
    failed = int(row[3])
    assert 0 < failed < int(row[2])  # text queries still succeed
    # every failure is the refusal or the crash itself: after a 500 the server drops the connection and says so, so
    # the text query sent next goes on a new connection and succeeds (no ReadError)
    assert f"1 clients, failed requests: HTTP {status} × {failed}\n" in out


def test_the_fake_and_the_real_searcher_conform_to_the_service_protocol(tiny_index_dir):
    import inspect

    from enclip import load_searcher
    from enclip.search import SearchService

    real = load_searcher(tiny_index_dir)
    expected = list(inspect.signature(SearchService.search).parameters)[1:]
    for searcher in (FakeSearcher(), real):
        assert isinstance(searcher, SearchService)
        assert list(inspect.signature(searcher.search).parameters) == expected
