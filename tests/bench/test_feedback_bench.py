"""bench/feedback.py on a tiny index: a grid of feedback settings paired against none."""

from __future__ import annotations

import json

import pytest

from bench import feedback

pytestmark = pytest.mark.slow  # ranks every query per setting


def test_settings_are_paired_against_no_feedback_and_photo_queries_are_left_alone(tiny_index_dir, tmp_path, capsys):
    args = ["--index", str(tiny_index_dir), "--out", str(tmp_path), "--split", "test", "--depths", "3",
            "--weights", "0.25", "1.0", "--tasks", "title2img", "img2img_lq"]
    assert feedback.main([*args, "--latency", "5", "--repeats", "1"]) == 0
    out = capsys.readouterr().out
    assert "paired against no feedback" in out
    rows = {tuple(line.split(" | ")[:2]): line for line in out.splitlines() if line.startswith("| ")}
    assert "[" not in rows["| –", "0.0"] and "[" in rows["| 3", "1.0"]
    written = json.loads((tmp_path / "feedback-test.json").read_text())
    assert [(row["depth"], row["weight"]) for row in written["rows"]] == [(None, 0.0), (3, 0.25), (3, 1.0)]
    assert written["latency"]["queries"] == 5 and written["latency"]["p50_ms_feedback"] > 0
    for row in written["rows"][1:]:  # photo queries get no feedback: every difference is exactly zero
        assert row["img2img_lq/R@10"]["diff"] == {"mean": 0.0, "low": 0.0, "high": 0.0}
    with pytest.raises(SystemExit, match="--weights must be above 0"):
        feedback.main([*args[:-6], "--weights", "0", "--tasks", "title2img"])
