"""`turnout config`: every field shown with doc and value; --toml round-trips; bad input is one line."""

from __future__ import annotations

import json

from turnout.cli import main as cli
from turnout.config import describe_fields, load_config


def test_every_field_is_shown_with_its_doc_and_value(capsys):
    assert cli(["config", "--config", "configs/tiny.toml", "--set", "train.lr=0.002"]) == 0
    out = capsys.readouterr().out
    for key, _, doc in describe_fields():
        assert f"{key} = " in out and doc in out, key
    assert "* train.lr = 0.002  (default 0.003)" in out
    assert "[health]  The health monitor" in out and "parameters (" in out


def test_toml_output_is_a_config_file_that_reads_back_the_same(tmp_path, capsys):
    overrides = ["train.steps=37", "data.sources=[\"a b.txt\", \"d/\"]", "model.overrides.n_layers=3",
                 "health.reference=\"\"", "train.log_interval=3"]
    sets = [x for o in overrides for x in ("--set", o)]
    assert cli(["config", "--toml", "--config", "configs/demo.toml", *sets]) == 0
    path = tmp_path / "mine.toml"
    path.write_text(capsys.readouterr().out)
    assert load_config(path) == load_config("configs/demo.toml", overrides)


def test_changed_and_json(capsys):
    assert cli(["config", "--json", "--changed", "--set", "ckpt.keep=9", "--set", "train.seed=4"]) == 0
    sections = json.loads(capsys.readouterr().out)
    changed = {f["key"]: (f["value"], f["default"]) for s in sections for f in s["fields"]}
    assert changed == {"ckpt.keep": (9, 3), "train.seed": (4, 0)}
    assert cli(["config", "--json"]) == 0
    every = [f for s in json.loads(capsys.readouterr().out) for f in s["fields"]]
    assert len(every) == len(describe_fields()) and all(f["accepts"] and f["doc"] for f in every)


def test_bad_input_is_one_line_exit_2(tmp_path, capsys):
    assert cli(["config", "--set", "train.lr=nan"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "train.lr" in err
    assert cli(["config", "--config", str(tmp_path / "none.toml")]) == 2
    assert "not found" in capsys.readouterr().err
