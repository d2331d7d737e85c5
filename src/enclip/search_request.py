"""The search request schema, shared by the HTTP API (``POST /search``) and batch search (``--queries FILE``).

One owner for what a query may hold and for the limits on it, so a line of a queries file is accepted or refused
exactly as the same JSON body would be by the service. It needs pydantic only (a core dependency), so the command
line works without the ``serve`` extra.
"""

from __future__ import annotations

import math
from typing import Annotated

from pydantic import BaseModel, Field, ValidationError

from enclip.errors import EnclipError

MAX_K = 1000
"""Most hits one search may ask for, anywhere; the service caps it further (``ServeCfg.max_k``)."""
CHANNELS = ("image", "text", "keyword")
"""What a text query can be matched against: photos, item text (by the model's text tower), keywords (BM25)."""
CHANNEL_FUSIONS = ("rrf", "sum")
"""How channels are fused: weighted reciprocal rank, or a weighted sum of min-max normalised scores."""


class SearchRequest(BaseModel):
    """A search as JSON: the body of ``POST /search``."""

    text: str | None = Field(None, description="free-text query")
    image_id: str | None = Field(None, description="use this catalogue item's image as the image query (similar)")
    weight: Annotated[float, Field(strict=True, allow_inf_nan=False)] = Field(
        0.5, description="share of the text score when both text and an image are given (0..1)")
    k: Annotated[int, Field(strict=True)] = Field(10, description=f"number of hits (1..max_k, at most {MAX_K})")
    fusion: str | None = Field(None, description="ensemble fusion rule; the index default when omitted")
    filters: dict[str, str | list[str]] = Field(default_factory=dict, description="attribute -> value(s)")
    channels: list[str] | None = Field(
        None, description="what a text query is matched against: any of image (photos), text (item text), keyword "
        "(BM25); every channel the index has when omitted. A photo-only query always uses image.")
    fusion_weights: dict[str, Annotated[float, Field(ge=0, allow_inf_nan=False)]] | None = Field(
        None, description="weight of each channel in the fused ranking, e.g. {\"keyword\": 0.5}")
    channel_fusion: str | None = Field(None, description="sum (weighted sum of min-max normalised "
                                          "scores, the default) or rrf (weighted reciprocal rank)")


class QueryLine(SearchRequest):
    """One line of a batch queries file: a search request that may also name a query photo on disk."""

    image: str | None = Field(None, description="path of a query photo")


def parse_request(data: str | bytes, model: type[SearchRequest] = SearchRequest) -> SearchRequest:
    """Validate one JSON object; a bad one raises ``EnclipError`` naming each bad field (or the JSON error)."""
    try:
        return model.model_validate_json(data or b"{}")
    except ValidationError as error:
        raise EnclipError("invalid search request: " + summarise(error)) from None


def check_limits(k: int, weight: float, max_k: int = MAX_K) -> None:
    """Refuse a k or weight out of range, before any work is done for the query."""
    max_k = min(max_k, MAX_K)
    if not 1 <= k <= max_k:
        raise EnclipError(f"k must be between 1 and {max_k}, got {k}")
    if not (math.isfinite(weight) and 0.0 <= weight <= 1.0):
        raise EnclipError(f"weight must be between 0 and 1 (share of the text score), got {weight}")


def summarise(error: ValidationError) -> str:
    """One line per bad field, e.g. ``k: Input should be a valid integer``."""
    parts = [f"{'.'.join(str(p) for p in e['loc']) or 'body'}: {e['msg']}" for e in error.errors()]
    return "; ".join(parts)
