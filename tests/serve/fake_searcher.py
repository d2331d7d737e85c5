"""A small, deterministic stand-in for `enclip.search.Searcher`, for the service tests.

Items are seeded synthetic products whose photo is a flat colour block; text scores are word overlap with the
title and attributes, image scores are closeness of mean colour. That is crude but exact, so tests can work
out by hand which items a query must return.
"""

from __future__ import annotations

import io
import random
import re
import statistics
import threading

from PIL import Image, ImageDraw, ImageStat

from enclip.errors import EnclipError
from enclip.fusion import FUSION_RULES
from enclip.search import Hit, SearchResult  # the real result types, so the API is tested on them

COLOURS = {"Red": (200, 30, 40), "Blue": (30, 60, 200), "Green": (30, 160, 60), "Black": (20, 20, 20),
           "White": (240, 240, 240), "Yellow": (230, 210, 40)}
ARTICLES = {"Tshirts": "Apparel", "Shirts": "Apparel", "Jeans": "Apparel", "Dresses": "Apparel",
            "Watches": "Accessories", "Casual Shoes": "Footwear"}
GENDERS = ("Men", "Women", "Unisex")
USAGES = ("Casual", "Formal", "Sports")
FILTER_KEYS = ["gender", "masterCategory", "articleType", "baseColour", "usage"]
MEMBER_FACTORS = (1.0, 0.9, 1.1)  # three "ensemble members" that scale the base score differently
LOW_CONFIDENCE_BELOW = 0.34
_MAX_COLOUR_DISTANCE = (3 * 255**2) ** 0.5


