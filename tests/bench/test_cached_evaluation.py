"""bench.quality.cached_evaluation: a benchmark's earlier evaluation is reused only if it ranked with today's search
settings."""

from __future__ import annotations

import json

import numpy as np

from bench.quality import cached_evaluation
from enclip.search import SearchCfg


def _evaluation(value: float, rescoring: dict | None):
    def run(out):
        meta = {} if rescoring is None else {"rescoring": rescoring}
        out.write_text(json.dumps({"title2img/R@10": {"mean": value}, "_meta": meta}))  # as evaluate_index writes
        return {"title2img/R@10": {"mean": value}, "_meta": meta, "per_query": {"title2img/R@10": [value] * 3}}
    return run


def test_an_evaluation_ranked_with_other_or_unstated_settings_is_run_again(tmp_path):
    out = tmp_path / "test-metrics.json"
    today = SearchCfg().rescoring()
    assert today == {"hubness": 0.5, "feedback": 0.25, "feedback_depth": 10, "bridge": 0.2, "bridge_depth": 10,
                     "bridge_temperature": 0.01, "bridge_labels": 10.0, "bridge_label_exactness": 16.0}
    calls = []

    def counted(value, rescoring):
        run = _evaluation(value, rescoring)
        return lambda: calls.append(value) or run(out)

    first = cached_evaluation(out, counted(0.1, None))  # a run from before the settings were recorded
    assert calls == [0.1] and first["title2img/R@10"]["mean"] == 0.1
    again = cached_evaluation(out, counted(0.2, today), rescoring=today)  # unstated: evaluated again
    assert calls == [0.1, 0.2] and np.allclose(again["per_query"]["title2img/R@10"], 0.2)
    reused = cached_evaluation(out, counted(0.3, today), rescoring=today)  # the same settings: reused from disk
    assert calls == [0.1, 0.2] and np.allclose(reused["per_query"]["title2img/R@10"], 0.2)
    other = {**today, "feedback": 0.0}
    cached_evaluation(out, counted(0.4, other), rescoring=other)  # other settings: evaluated again
    assert calls == [0.1, 0.2, 0.4]
    assert cached_evaluation(out, counted(0.5, today))["title2img/R@10"]["mean"] == 0.4  # no settings asked: reused
