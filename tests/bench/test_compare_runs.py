"""Reproducibility check between two benchmark runs."""

from __future__ import annotations

import json

from bench.compare_runs import compare, main


def _run(single: float, enclip: float) -> dict:
    return {"quality": {"systems": {"single": {"title2img/R@10": {"mean": single, "low": single - 0.01,
                                                                  "high": single + 0.01, "n": 100}},
                                    "enclip": {"title2img/R@10": {"mean": enclip, "low": enclip - 0.01,
                                                                  "high": enclip + 0.01, "n": 100}}},
                        "chosen": {"system": "ens-seeds"}},
            "speed": {"latency": {"p50": {"mean": 1.0, "low": 0.0, "high": 2.0}}}}


def test_figures_inside_and_outside_the_first_interval_are_told_apart():
    rows = {row["figure"]: row["inside"] for row in compare(_run(0.10, 0.20), _run(0.105, 0.25))}
    assert rows == {"quality/systems/single/title2img/R@10": True, "quality/systems/enclip/title2img/R@10": False}


def test_command_line_prints_the_table(tmp_path, capsys):
    (tmp_path / "a.json").write_text(json.dumps(_run(0.1, 0.2)))
    (tmp_path / "b.json").write_text(json.dumps(_run(0.1, 0.2)))
    assert main([str(tmp_path / "a.json"), str(tmp_path / "b.json")]) == 0
    assert "2 of 2 figures" in capsys.readouterr().out
