"""bench/equal_budget.py end to end on a tiny model: every variant trains for the same epochs in total, the soup is
one model, every system is scored on test against the single model, and a rerun reuses what is finished."""

from __future__ import annotations

import json

import pytest

from bench import equal_budget
from tests.core.test_cli import TINY_FLAGS
from tests.data.conftest import make_items, write_hf_parquet

pytestmark = pytest.mark.slow  # trains three systems and scores four

TINY = " ".join(flag for flag in TINY_FLAGS[:-4])  # backbone and sizes; epochs and batch come from the bench


def test_equal_budget_trains_scores_and_resumes(tmp_path, capsys):
    data = write_hf_parquet(tmp_path / "data", make_items(90, seed=5))
    args = ["--data", str(data), "--out", str(tmp_path / "out"), "--trunk-cache", str(tmp_path / "trunk"),
            "--epochs", "2", "--members", "2", f"--flags={TINY} --batch-size 16", "--lq"]
    assert equal_budget.main(args) == 0
    table = capsys.readouterr().out
    assert "img2img_lq/5/R@10" in table  # --lq adds the degraded-photo study, pooled per severity
    rows = [line for line in table.splitlines() if line.startswith("| ") and not line.startswith("| system")]
    assert [row.split(" | ")[0].strip("| ") for row in rows] == ["single", "seeds", "snapshot", "soup"]
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert [len(results[name]["val_R@10"]) for name in ("single", "seeds", "snapshot")] == [2, 1, 2]
    # the steps column: one count per trained run, and independent members' counts joined
    assert [len(results[name]["steps"]) for name in ("single", "seeds", "snapshot")] == [1, 2, 1]
    assert [row.split(" | ")[1] for row in rows[:2]] == [
        str(results["single"]["steps"][0]), " + ".join(str(count) for count in results["seeds"]["steps"])]
    assert results["single"]["steps"][0] == results["snapshot"]["steps"][0] > 0  # equal epochs, equal steps
    assert json.loads((tmp_path / "out" / "runs" / "soup" / "model.json").read_text())["soup_of"]
    assert "+" in rows[1] or "-" in rows[1]  # a paired difference against the single model
    with pytest.raises(SystemExit, match="multiple"):
        equal_budget.main([*args[:6], "--epochs", "3", "--members", "2"])
    assert equal_budget.main(args) == 0  # everything reused
    assert capsys.readouterr().out.count("| soup |") == 1


def test_equal_budget_with_a_time_budget_gives_every_system_the_same_clock(tmp_path, capsys):
    import torch

    data = write_hf_parquet(tmp_path / "data", make_items(90, seed=5))
    args = ["--data", str(data), "--out", str(tmp_path / "out"), "--trunk-cache", str(tmp_path / "trunk"),
            "--epochs", "3", "--members", "2", "--time-budget", "2m", f"--flags={TINY} --batch-size 16"]
    assert equal_budget.main(args) == 0
    runs = tmp_path / "out" / "runs"
    for name in ("single", "seeds", "snapshot"):
        assert json.loads((runs / name / "train_config.json").read_text())["time_budget"] == 120
        plans = [torch.load(path, weights_only=False)["state"]["plan"]
                 for path in sorted((runs / name).glob("members/*/checkpoint.pt"))]
        assert plans and all(plan["seconds"] is not None and plan["step_seconds"] > 0 for plan in plans), name
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert list(results)[0] == "cache", "the shared trunk caching runs before any timed system"
