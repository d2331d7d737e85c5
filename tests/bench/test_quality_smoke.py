"""The quality and limited-data sections of the benchmark suite, end to end on tiny models: every system is trained,
indexed and scored, the default is chosen on validation only, and the report renders."""

from __future__ import annotations

import json

import numpy as np
import pytest

from bench import run_all
from bench.quality import Bench, BenchCfg, RememberedTexts, run_limited_data, run_quality, training_costs
from tests.conftest import synthetic_catalogue, tiny_run_cfg

pytestmark = pytest.mark.slow  # runs the benchmark scripts end to end; .ci/run runs the slow set


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    cfg = BenchCfg(members=2, epochs=1, fractions=(0.5, 1.0), max_queries=None, lq_queries=3, severities=(1, 4),
                   val_queries=1000, strategies=("seeds", "cluster"), out=tmp_path_factory.mktemp("bench"),
                   train=tiny_run_cfg().train, backbone=tiny_run_cfg().backbone)
    bench = Bench(synthetic_catalogue(120), cfg)
    quality = run_quality(bench)
    return bench, quality, run_limited_data(bench, quality["chosen"])


def test_every_system_is_trained_and_scored_on_test(results):
    bench, quality, _ = results
    assert set(quality["systems"]) == {"enclip", "single", "single-2x"}
    for figures in quality["systems"].values():
        assert 0 <= figures["title2img/R@10"]["mean"] <= 1
        assert any(key.startswith("img2img_lq/blur/4/") for key in figures)
    assert set(quality["members"]) == {0, 1}
    assert {"enclip-single", "enclip-single-2x"} == set(quality["diffs"])
    assert bench.seconds["train"] > 0 and bench.seconds["evaluate"] > 0


def test_default_is_the_best_ensemble_and_rule_on_validation(results):
    _, quality, _ = results
    chosen = quality["chosen"]
    best = max(value["mean"] for key, value in quality["fusion"].items() if key.endswith("@val"))
    assert quality["fusion"][f"{chosen['system']}/{chosen['fusion']}@val"]["mean"] == best


def test_limited_data_has_a_point_per_fraction_and_system(results):
    _, _, curves = results
    assert set(curves) == {"single", "single-2x", "enclip"}
    assert all(set(points) == {0.5, 1.0} for points in curves.values())


def test_report_renders_every_section(results, tmp_path, monkeypatch):
    bench, quality, curves = results
    monkeypatch.setattr(run_all, "DOCS", tmp_path)
    figures = {"quality": quality, "data": curves, "seconds": 60.0, "section_seconds": {"quality": 50.0},
               "phase_seconds": dict(bench.seconds), "training": training_costs(bench.cfg.out)}
    run_all.write_report(tmp_path / "RESULTS-smoke.md", figures, bench.cfg, "python bench/run_all.py", "smoke")
    text = (tmp_path / "RESULTS-smoke.md").read_text()
    for heading in ("## Headline", "## Ablations", "## Each member alone", "## Cluster balance", "## Limited data",
                    "## Low-quality", "## Training time"):
        assert heading in text
    assert "| ens-seeds | 2 |" in text and "| single-f0.5 | 1 |" in text
    assert (tmp_path / "limited_data-smoke.png").stat().st_size > 0
    assert "## Degraded photo plus title" in text and (tmp_path / "low_quality_both-smoke.png").stat().st_size > 0


def test_cluster_balance_has_a_row_per_specialist(results):
    bench, quality, _ = results
    clusters = quality["clusters"]
    assert [row["cluster"] for row in clusters] == [0, 1]
    assert sum(row["size"] for row in clusters) == clusters[0]["train_items"]  # every training item in one cluster
    assert all(row["size"] <= row["member_items"] <= row["train_items"] for row in clusters)  # own cluster + mixing


def test_report_only_rewrites_the_report_from_saved_figures(results, tmp_path, monkeypatch):
    bench, quality, curves = results
    monkeypatch.setattr(run_all, "DOCS", tmp_path)
    saved = {"quality": quality, "data": curves, "seconds": 60.0, "section_seconds": {"quality": 50.0},
             "phase_seconds": dict(bench.seconds), "command": "python bench/run_all.py --members 2",
             "bench_cfg": {name: getattr(bench.cfg, name) for name in run_all.REPORTED_CFG}}
    (bench.cfg.out / "results.json").write_text(json.dumps(run_all._jsonable(saved)))
    assert run_all.main(["--out", str(bench.cfg.out), "--name", "again", "--report-only"]) == 0
    text = (tmp_path / "RESULTS-again.md").read_text()
    assert "Command: `python bench/run_all.py --members 2`" in text and "K=2 members" in text
    assert "| single | " in text and (tmp_path / "low_quality-again.png").stat().st_size > 0
    assert "## Training time" in text  # filled from the saved models when results.json predates it


def test_report_only_without_a_finished_run_says_what_to_do(tmp_path):
    with pytest.raises(SystemExit, match="needs a finished run"):
        run_all.main(["--out", str(tmp_path), "--report-only"])


def test_remembered_texts_encode_each_distinct_text_once():
    class Counting:
        calls: list[list[str]] = []

        def encode_texts(self, texts):
            self.calls.append(list(texts))
            return np.array([[[float(len(t)), 1.0] for t in texts]])

    model = RememberedTexts(Counting())
    first = model.encode_texts(["ab", "abc", "ab"])
    again = model.encode_texts(["abc", "x"])
    assert Counting.calls == [["ab", "abc"], ["x"]]
    assert first[0, :, 0].tolist() == [2.0, 3.0, 2.0] and again[0, :, 0].tolist() == [3.0, 1.0]


def test_report_is_spliced_between_its_markers_in_results_md(tmp_path):
    page = tmp_path / "RESULTS.md"
    page.write_text("# Results\nhand-written\n<!-- bench full start -->\nold\n<!-- bench full end -->\ntail\n")
    assert run_all.splice(page, "full", "# Benchmark results (full)\n## Headline\n| a |")
    assert page.read_text() == ("# Results\nhand-written\n<!-- bench full start -->\n## Benchmark results (full)\n"
                                "### Headline\n| a |\n<!-- bench full end -->\ntail\n")
    assert not run_all.splice(page, "quick", "anything")  # no markers for this run: the page is left alone
    assert "anything" not in page.read_text()


def test_training_table_does_not_time_a_resumed_system():
    from bench import report

    costs = {"single": {"members": 1, "seconds": 120.0, "member_seconds": [100.0], "resumed": False},
             "ens": {"members": 2, "seconds": 60.0, "member_seconds": [None, 50.0], "resumed": True}}
    table = report.training_table(costs, ["single", "ens", "absent"])
    assert "| single | 1 | 2.0 | 2.0 | 1.7 (1.7–1.7) |" in table
    assert "| ens | 2 | – (resumed" in table and "absent" not in table


def test_budget_comparison_trains_three_systems_on_one_share(results):
    from bench import budget

    bench, _, _ = results
    table = budget.run(bench, fraction=0.5, members=2, epochs=1, strategy="seeds")
    assert "| single | 1 × 1 |" in table and "| single-2x | 1 × 2 |" in table and "| enclip | 2 × 1 |" in table
    assert "| enclip − single |" in table and "| enclip − single-2x |" in table
    assert (bench.cfg.out / "models" / "ens-seeds-f0.5-e1" / "ensemble.json").exists()


def test_budget_rejects_a_share_outside_0_1():
    from bench import budget

    with pytest.raises(SystemExit):
        budget.main(["--fraction", "1.5"])