def colour_image(rgb: tuple[int, int, int], fmt: str = "PNG", size: tuple[int, int] = (48, 64)) -> bytes:
    """A flat colour block with a small darker band (a product shot, at a squint)."""
    image = Image.new("RGB", size, rgb)
    band = tuple(max(0, c - 60) for c in rgb)
    ImageDraw.Draw(image).rectangle([size[0] // 4, size[1] // 3, size[0] // 2, size[1] // 3 + 3], fill=band)
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **({"quality": 90} if fmt == "JPEG" else {}))
    return buffer.getvalue()


def seeded_catalogue(n: int = 24, seed: int = 0) -> list[tuple[dict, bytes]]:
    """`n` synthetic products with photos; every colour occurs, PNG and JPEG alternate."""
    rng = random.Random(seed)
    catalogue = []
    for index in range(n):
        colour = list(COLOURS)[index % len(COLOURS)]
        article = rng.choice(list(ARTICLES))
        gender, usage = rng.choice(GENDERS), rng.choice(USAGES)
        attributes = {"gender": gender, "masterCategory": ARTICLES[article], "articleType": article,
                      "baseColour": colour, "usage": usage}
        item = {"id": str(1000 + index), "title": f"{gender} {colour} {article} {usage}", "attributes": attributes}
        catalogue.append((item, colour_image(COLOURS[colour], "PNG" if index % 2 == 0 else "JPEG")))
    return catalogue


def words(text: str) -> set[str]:
    return set(re.findall(r"[a-z0-9]+", text.lower()))


def mean_colour(image: Image.Image) -> tuple[float, float, float]:
    return tuple(ImageStat.Stat(image.convert("RGB")).mean)


class FakeSearcher:
    """Implements the Searcher interface the service relies on; records each search call in `calls`."""

    filter_keys = FILTER_KEYS
    fusion_rules = list(FUSION_RULES)

    def __init__(self, n: int = 24, seed: int = 0) -> None:
        self._lock = threading.Lock()
        self._items: dict[str, dict] = {}
        self._images: dict[str, bytes] = {}
        self._colours: dict[str, tuple[float, float, float]] = {}
        self.calls: list[dict] = []
        catalogue = seeded_catalogue(n, seed)
        self.add_items([item for item, _ in catalogue], [image for _, image in catalogue])

    def __len__(self) -> int:
        return len(self._items)

    def search(self, text=None, image=None, k=10, filters=None, weight=0.5, fusion=None, clusters=None, channels=None,
               fusion_weights=None, channel_fusion=None):
        if text is None and image is None:
            raise EnclipError("nothing to search for: give text or an image")
        if fusion is not None and fusion not in self.fusion_rules:
            raise EnclipError(f"unknown fusion {fusion!r}")
        unknown = set(filters or {}) - set(self.filter_keys)
        if unknown:
            raise EnclipError(f"unknown filter keys {sorted(unknown)}")
        query_colour = None if image is None else mean_colour(_as_image(image))
        self.calls.append({"text": text, "image": type(image).__name__ if image is not None else None, "k": k,
                           "filters": filters, "weight": weight, "fusion": fusion,
                           "channels": channels, "fusion_weights": fusion_weights, "channel_fusion": channel_fusion})
        with self._lock:
            scored = [(self._score(item_id, text, query_colour, weight), item_id) for item_id in self._items
                      if _passes(self._items[item_id]["attributes"], filters or {})]
        scored.sort(key=lambda pair: (-pair[0], pair[1]))
        hits = [self._hit(item_id, score) for score, item_id in scored[:k]]
        low = not hits or hits[0].score < LOW_CONFIDENCE_BELOW
        return SearchResult(hits=hits, low_confidence=low, fusion=fusion or "mean", took_ms=0.5)

    def score(self, item_id: str, text=None, image=None, weight=0.5) -> float:
        """The score `search` gives one item (the brute-force reference for tests)."""
        query_colour = None if image is None else mean_colour(_as_image(image))
        return self._score(item_id, text, query_colour, weight)

    def _score(self, item_id: str, text, query_colour, weight: float) -> float:
        item = self._items[item_id]
        text_score = image_score = 0.0
        if text is not None:
            query_words = words(text)
            item_words = words(item["title"] + " " + " ".join(item["attributes"].values()))
            text_score = len(query_words & item_words) / max(1, len(query_words))
        if query_colour is not None:
            distance = sum((a - b) ** 2 for a, b in zip(query_colour, self._colours[item_id])) ** 0.5
            image_score = 1.0 - distance / _MAX_COLOUR_DISTANCE
        if text is not None and query_colour is not None:
            return weight * text_score + (1 - weight) * image_score
        return text_score if text is not None else image_score

    def _hit(self, item_id: str, score: float) -> Hit:
        item = self._items[item_id]
        members = [round(score * factor, 6) for factor in MEMBER_FACTORS]
        return Hit(id=item_id, score=round(score, 6), title=item["title"], attributes=dict(item["attributes"]),
                   member_scores=members, spread=statistics.pstdev(members), votes=len(members))

    def attribute_values(self) -> dict[str, list[str]]:
        with self._lock:
            keys = {key for item in self._items.values() for key in item["attributes"]}
            return {key: sorted({item["attributes"][key] for item in self._items.values()
                                 if key in item["attributes"]}) for key in sorted(keys)}

    def item(self, item_id: str) -> dict:
        with self._lock:
            if item_id not in self._items:
                raise EnclipError(f"unknown item {item_id!r}")
            return dict(self._items[item_id])

    def image_bytes(self, item_id: str) -> bytes:
        with self._lock:
            if item_id not in self._images:
                raise EnclipError(f"unknown item {item_id!r}")
            return self._images[item_id]

    def stats(self) -> dict:
        return {"items": len(self), "members": len(MEMBER_FACTORS), "backbone": "fake",
                "index": {"kind": "exact", "dim": 3}}

    def add_items(self, items: list[dict], images: list[bytes]) -> None:
        if len(items) != len(images):
            raise EnclipError("add_items needs one image per item")
        colours = [mean_colour(_as_image(data)) for data in images]
        with self._lock:
            for item, data, colour in zip(items, images, colours):
                self._items[item["id"]] = {"id": item["id"], "title": item["title"],
                                           "attributes": dict(item["attributes"])}
                self._images[item["id"]] = data
                self._colours[item["id"]] = colour

    def remove_items(self, ids: list[str]) -> None:
        with self._lock:
            missing = [item_id for item_id in ids if item_id not in self._items]
            if missing:
                raise EnclipError(f"unknown items {missing}")
            for item_id in ids:
                del self._items[item_id], self._images[item_id], self._colours[item_id]


def _as_image(image) -> Image.Image:
    return Image.open(io.BytesIO(image)) if isinstance(image, bytes) else image


def _passes(attributes: dict[str, str], filters: dict) -> bool:
    for key, wanted in filters.items():
        allowed = [wanted] if isinstance(wanted, str) else list(wanted)
        if attributes.get(key) not in allowed:
            return False
    return True
