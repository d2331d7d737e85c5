"""Fixtures for the service tests: a FakeSearcher-backed app, admin settings, image bytes, a live server."""

from __future__ import annotations

import io
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from enclip.serve.app import ServeCfg, create_app
from tests.serve.fake_searcher import FakeSearcher

ADMIN_TOKEN = "test-admin-token-0123456789"


def image_bytes(rgb: tuple[int, int, int] = (200, 30, 40), fmt: str = "PNG", size: tuple[int, int] = (32, 32)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, rgb).save(buffer, format=fmt)
    return buffer.getvalue()


@pytest.fixture
def fake() -> FakeSearcher:
    return FakeSearcher()


@pytest.fixture
def cfg(tmp_path: Path) -> ServeCfg:
    return ServeCfg(max_upload_bytes=200_000, max_k=50, max_text_chars=100, max_image_pixels=1_000_000,
                    changelog_path=tmp_path / "changelog.jsonl")


@pytest.fixture
def admin_cfg(cfg: ServeCfg) -> ServeCfg:
    return ServeCfg(**{**cfg.__dict__, "admin_token": ADMIN_TOKEN})


@pytest.fixture
def client(fake: FakeSearcher, cfg: ServeCfg) -> Iterator[TestClient]:
    with TestClient(create_app(fake, cfg)) as test_client:
        yield test_client


@pytest.fixture
def admin_client(fake: FakeSearcher, admin_cfg: ServeCfg) -> Iterator[TestClient]:
    with TestClient(create_app(fake, admin_cfg)) as test_client:
        yield test_client


@pytest.fixture(params=["fake", "tiny-index"])
def served_searcher(request):
    """The searcher behind the live server: a FakeSearcher (exact expectations) and a real tiny trained index."""
    if request.param == "fake":
        return FakeSearcher(n=30, seed=1)
    from enclip.search import load_searcher

    return load_searcher(request.getfixturevalue("tiny_index_dir"))


@contextmanager
def running_server(app) -> Iterator[str]:
    """Serve `app` with a real uvicorn server in a thread; yields its base URL. The server listens on a socket bound
    here to a free port of 127.0.0.1 and handed over, so no other process can take the port in between."""
    import uvicorn

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    try:
        while not server.started:
            if time.monotonic() > deadline or not thread.is_alive():
                raise RuntimeError("the test server did not start")
            time.sleep(0.02)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()


@pytest.fixture
def live_server(served_searcher, tmp_path: Path) -> Iterator[str]:
    """The web page and API over `served_searcher`, on a real server; yields its base URL."""
    cfg = ServeCfg(changelog_path=tmp_path / "changelog.jsonl")
    with running_server(create_app(served_searcher, cfg)) as url:
        yield url
