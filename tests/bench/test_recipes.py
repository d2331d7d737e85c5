"""The recipe table: validation scores beside each recipe's curve, old results without both2img still shown."""

from __future__ import annotations

from bench.recipes import table

CURVE = {"flags": "--block-lr 2e-3", "val_R@10": [0.2, 0.3], "best": 0.3, "best_epoch": 2, "epoch_seconds": [90, 100]}
SCORES = {"attrs2img/P@10": 0.55, "attrs2img/nDCG@10": 0.6, "attr2img/articleType/P@10": 0.51,
          "attr2img/subCategory/P@10": 0.5, "attr2img/baseColour/P@10": 0.44}


def _row(text: str, name: str) -> list[str]:
    line = next(line for line in text.splitlines() if line.startswith(f"| {name} "))
    return [cell.strip() for cell in line.strip().strip("|").split("|")]


def test_validation_both2img_gets_its_own_column():
    rows = table({"new": {**CURVE, "val_scores": {**SCORES, "both2img/R@10": 0.8271}}})
    assert "val both2img R@10 (severity 3)" in rows.splitlines()[0]
    cells = _row(rows, "new")
    assert cells[-1] == "0.827"
    assert cells[-2] == "0.51 / 0.50 / 0.44"


def test_results_scored_before_both2img_show_a_dash():
    cells = _row(table({"old": {**CURVE, "val_attrs2img": SCORES}, "bare": CURVE}), "old")
    assert cells[-1] == "-" and cells[-3] == "0.550 / 0.600"
    assert _row(table({"bare": CURVE}), "bare")[-3:] == ["-", "-", "-"]
