"""Wire formats of the search service: request/response models, request parsing and upload checks.

Everything here is independent of routing so the same checks apply to the JSON and the multipart form of a
search, and to admin uploads.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field

from PIL import Image
from pydantic import BaseModel, Field

from enclip.data import images
from enclip.errors import EnclipError
from enclip.search_request import SearchRequest, check_limits, parse_request

# Formats a shopper's photo can reasonably be in; restricting PIL's openers also keeps exotic decoders
# (EPS via ghostscript, PSD, ...) away from untrusted bytes.
ACCEPTED_FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP")
ITEM_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")
_MAGIC = ((b"\x89PNG\r\n\x1a\n", "image/png"), (b"\xff\xd8\xff", "image/jpeg"), (b"GIF87a", "image/gif"),
          (b"GIF89a", "image/gif"), (b"BM", "image/bmp"))


class ApiError(Exception):
    """An error answered as JSON ``{"error": message}`` with an HTTP status."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers


class HitOut(BaseModel):
    id: str
    score: float
    title: str
    attributes: dict[str, str]
    member_scores: list[float] = Field(description="each ensemble member's cosine for this hit")
    spread: float = Field(description="std of member scores; low means the members agree")
    votes: int = Field(description="members ranking this hit in their own top-k")
    channels: dict[str, int] = Field(default_factory=dict, description="channel -> this hit's rank in that "
                                     "channel's own list (0: the channel did not find it)")
    explanation: str = Field("", description="which channels found the hit, e.g. 'photo #3, title #1, keyword #2'")
    image_url: str


class SearchOut(BaseModel):
    hits: list[HitOut]
    low_confidence: bool = Field(description="the best hit is weak or the members disagree: treat with care")
    fusion: str
    took_ms: float
    channels: list[str] = Field(default_factory=list, description="the channels this search used")


class ItemOut(BaseModel):
    id: str
    title: str
    attributes: dict[str, str]
    image_url: str


class ErrorOut(BaseModel):
    error: str


class AdminOut(BaseModel):
    id: str
    op: str = Field(description="upsert or delete")
    seq: int | None = Field(description="changelog sequence number (null when no changelog is configured)")


ERRORS = {status: {"model": ErrorOut} for status in (400, 401, 403, 404, 413, 415, 422, 503)}
SEARCH_FORM_SCHEMA = {"type": "object", "properties": {
    "text": {"type": "string"}, "weight": {"type": "number", "default": 0.5}, "k": {"type": "integer", "default": 10},
    "fusion": {"type": "string"}, "image": {"type": "string", "format": "binary"},
    "image_id": {"type": "string", "description": "use this catalogue item's image as the image query"},
    "filter": {"type": "array", "items": {"type": "string"}, "description": "key=value, repeatable"},
    "filters": {"type": "string", "description": "JSON object attribute -> value(s)"},
    "channels": {"type": "string", "description": "comma-separated: image,text,keyword (default: all the index has)"},
    "fusion_weights": {"type": "string", "description": "JSON object channel -> weight"},
    "channel_fusion": {"type": "string", "description": "sum (default) or rrf"}}}
# The search route reads its body itself (JSON or multipart), so its OpenAPI request body is spelled out here.
SEARCH_BODY = {"requestBody": {"required": True, "content": {
    "application/json": {"schema": SearchRequest.model_json_schema()},
    "multipart/form-data": {"schema": SEARCH_FORM_SCHEMA}}}}
ADMIN_BODY = {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
    "type": "object", "required": ["item", "image"], "properties": {
        "item": {"type": "string", "description": 'JSON {"id", "title", "attributes"}'},
        "image": {"type": "string", "format": "binary"}}}}}}}


@dataclass
class SearchQuery:
    """A search request after parsing, before range checks."""

    text: str | None = None
    image: Image.Image | None = None
    image_id: str | None = None
    weight: float = 0.5
    k: int = 10
    fusion: str | None = None
    filters: dict[str, str | list[str]] = field(default_factory=dict)
    channels: list[str] | None = None
    fusion_weights: dict[str, float] | None = None
    channel_fusion: str | None = None


