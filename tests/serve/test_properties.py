"""Property-based tests of the service's input boundary: any JSON body, any filters, any bytes as an upload.

Property: never a 500; either a JSON error with a 4xx status, or hits that honour k and every filter. Run against
the fake searcher (exact expectations, fast) and a real tiny trained index. Few derandomised examples by default,
many random ones in the ``slow`` set.
"""

from __future__ import annotations

import json

import pytest
from fastapi.testclient import TestClient
from hypothesis import given
from hypothesis import strategies as st

from enclip.serve.app import ServeCfg, create_app
from tests.serve.fake_searcher import FakeSearcher
from tests.strategies import ANY_JSON, FAST, FILTERS, SEARCH_BODY, SLOW, image_like_bytes


def check_answer(response, body) -> None:
    assert response.status_code != 500 and response.status_code in (200, 400, 404, 413, 415, 422), response.text
    answer = response.json()
    if response.status_code != 200:
        assert isinstance(answer["error"], str) and answer["error"]
        return
    assert isinstance(body, dict) and len(answer["hits"]) <= body.get("k", 10)
    for key, wanted in (body.get("filters") or {}).items():
        wanted = [wanted] if isinstance(wanted, str) else wanted
        assert all(hit["attributes"][key] in wanted for hit in answer["hits"]), (key, wanted)


def upload(client, data: bytes):
    return client.post("/search", data={"text": "red", "k": "3"}, files={"image": ("p.jpg", data, "image/jpeg")})


def post_json(client, body):
    return client.post("/search", content=json.dumps(body).encode(), headers={"content-type": "application/json"})


@pytest.fixture(scope="module")
def fake_client():
    with TestClient(create_app(FakeSearcher(), ServeCfg(max_k=50, max_image_pixels=1_000_000))) as client:
        yield client


@pytest.fixture(scope="module")
def real_client(tiny_index_dir):
    from enclip.search import load_searcher

    with TestClient(create_app(load_searcher(tiny_index_dir), ServeCfg(max_k=50))) as client:
        yield client


@FAST
@given(SEARCH_BODY)
def test_any_json_search_body_gives_hits_or_a_json_error(fake_client, body):
    check_answer(post_json(fake_client, body), body)


@FAST
@given(st.text(max_size=30) | FILTERS, FILTERS)
def test_any_filters_on_the_real_index_give_matching_hits_or_a_json_error(real_client, text, filters):
    body = {"text": text if isinstance(text, str) and text.strip() else "shirt", "k": 5, "filters": filters}
    check_answer(post_json(real_client, body), body)


@FAST
@given(image_like_bytes())
def test_any_bytes_uploaded_as_a_photo_give_hits_or_a_json_error(fake_client, data):
    check_answer(upload(fake_client, data), {"k": 3})


@pytest.mark.slow
@SLOW
@given(SEARCH_BODY | ANY_JSON)
def test_any_json_search_body_gives_hits_or_a_json_error_many(fake_client, real_client, body):
    check_answer(post_json(fake_client, body), body)
    check_answer(post_json(real_client, body), body)


@pytest.mark.slow
@SLOW
@given(image_like_bytes())
def test_any_bytes_uploaded_as_a_photo_give_hits_or_a_json_error_many(real_client, data):
    check_answer(upload(real_client, data), {"k": 3})
