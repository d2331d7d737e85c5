"""Searching an index: query encoding (``query``), attribute filters (``filters``), ranking (``searcher``) and
the interface a service relies on (``protocol``)."""

from enclip.fusion import FUSION_RULES
from enclip.search.protocol import SearchService
from enclip.search.query import QueryEncoder
from enclip.search.searcher import MAX_K, Hit, SearchCfg, Searcher, SearchResult, load_searcher

__all__ = ["FUSION_RULES", "MAX_K", "Hit", "QueryEncoder", "SearchCfg", "SearchResult", "SearchService", "Searcher",
           "load_searcher"]
