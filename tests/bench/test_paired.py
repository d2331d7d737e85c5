"""bench/paired.py on a tiny index: an index compared with itself differs by exactly nothing."""

from __future__ import annotations

import pytest

from bench import paired

pytestmark = pytest.mark.slow  # runs the benchmark scripts end to end; .ci/run runs the slow set


def test_an_index_against_itself_differs_by_zero(tiny_index_dir, capsys):
    assert paired.main(["--baseline", str(tiny_index_dir), "--index", str(tiny_index_dir), "--tasks", "title2img"]) == 0
    out = capsys.readouterr().out
    row = next(line for line in out.splitlines() if line.startswith("| title2img/R@10"))
    assert row.rstrip().endswith("| +0.000 [+0.000, +0.000] |")
    assert "member diversity" in out and "'score_correlation'" in out


def test_rescoring_flags_reach_both_searchers(tiny_index_dir, tmp_path):
    from enclip.search import SearchCfg

    plain = paired._searcher(tiny_index_dir, None, tmp_path, {"hubness": 0.0, "feedback": 0.0})
    assert (plain.cfg.hubness, plain.cfg.feedback) == (0.0, 0.0)
    default = paired._searcher(tiny_index_dir, None, tmp_path, {})
    assert default.cfg.rescoring() == SearchCfg().rescoring() != plain.cfg.rescoring()


def test_both_severity_sets_where_both2img_pools():
    argv = ["--baseline", "a", "--index", "b", "--tasks", "both2img", "--severities", "5"]
    assert paired.eval_cfg(paired.parse_args(argv)).both_severity == 3  # the headline's, by default
    cfg = paired.eval_cfg(paired.parse_args([*argv, "--both-severity", "5"]))
    assert (cfg.both_severity, cfg.severities) == (5, (5,))


def test_bridge_labels_flag_reaches_the_evaluation():
    argv = ["--baseline", "a", "--index", "b", "--tasks", "attr2img"]
    assert "bridge_labels" not in paired.eval_cfg(paired.parse_args(argv)).rescoring()  # the search default
    cfg = paired.eval_cfg(paired.parse_args([*argv, "--bridge-labels", "0"]))
    assert cfg.rescoring()["bridge_labels"] == 0.0  # both searchers get it (test_rescoring_flags_reach_both_searchers)