def image_url(item_id: str) -> str:
    return f"/items/{item_id}/image"


def query_from_json(body: bytes) -> SearchQuery:
    """Parse the JSON form of a search."""
    try:
        request = parse_request(body)
    except EnclipError as error:
        raise ApiError(422, str(error).replace("invalid search request", "invalid JSON search request", 1)) from None
    return SearchQuery(text=_blank_to_none(request.text), image_id=_blank_to_none(request.image_id),
                       weight=request.weight, k=request.k, fusion=_blank_to_none(request.fusion),
                       filters=request.filters, channels=request.channels, fusion_weights=request.fusion_weights,
                       channel_fusion=_blank_to_none(request.channel_fusion))


def query_from_form(form, image: Image.Image | None) -> SearchQuery:
    """Parse the multipart form of a search (the uploaded image is decoded by the caller)."""
    return SearchQuery(text=_blank_to_none(text_field(form, "text")), image=image,
                       image_id=_blank_to_none(text_field(form, "image_id")),
                       weight=_number_field(form, "weight", float, 0.5), k=_number_field(form, "k", int, 10),
                       fusion=_blank_to_none(text_field(form, "fusion")), filters=form_filters(form),
                       channels=_channels_field(form), fusion_weights=_weights_field(form),
                       channel_fusion=_blank_to_none(text_field(form, "channel_fusion")))


def _channels_field(form) -> list[str] | None:
    """``channels=image,text`` (or the field repeated) in a form; None when absent."""
    given = [part.strip() for entry in form.getlist("channels") for part in str(entry).split(",") if part.strip()]
    return given or None


def _weights_field(form) -> dict[str, float] | None:
    """``fusion_weights`` as a JSON object of channel -> non-negative number; None when absent."""
    raw = text_field(form, "fusion_weights")
    if not raw:
        return None
    try:
        parsed = json.loads(raw)
    except ValueError:
        parsed = None
    if not isinstance(parsed, dict) or not all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                               for v in parsed.values()):
        raise ApiError(422, "field 'fusion_weights' must be a JSON object such as {\"keyword\": 0.5}")
    return {str(k): float(v) for k, v in parsed.items()}


def form_filters(form) -> dict[str, str | list[str]]:
    """Filters given as repeated ``filter=key=value`` fields and/or one JSON object in ``filters``."""
    filters: dict[str, list[str]] = {}
    raw_json = text_field(form, "filters")
    if raw_json:
        try:
            parsed = json.loads(raw_json)
        except ValueError:
            raise ApiError(422, "field 'filters' must be a JSON object such as {\"gender\": \"Women\"}") from None
        if not isinstance(parsed, dict) or not all(_is_filter_value(v) for v in parsed.values()):
            raise ApiError(422, "field 'filters' must map attribute names to a string or a list of strings")
        for key, value in parsed.items():
            filters.setdefault(key, []).extend([value] if isinstance(value, str) else value)
    for entry in form.getlist("filter"):
        key, sep, value = str(entry).partition("=")
        if not sep or not key.strip():
            raise ApiError(422, f"filter {entry!r} must look like key=value, e.g. filter=gender=Women")
        filters.setdefault(key.strip(), []).append(value.strip())
    return {key: values[0] if len(values) == 1 else values for key, values in filters.items()}


