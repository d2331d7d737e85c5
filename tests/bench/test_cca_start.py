"""bench/cca_start.py's table on the tiny backbone: a random start, then one row per fit, the default marked."""

from __future__ import annotations

import numpy as np

from bench.cca_start import table
from enclip.models.ensemble import Ensemble
from enclip.models.registry import create_backbone
from enclip.train.run import _caches, _split
from tests.conftest import tiny_run_cfg


def test_the_table_scores_the_random_start_then_each_fit_and_marks_the_default(tmp_path, catalogue):
    cfg = tiny_run_cfg()
    ensemble = Ensemble(create_backbone(cfg.backbone), cfg.train.heads)
    train, val = _caches(ensemble, catalogue, _split(catalogue), tmp_path / "cache", cfg)
    before = ensemble.members[0].text_head.projection.weight.clone()
    lines = list(table(ensemble, train, val, cfg.train, ridges=[0.01, 0.1], powers=[0.5], pairs=[20, 10**6]))
    rows = [line.strip("|").split("|") for line in lines if line.startswith("| ")][1:]
    assert [row[0].strip() for row in rows] == ["random", "cca (the default)", "cca", "cca"]
    assert [row[3].strip() for row in rows[1:]] == [str(len(train))] * 2 + ["20"]  # pairs past the train split: skipped
    assert all(0.0 <= float(row[4]) <= 1.0 for row in rows)
    assert not np.array_equal(ensemble.members[0].text_head.projection.weight.detach(), before)  # the fits were set
