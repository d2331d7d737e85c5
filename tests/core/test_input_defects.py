"""Regression tests for the command line's input-side defects of issue #11 (batch lines, k cap, train --resume)."""

from __future__ import annotations

import json
import sys

import pytest

from enclip.cli import main
from enclip.errors import EnclipError

WRONG_TYPED = [({"text": "shirt", "k": "five"}, "k"), ({"text": "shirt", "k": 1.5}, "k"),
               ({"text": "shirt", "weight": "heavy"}, "weight"),
               ({"text": "shirt", "filters": "gender=Women"}, "filters"),
               ({"text": "shirt", "filters": {"gender": 5}}, "filters.gender")]


def _batch(index, tmp_path, capsys, lines: list[str], *flags: str) -> tuple[int, list[dict]]:
    queries = tmp_path / "queries.jsonl"
    queries.write_text("\n".join(lines) + "\n", encoding="utf-8")
    code = main(["search", "--index", str(index), "--queries", str(queries), *flags])
    return code, [json.loads(line) for line in capsys.readouterr().out.strip().splitlines()]


def test_batch_wrong_typed_fields_answer_an_error_line_and_the_rest_still_answer(tiny_index_dir, tmp_path, capsys,
                                                                                   monkeypatch):
    for module in ("fastapi", "enclip.serve", "enclip.serve.schemas", "enclip.serve.app"):
        monkeypatch.setitem(sys.modules, module, None)  # batch search must not need the serve extra
    lines = [json.dumps(query) for query, _ in WRONG_TYPED] + [json.dumps({"text": "shirt", "k": 2})]
    code, answers = _batch(tiny_index_dir, tmp_path, capsys, lines)
    assert code == 1
    assert [a["line"] for a in answers] == list(range(1, len(lines) + 1))
    for answer, (_, field) in zip(answers, WRONG_TYPED):
        assert answer["error"].startswith("invalid search request: " + field), answer
    assert len(answers[-1]["hits"]) == 2


def test_batch_line_and_http_body_are_judged_by_one_schema(tiny_index_dir, tmp_path, capsys):
    from fastapi.testclient import TestClient

    from enclip.search import load_searcher
    from enclip.serve.app import ServeCfg, create_app

    searcher = load_searcher(tiny_index_dir)
    _, answers = _batch(tiny_index_dir, tmp_path, capsys, [json.dumps(query) for query, _ in WRONG_TYPED])
    with TestClient(create_app(searcher, ServeCfg())) as client:
        for (query, _), answer in zip(WRONG_TYPED, answers):
            response = client.post("/search", json=query)
            assert response.status_code == 422
            assert response.json()["error"].split(": ", 1)[1] == answer["error"].split(": ", 1)[1]


def test_cli_k_above_the_limit_is_a_clear_error(tiny_index_dir, tmp_path, capsys):
    assert main(["search", "--index", str(tiny_index_dir), "--text", "shirt", "--k", "1000000000"]) == 2
    assert "k must be between 1 and 1000, got 1000000000" in capsys.readouterr().err
    code, answers = _batch(tiny_index_dir, tmp_path, capsys, [json.dumps({"text": "shirt", "k": 10**9}),
                                                              json.dumps({"text": "shirt", "k": 0})])
    assert code == 1 and all("k must be between 1 and 1000" in a["error"] for a in answers)


def test_batch_line_that_is_not_utf8_or_not_an_object_is_answered(tiny_index_dir, tmp_path, capsys):
    queries = tmp_path / "queries.jsonl"
    queries.write_bytes(b'{"text": "shirt \xff"}\n[1, 2]\n' + b"[" * 100_000 + b'\n{"text": "shirt", "k": 1}\n')
    assert main(["search", "--index", str(tiny_index_dir), "--queries", str(queries)]) == 1
    answers = [json.loads(line) for line in capsys.readouterr().out.strip().splitlines()]
    assert [a["line"] for a in answers] == [1, 2, 3, 4]
    assert "UTF-8" in answers[0]["error"] and "object" in answers[1]["error"] and "error" in answers[2]
    assert len(answers[3]["hits"]) == 1


def test_train_resume_with_more_epochs_on_a_finished_run_is_refused_not_recorded(tmp_path, catalogue):
    from enclip.artifacts import read_json
    from enclip.train.run import train_system
    from tests.conftest import tiny_run_cfg

    out = train_system(catalogue, tmp_path / "m", tiny_run_cfg(epochs=1))
    with pytest.raises(EnclipError, match=r"train\.epochs 1 \(asked 3\).*another --out"):
        train_system(catalogue, out, tiny_run_cfg(epochs=1 + 2), resume=True)
    assert read_json(out / "train_config.json")["train"]["epochs"] == 1
    again = tiny_run_cfg(epochs=1)
    again.train.device = "cpu"  # where it runs may change
    assert train_system(catalogue, out, again, resume=True) == out