def check_query(query: SearchQuery, filter_keys: list[str], fusion_rules: list[str], max_k: int,
                max_text_chars: int) -> None:
    """Reject out-of-range or unknown parameters before they reach the searcher."""
    if query.text is None and query.image is None and query.image_id is None:
        raise ApiError(400, "empty query: give 'text', an 'image' upload, or an 'image_id' (or several)")
    if query.text is not None and len(query.text) > max_text_chars:
        raise ApiError(422, f"text is {len(query.text)} characters long; the limit is {max_text_chars}")
    try:
        check_limits(query.k, query.weight, max_k)
    except EnclipError as error:
        raise ApiError(422, str(error)) from None
    if query.fusion is not None and query.fusion not in fusion_rules:
        raise ApiError(422, f"unknown fusion rule {query.fusion!r}; valid rules: {', '.join(fusion_rules)}")
    unknown = sorted(set(query.filters) - set(filter_keys))
    if unknown:
        raise ApiError(422, f"unknown filter key(s) {', '.join(unknown)}; valid keys: {', '.join(filter_keys)}")


def decode_image(data: bytes, max_pixels: int, name: str = "image") -> Image.Image:
    """Decode an upload with the one decoder the command line and the catalogue use, or refuse it.

    The type is decided by decoding, never by file name or declared content type, and the pixel count is checked
    from the header before any pixel is decompressed, so a tiny file declaring a huge canvas costs nothing.
    """
    if not data:
        raise ApiError(400, f"upload {name!r} is empty")
    try:
        return images.decode_image(data, max_pixels, formats=ACCEPTED_FORMATS)[0]
    except images.ImageDecodeError as error:
        if error.reason == "decompression_bomb":
            raise ApiError(400, f"upload {name!r} is too large in pixels ({error}); refusing a possible "
                                "decompression bomb") from None
        raise ApiError(400, f"upload {name!r} is not a readable image ({error}); send a "
                            f"{'/'.join(ACCEPTED_FORMATS)} file") from None


def sniff_image_type(data: bytes) -> str:
    """Content type from the leading bytes (catalogue images carry no trustworthy name)."""
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    for magic, content_type in _MAGIC:
        if data.startswith(magic):
            return content_type
    return "application/octet-stream"


def parse_item(raw: str | None) -> dict:
    """Validate the ``item`` JSON of an admin upload into ``{"id", "title", "attributes"}``."""
    if not raw:
        raise ApiError(422, "field 'item' is required: a JSON object {\"id\", \"title\", \"attributes\"}")
    try:
        item = json.loads(raw)
    except ValueError:
        raise ApiError(422, "field 'item' is not valid JSON") from None
    if not isinstance(item, dict):
        raise ApiError(422, "field 'item' must be a JSON object {\"id\", \"title\", \"attributes\"}")
    item_id, title, attributes = item.get("id"), item.get("title", ""), item.get("attributes", {})
    if isinstance(item_id, int) and not isinstance(item_id, bool):
        item_id = str(item_id)
    if not isinstance(item_id, str) or not ITEM_ID_PATTERN.match(item_id):
        raise ApiError(422, "item 'id' must be 1-128 characters of letters, digits and . _ : - "
                            "(starting with a letter or digit)")
    if not isinstance(title, str) or len(title) > 500:
        raise ApiError(422, "item 'title' must be a string of at most 500 characters")
    if not isinstance(attributes, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in attributes.items()):
        raise ApiError(422, "item 'attributes' must be an object of string values, e.g. {\"gender\": \"Men\"}")
    return {"id": item_id, "title": title, "attributes": dict(attributes)}


def _is_filter_value(value: object) -> bool:
    return isinstance(value, str) or (isinstance(value, list) and all(isinstance(v, str) for v in value))


def text_field(form, name: str) -> str | None:
    """A plain (non-file) form field, or None when absent."""
    value = form.get(name)
    if value is None:
        return None
    if not isinstance(value, str):
        raise ApiError(422, f"field {name!r} must be a plain form field, not a file")
    return value


def _number_field(form, name: str, kind: type, default):
    raw = text_field(form, name)
    if raw is None or not raw.strip():
        return default
    try:
        return kind(raw)
    except ValueError:
        raise ApiError(422, f"field {name!r} must be a {kind.__name__}, got {raw!r}") from None


def _blank_to_none(value: str | None) -> str | None:
    return value if value is not None and value.strip() else None
