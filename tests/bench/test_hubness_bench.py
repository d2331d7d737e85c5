"""bench/hubness.py on a tiny index: a grid paired against plain cosines, or against a chosen weight."""

from __future__ import annotations

import json

import pytest

from bench import hubness

pytestmark = pytest.mark.slow  # encodes a title bank and ranks every query per setting


def test_settings_are_paired_against_the_chosen_weight(tiny_index_dir, tmp_path, capsys):
    args = ["--index", str(tiny_index_dir), "--out", str(tmp_path), "--split", "test", "--ks", "5",
            "--weights", "0.5", "0.75", "--tasks", "title2img"]
    assert hubness.main([*args, "--against", "0.5"]) == 0
    out = capsys.readouterr().out
    assert "paired against weight 0.5 at k=5" in out
    rows = {tuple(line.split(" | ")[:2]): line for line in out.splitlines() if line.startswith("| ")}
    assert "[" not in rows["| 5", "0.5"]  # the baseline itself has no difference
    assert "[" in rows["| 5", "0.75"] and "[" in rows["| –", "0.0"]
    written = json.loads((tmp_path / "hubness-test.json").read_text())
    assert written["against_weight"] == 0.5 and len(written["rows"]) == 3
    with pytest.raises(SystemExit, match="--against 0.3 is not one of --weights"):
        hubness.main([*args, "--against", "0.3"])
