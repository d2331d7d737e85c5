"""Property-based tests of batch search (``enclip search --queries FILE``): any lines, one answer each.

Property: whatever the file holds, every non-blank line gets exactly one JSON answer naming its line, with hits
that honour k and the filters or with an error; the run never raises, and its exit code says whether any line failed.
"""

from __future__ import annotations

import contextlib
import io
import json
import tempfile
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from enclip.cli import _batch_search
from tests.strategies import ANY_JSON, FAST, SEARCH_BODY, SLOW, TEXT

QUERY_LINE = SEARCH_BODY.flatmap(lambda body: st.fixed_dictionaries(
    {}, optional={"image": st.sampled_from(["", "missing.jpg", "/dev/null", "."]) | ANY_JSON}).map(
    lambda extra: {**body, **extra}))
LINE = st.one_of(QUERY_LINE.map(json.dumps), ANY_JSON.map(json.dumps), TEXT, st.binary(max_size=40).map(
    lambda data: data.decode("latin-1")))
OPTIONS = {"k": 4, "filters": {}, "weight": 0.5, "fusion": None, "clusters": None}


@pytest.fixture(scope="module")
def searcher(tiny_index_dir):
    from enclip.search import load_searcher

    return load_searcher(tiny_index_dir)


def check_batch(searcher, lines: list[str | bytes]) -> None:
    data = b"\n".join(line if isinstance(line, bytes) else line.encode("utf-8", "surrogatepass") for line in lines)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "queries.jsonl"
        path.write_bytes(data)
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            code = _batch_search(searcher, path, dict(OPTIONS))
    answers = [json.loads(line) for line in out.getvalue().splitlines()]
    expected = [n for n, line in enumerate(data.splitlines(), 1) if line.strip()]
    assert [answer["line"] for answer in answers] == expected
    for answer in answers:
        assert ("error" in answer) != ("hits" in answer), answer
        if "hits" in answer:
            query = json.loads(data.splitlines()[answer["line"] - 1])
            assert len(answer["hits"]) <= query.get("k", OPTIONS["k"])
            for key, wanted in (query.get("filters") or {}).items():
                wanted = [wanted] if isinstance(wanted, str) else wanted
                assert all(hit["attributes"][key] in wanted for hit in answer["hits"])
    assert code == (1 if any("error" in answer for answer in answers) else 0)


@FAST
@given(st.lists(LINE, max_size=6))
def test_batch_search_answers_every_line_of_any_file(searcher, lines):
    check_batch(searcher, lines)


@pytest.mark.slow
@SLOW
@given(st.lists(LINE | st.binary(max_size=60), max_size=12))
def test_batch_search_answers_every_line_of_any_file_many(searcher, lines):
    check_batch(searcher, lines)
