"""Smoke test of the speed benchmark on the tiny index: every section is measured and rendered.

Behaviour only: the figures are never compared with wall-clock thresholds (timings belong in the benchmark).
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from bench import speed
from bench.speed import MODES, SpeedCfg, latency_vs_baseline, measure_all, recall_at_k, render_markdown, synthetic_dim

pytestmark = pytest.mark.slow  # runs the benchmark scripts end to end; .ci/run runs the slow set

TINY = SpeedCfg(repeats=2, queries=4, warmup=1, embed_items=16, embed_batch_size=8, synthetic_n=2000,
                synthetic_queries=10, synthetic_clusters=16)


@pytest.fixture(scope="module")
def result(tiny_index_dir) -> dict:
    return measure_all({"tiny": tiny_index_dir}, cfg=TINY)


def positive(figure: dict) -> bool:
    return 0 < figure["min"] <= figure["median"] <= figure["max"]


def test_latency_has_every_query_type_with_positive_percentiles(result):
    for mode in MODES:
        figures = result["latency"]["tiny"][mode]
        assert all(positive(figures[key]) for key in ("p50_ms", "p99_ms", "encode_ms", "search_ms"))
        assert figures["p50_ms"]["median"] <= figures["p99_ms"]["median"]
        assert 0 < figures["encode_share"]["median"] < 1
    assert result["latency_vs_baseline"]["tiny"] == {mode: 1.0 for mode in MODES}


def test_latency_ratio_divides_each_index_by_the_first():
    def p50(ms: float) -> dict:
        return {mode: {"p50_ms": {"median": ms * (i + 1)}} for i, mode in enumerate(MODES)}

    ratios = latency_vs_baseline({"single": p50(2.0), "ensemble": p50(5.0)})
    assert ratios["single"] == {mode: 1.0 for mode in MODES}
    assert ratios["ensemble"] == {mode: pytest.approx(2.5) for mode in MODES}


def test_embedding_throughput_and_memory_are_positive(result):
    assert positive(result["embedding"]["tiny"]["images_per_s"])
    assert result["embedding"]["tiny"]["items"] == 16
    memory = result["memory"]["per_index"]["tiny"]
    assert memory["rss_after_load_mb"] > 0 and memory["rss_after_latency_mb"] > 0
    assert result["memory"]["peak_rss_mb"] >= memory["rss_after_load_mb"]


def test_index_kinds_over_stored_vectors_have_build_size_latency_and_recall(result):
    kinds = result["index_kinds"]["tiny"]
    assert list(kinds) == ["flat", "hnsw", "ivf"]
    for figures in kinds.values():
        assert all(positive(figures[key]) for key in ("build_s", "p50_ms", "p99_ms"))
        assert figures["size_mb"] > 0
        assert 0 < figures["recall_at_k"] <= 1
    assert kinds["flat"]["recall_at_k"] == 1.0  # flat is the exact reference


def test_synthetic_section_uses_the_index_dimension(result):
    synthetic = result["synthetic"]
    assert synthetic["n"] == 2000 and synthetic["dim"] == result["indexes"]["tiny"]["dim"]
    assert synthetic["note"] == ""
    for figures in synthetic["kinds"].values():
        assert all(positive(figures[key]) for key in ("build_s", "p50_ms", "p99_ms"))
        assert 0 < figures["recall_at_k"] <= 1


def test_result_is_json_and_markdown_has_every_table(result):
    assert json.loads(json.dumps(result))["machine"]["cores"] > 0
    text = result["markdown"]
    assert text == render_markdown(result) and text.startswith("**Machine:**")
    for header in ("### Query latency", "### Catalogue embedding throughput", "### Index kinds",
                   "### Synthetic index at 2,000 items", "### Memory", "| index | members | items | query |",
                   "| kind | build s | RSS growth MB |", "p50 × baseline", "recall@10 vs flat"):
        assert header in text
    assert text.count("| tiny |") == 3 + 1 + 3 + 1  # latency modes, embedding, kinds, memory


def test_recall_counts_shared_positions_and_ignores_padding():
    truth = np.array([[1, 2, 3, 4], [5, 6, -1, -1]])
    found = np.array([[4, 3, 9, 8], [6, 7, -1, -1]])
    assert recall_at_k(found, truth) == pytest.approx((2 / 4 + 1 / 2) / 2)


def test_synthetic_dimension_is_halved_until_it_fits(monkeypatch):
    monkeypatch.setattr(speed.psutil, "virtual_memory", lambda: type("Memory", (), {"available": 8 * 2**30})())
    dim, note = synthetic_dim(1280, SpeedCfg(synthetic_n=1_000_000, memory_fraction=0.5))
    # 1M rows cost dim * (1.5 * 2 + 4) bytes + 256 bytes of hnsw links: 1280 and 640 exceed 4 GB, 320 fits
    assert dim == 320 and "reduced from 1280 to 320" in note
    assert synthetic_dim(1280, SpeedCfg(synthetic_n=1000))[0] == 1280


def test_cli_maps_flags_onto_the_config_and_writes_json(result, tiny_index_dir, tmp_path, monkeypatch, capsys):
    seen = {}

    def fake_measure_all(index_dirs, catalogue, cfg):
        seen.update(index_dirs=index_dirs, cfg=cfg)
        return result

    monkeypatch.setattr(speed, "measure_all", fake_measure_all)
    out = tmp_path / "speed.json"
    code = speed.main(["--index", str(tiny_index_dir), "--label", "base", "--quick", "--repeats", "2",
                       "--synthetic-kinds", "flat,hnsw", "--json", str(out)])
    assert code == 0
    assert seen["index_dirs"] == {"base": tiny_index_dir}
    assert (seen["cfg"].repeats, seen["cfg"].queries, seen["cfg"].embed_items) == (2, 50, 1024)
    assert (seen["cfg"].synthetic_n, seen["cfg"].synthetic_kinds) == (100_000, ("flat", "hnsw"))
    assert "### Query latency" in capsys.readouterr().out
    assert json.loads(out.read_text()) == json.loads(json.dumps(result))


def test_quick_shortens_only_the_fields_left_at_their_full_default():
    quick = SpeedCfg(quick=True, repeats=2)
    assert (quick.repeats, quick.queries, quick.embed_items, quick.synthetic_n) == (2, 50, 1024, 100_000)
    assert (SpeedCfg().repeats, SpeedCfg().synthetic_n) == (5, 1_000_000)


def test_cli_rejects_mismatched_labels(tiny_index_dir):
    with pytest.raises(SystemExit):
        speed.main(["--index", str(tiny_index_dir), "--label", "a", "--label", "b"])


def test_synthetic_vectors_are_seeded_unit_rows_across_chunks():
    centres = np.eye(4, dtype=np.float32)
    n = speed.SYNTHETIC_CHUNK + 5
    chunks = list(speed.synthetic_vectors(n, centres, noise=0.5, seed=3, stream=0))
    rows = np.concatenate(chunks)
    assert [len(c) for c in chunks] == [speed.SYNTHETIC_CHUNK, 5] and rows.shape == (n, 4)
    assert np.allclose(np.linalg.norm(rows, axis=1), 1, atol=1e-5)
    assert np.array_equal(rows, np.concatenate(list(speed.synthetic_vectors(n, centres, 0.5, 3, 0))))
    assert not np.array_equal(rows[:5], next(speed.synthetic_vectors(5, centres, 0.5, 3, 1)))
    assert np.median((rows @ centres.T).max(axis=1)) > 0.8  # rows cluster around the centres (noise norm 0.5)
