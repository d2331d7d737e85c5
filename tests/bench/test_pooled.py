"""bench/pooled.py over evaluations written as bench/equal_budget.py leaves them: each query's difference is averaged
over the runs before resampling, and runs scored on other queries are refused."""

from __future__ import annotations

import json

import numpy as np
import pytest

from bench import pooled

CFG = {"split": "test", "seed": 0, "max_queries": None, "lq_queries": 500, "tasks": ["title2img", "both2img"],
       "severities": [3], "degradations": ["blur"], "both_weight": 0.5, "both_severity": 3}


def _write(out, system: str, values: dict[str, list[float]], **cfg) -> None:
    index = out / "index" / system
    index.mkdir(parents=True)
    summary = {key: {"mean": float(np.mean(v)), "low": 0.0, "high": 1.0} for key, v in values.items()}
    meta = {"cfg": {**CFG, **cfg}}
    (index / "test-metrics.json").write_text(json.dumps({"_meta": meta, **summary}))
    np.savez(index / "test-metrics.npz", **{key.replace("/", "|"): np.asarray(v) for key, v in values.items()})


def _run(out, single_titles, snapshot_titles, **cfg):
    both = [1.0, 1.0, 0.0, 1.0]
    _write(out, "single", {"title2img/R@10": single_titles, "both2img/R@10": both}, **cfg)
    _write(out, "snapshot", {"title2img/R@10": snapshot_titles, "both2img/R@10": both}, **cfg)
    return out


def test_pooled_difference_is_the_per_query_mean_over_runs(tmp_path, capsys):
    a = _run(tmp_path / "a", [0, 0, 1, 1], [1, 0, 1, 1])  # +0.25 in run a
    b = _run(tmp_path / "b", [0, 1, 1, 0], [0, 1, 1, 1])  # +0.25 in run b, on another query
    assert pooled.main([str(a), str(b)]) == 0
    out = capsys.readouterr().out
    row = next(line for line in out.splitlines() if line.startswith("| snapshot | title2img/R@10"))
    cells = [cell.strip() for cell in row.strip("| \n").split(" | ")]
    assert cells[2] == "0.500 → 0.750" and cells[3].startswith("+0.250 [")  # run a alone
    assert cells[5].startswith("+0.250 [")  # run b alone
    # pooled: per query (0.5, 0, 0, 0.5) better, mean 0.25, single 0.5 -> snapshot 0.75
    assert cells[6].startswith("0.500 → 0.750, +0.250 [")
    low = float(cells[6].split("[")[1].split(",")[0])
    assert 0.0 <= low < 0.25  # an interval from resampling queries, not a point
    assert cells[7] == "+0.250 [+0.250, +0.250]"  # two trainings that agree: no spread between them
    both = next(line for line in out.splitlines() if line.startswith("| snapshot | both2img/R@10"))
    assert both.rstrip().endswith("+0.000 [+0.000, +0.000] | +0.000 [+0.000, +0.000] |")


def test_the_interval_over_trainings_is_students_t():
    got = pooled.over_trainings([0.019, 0.008, 0.010])
    # mean 0.01233, sd 0.005859, t(0.975, 2) = 4.3027: half-width 0.014555
    assert got["mean"] == pytest.approx(0.012333, abs=1e-6)
    assert got["low"] == pytest.approx(0.012333 - 0.014555, abs=1e-5)
    assert got["high"] == pytest.approx(0.012333 + 0.014555, abs=1e-5)


def test_runs_scored_on_other_queries_are_refused(tmp_path):
    a = _run(tmp_path / "a", [0, 0, 1, 1], [1, 0, 1, 1])
    b = _run(tmp_path / "b", [0, 1, 1, 0], [0, 1, 1, 1], max_queries=2)
    with pytest.raises(SystemExit, match="max_queries differ"):
        pooled.main([str(a), str(b)])


def test_an_unfinished_run_is_named(tmp_path):
    a = _run(tmp_path / "a", [0, 0, 1, 1], [1, 0, 1, 1])
    (tmp_path / "b" / "index").mkdir(parents=True)
    with pytest.raises(SystemExit, match=r"b has no finished evaluation.*equal_budget.py --out"):
        pooled.main([str(a), str(tmp_path / "b")])
    with pytest.raises(SystemExit, match="two or more"):
        pooled.main([str(a)])
