"""Regression tests for the service's input-side defects of issue #11 (one decoder, offline docs)."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from enclip.data.images import load_image


def _png(img: Image.Image) -> bytes:
    buffer = io.BytesIO()
    img.save(buffer, format="PNG")
    return buffer.getvalue()


def _sixteen_bit_png() -> bytes:
    ramp = np.linspace(0, 65535, 32 * 24).reshape(24, 32).astype(np.uint16)
    img = Image.fromarray(ramp)
    assert img.mode.startswith("I;16")
    return _png(img)


def _transparent_png() -> bytes:
    rgba = Image.new("RGBA", (32, 24), (200, 30, 40, 255))
    for x in range(16):
        for y in range(24):
            rgba.putpixel((x, y), (0, 0, 0, 0))  # left half fully transparent over black
    return _png(rgba)


@pytest.mark.parametrize("make", [_sixteen_bit_png, _transparent_png], ids=["16-bit", "transparent"])
def test_http_upload_decodes_16bit_png_and_transparency_like_the_cli(client, fake, monkeypatch, make):
    received = []
    search = fake.search

    def spy(**kwargs):
        received.append(kwargs["image"])
        return search(**kwargs)

    monkeypatch.setattr(fake, "search", spy)
    data = make()
    response = client.post("/search", data={"k": "3"}, files={"image": ("photo.png", data, "image/png")})
    assert response.status_code == 200, response.text
    over_http = np.asarray(received[-1])
    from_cli = np.asarray(load_image(data))
    assert over_http.shape == from_cli.shape and np.array_equal(over_http, from_cli)
    assert over_http.min() < 100, "the photo must not decode to all white"
    if make is _transparent_png:
        assert tuple(over_http[0, 0]) == (255, 255, 255), "transparency is put on white"


def test_docs_pages_load_their_assets_from_the_service_not_a_cdn(client):
    for page in ("/docs", "/redoc"):
        response = client.get(page)
        assert response.status_code == 200
        html = response.text
        assert "cdn." not in html and "https://" not in html and "http://" not in html, page
        assets = [part.split('"')[0] for part in html.split('src="')[1:]]
        assets += [part.split('"')[0] for part in html.split('href="')[1:] if part.split('"')[0].endswith(".css")]
        assert any(a.endswith(".js") for a in assets), page
        for asset in assets:
            served = client.get(asset)
            assert served.status_code == 200 and len(served.content) > 1000, asset
