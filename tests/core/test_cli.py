"""The enclip command end to end on a tiny catalogue: train → index → search (plain, JSON, batch) → eval."""

from __future__ import annotations

import json

import pytest

from enclip.cli import main
from enclip.store import IndexDir
from tests.data.conftest import make_items, write_hf_parquet

TINY_FLAGS = ["--backbone", "tiny", "--embed-dim", "16", "--image-size", "32", "--epochs", "1", "--batch-size", "16"]


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    data = write_hf_parquet(root / "data", make_items(60, seed=3))
    assert main(["train", "--data", str(data), "--out", str(root / "model"), *TINY_FLAGS,
                 "--members", "2", "--strategy", "bagging"]) == 0
    assert main(["index", "--data", str(data), "--model", str(root / "model"), "--out", str(root / "index")]) == 0
    return root


def test_train_and_index_write_skip_reports_and_manifests(cli_run):
    assert json.loads((cli_run / "model" / "skip_report.json").read_text())["kept"] == 60
    assert json.loads((cli_run / "index" / "index.json").read_text())["members"] == 2


def test_search_plain_and_json_with_filters(cli_run, capsys):
    index = str(cli_run / "index")
    assert main(["search", "--index", index, "--text", "Men Red Shirts", "--k", "3"]) == 0
    plain = capsys.readouterr().out.strip().splitlines()
    hits = [line for line in plain if not line.startswith("(low confidence")]  # untrained members may disagree
    assert [line.split()[0] for line in hits] == ["1.", "2.", "3."]
    assert main(["search", "--index", index, "--text", "shirt", "--filter", "gender=Women", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["hits"] and all(h["attributes"]["gender"] == "Women" for h in result["hits"])


def test_batch_mode_answers_every_good_line_and_reports_bad_ones(cli_run, tmp_path, capsys):
    photo = tmp_path / "photo.jpg"
    photo.write_bytes(make_items(1, seed=9)[0].image)
    queries = tmp_path / "q.jsonl"
    queries.write_text("\n".join([
        json.dumps({"text": "Red Shirts"}),
        json.dumps({"image": str(tmp_path / "missing.jpg")}),
        json.dumps({"text": "women", "image": str(photo)}),
        "not json",
    ]))
    assert main(["search", "--index", str(cli_run / "index"), "--queries", str(queries), "--k", "2"]) == 1
    lines = [json.loads(line) for line in capsys.readouterr().out.strip().splitlines()]
    assert [line["line"] for line in lines] == [1, 2, 3, 4]
    assert "hits" in lines[0] and "hits" in lines[2]
    assert "missing.jpg" in lines[1]["error"] and "error" in lines[3]


def test_user_errors_are_one_clear_line(cli_run, tmp_path, capsys):
    assert main(["search", "--index", str(tmp_path), "--text", "x"]) == 2
    assert "not an enclip index" in capsys.readouterr().err
    assert main(["search", "--index", str(cli_run / "index"), "--text", "x", "--filter", "colour"]) == 2
    assert "KEY=VALUE" in capsys.readouterr().err
    assert main(["train", "--data", str(tmp_path / "nowhere"), "--out", str(tmp_path / "m")]) == 2
    assert "nowhere" in capsys.readouterr().err


def test_eval_writes_metrics(cli_run, capsys):
    assert main(["eval", "--index", str(cli_run / "index"), "--tasks", "title2img"]) == 0
    metrics = json.loads((cli_run / "index" / "metrics.json").read_text())
    assert 0 <= metrics["title2img/R@10"]["mean"] <= 1


def test_hubness_flags_build_without_the_part_and_search_or_evaluate_with_a_chosen_weight(cli_run, tmp_path,
                                                                                          capsys):
    data, plain = str(cli_run / "data"), str(tmp_path / "plain")
    assert main(["index", "--data", data, "--model", str(cli_run / "model"), "--out", plain, "--hubness-k", "0",
                 "--channels", "image"]) == 0
    assert (cli_run / "index" / "hubness").is_dir() and not (tmp_path / "plain" / "hubness").exists()
    capsys.readouterr()
    runs = {}
    for index, weight in ((plain, "0.75"), (str(cli_run / "index"), "0")):
        assert main(["search", "--index", index, "--text", "Men Red Shirts", "--k", "5", "--json",
                     "--channels", "image", "--hubness", weight]) == 0
        runs[(index, weight)] = [hit["id"] for hit in json.loads(capsys.readouterr().out)["hits"]]
    assert runs[(plain, "0.75")] == runs[(str(cli_run / "index"), "0")], "weight 0 ranks as an index without it"
    assert main(["eval", "--index", plain, "--tasks", "title2img", "--hubness", "0.5",
                 "--out", str(tmp_path / "m.json")]) == 0
    assert json.loads((tmp_path / "m.json").read_text())["_meta"]["cfg"]["hubness"] == 0.5
    assert main(["search", "--index", str(cli_run / "index"), "--text", "x", "--hubness", "-1"]) == 2
    assert "0 or more" in capsys.readouterr().err


def test_bridge_label_flags_build_without_them_and_search_or_evaluate_with_a_chosen_weight(cli_run, tmp_path,
                                                                                             capsys):
    out = tmp_path / "plain"
    assert main(["index", "--data", str(cli_run / "data"), "--model", str(cli_run / "model"), "--out", str(out),
                 "--channels", "image", "--no-bridge-labels"]) == 0
    built, plain = (IndexDir.open(path).load_bridge() for path in (cli_run / "index", out))
    assert built.labels > 0 and plain.labels == 0 and len(plain) == len(built) - built.labels
    assert main(["eval", "--index", str(cli_run / "index"), "--tasks", "attr2img", "--bridge-labels", "1.5",
                 "--out", str(tmp_path / "m.json")]) == 0
    assert json.loads((tmp_path / "m.json").read_text())["_meta"]["rescoring"]["bridge_labels"] == 1.5
    value, runs = built.values[0], {}
    capsys.readouterr()
    for weight in ("0", "3"):
        assert main(["search", "--index", str(cli_run / "index"), "--text", value, "--k", "5", "--json",
                     "--channels", "image", "--bridge-labels", weight]) == 0
        runs[weight] = [(hit["id"], hit["score"]) for hit in json.loads(capsys.readouterr().out)["hits"]]
    assert runs["0"] != runs["3"]  # a query naming a value moves with its label weight
    assert main(["search", "--index", str(cli_run / "index"), "--text", "x", "--bridge-labels", "-1"]) == 2
    assert "bridge_labels is the weight" in capsys.readouterr().err


def test_feedback_flag_searches_and_evaluates_with_a_chosen_weight(cli_run, tmp_path, capsys):
    index = str(cli_run / "index")
    runs = {}
    for weight in ("0", "2"):
        assert main(["search", "--index", index, "--text", "Men Red Shirts", "--k", "10", "--json",
                     "--channels", "image", "--feedback", weight]) == 0
        runs[weight] = [hit["id"] for hit in json.loads(capsys.readouterr().out)["hits"]]
    assert runs["0"] != runs["2"], "a large feedback weight re-ranks the photo channel"
    assert main(["eval", "--index", index, "--tasks", "title2img", "--feedback", "0.4", "--max-queries", "5",
                 "--out", str(tmp_path / "m.json")]) == 0
    meta = json.loads((tmp_path / "m.json").read_text())["_meta"]
    assert meta["cfg"]["feedback"] == 0.4 and meta["rescoring"] == {"hubness": 0.5, "feedback": 0.4,
                                                                    "feedback_depth": 10, "bridge": 0.2,
                                                                    "bridge_depth": 10, "bridge_temperature": 0.01,
                                                                    "bridge_labels": 10.0,
                                                                    "bridge_label_exactness": 16.0}
    assert main(["search", "--index", index, "--text", "x", "--feedback", "-1"]) == 2
    assert "feedback is the weight of pseudo-relevance feedback" in capsys.readouterr().err


@pytest.mark.slow
def test_demo_trains_indexes_searches_and_reports_held_out_quality(tmp_path, capsys):
    """`enclip demo` end to end with the default (offline, pretrained) backbone, on a small synthetic catalogue."""
    from tests.data.conftest import write_kaggle

    data = write_kaggle(tmp_path / "catalogue", make_items(120, seed=4))
    assert main(["demo", "--data", str(data), "--out", str(tmp_path / "demo"), "--quick", "--eval-queries", "5"]) == 0
    out = capsys.readouterr().out
    assert "== text: 'navy check shirt for men'" in out and "title2img" in out
    assert "(title #" in out or "(photo #" in out  # text searches run on every channel and say which found a hit
    assert {"keywords", "text_vectors", "vectors"} <= {p.name for p in (tmp_path / "demo" / "index").iterdir()}


def test_a_json_answer_stays_one_line_whatever_its_strings_hold():
    from enclip.cli import json_line

    value = {"title": "Navy\u2028Shirt\x85 \u2029 Café \n tab\t"}
    line = json_line(value)
    assert len(line.splitlines()) == 1 and json.loads(line) == value and "Café" in line


def test_a_colour_branch_model_trains_indexes_and_finds_a_catalogue_photo(tmp_path, capsys):
    items = make_items(40, seed=5)
    data = write_hf_parquet(tmp_path / "data", items)
    assert main(["train", "--data", str(data), "--out", str(tmp_path / "model"), *TINY_FLAGS,
                 "--colour-branch"]) == 0
    model = json.loads((tmp_path / "model" / "members" / "0" / "model.json").read_text())
    assert model["heads"]["colour"] is True
    assert main(["index", "--data", str(data), "--model", str(tmp_path / "model"), "--out",
                 str(tmp_path / "index"), "--channels", "image"]) == 0
    photo = tmp_path / "photo.jpg"
    photo.write_bytes(items[7].image)
    capsys.readouterr()
    assert main(["search", "--index", str(tmp_path / "index"), "--image", str(photo), "--k", "3", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["hits"][0]["id"] == items[7].id  # its own photo, embedded alike


def test_a_demo_folder_left_by_other_defaults_is_refused_by_name_and_left_untouched(tmp_path, capsys):
    from tests.data.conftest import write_kaggle

    data = write_kaggle(tmp_path / "catalogue", make_items(20, seed=4))
    model = tmp_path / "demo" / "model"
    model.mkdir(parents=True)
    earlier = {"train": {"epochs": 6, "heads": {"trainable_text": 1}}}  # what an earlier version's demo recorded
    (model / "train_config.json").write_text(json.dumps(earlier))
    assert main(["demo", "--data", str(data), "--out", str(tmp_path / "demo"), "--quick"]) == 2
    err = capsys.readouterr().err
    assert f"{tmp_path / 'demo'} holds a demo trained with other settings" in err
    assert "train.heads.trainable_text 1 (asked 0)" in err and f"--out {tmp_path / 'demo'}-new" in err
    assert json.loads((model / "train_config.json").read_text()) == earlier
    assert [p.name for p in model.iterdir()] == ["train_config.json"]  # nothing trained, cached or indexed
    assert not (tmp_path / "demo" / "index").exists() and not (tmp_path / "demo" / "trunk-cache").exists()
