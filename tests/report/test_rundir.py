"""The run folder's names live in one place (RunDir), and its JSONL logs read back whatever a killed writer left."""

import ast
import json
import math
from pathlib import Path

import pytest

from turnout.report.jsonl import JsonlWriter, read_jsonl
from turnout.report.rundir import DemoDir, QualifyDir, RunDir

PACKAGE = Path(__file__).resolve().parents[2] / "turnout"
# Names of files and folders that only turnout's own folders have (tokenizer.json is also an HF file name).
RUN_FOLDER_NAMES = ("metrics.jsonl", "events.jsonl", "run.json", "config.toml", "report.html", "qualify.json",
                    "story.json", "index.html", "manifest.json", "checkpoints")


def _code_strings(path: Path):
    """(line, text) of every string constant in a module that is not a docstring."""
    tree = ast.parse(path.read_text())
    docstrings = {id(n.body[0].value) for n in ast.walk(tree)
                  if isinstance(n, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
                  and n.body and isinstance(n.body[0], ast.Expr) and isinstance(n.body[0].value, ast.Constant)}
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
            yield node.lineno, node.value


def test_no_module_outside_report_spells_a_run_folder_file():
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.relative_to(PACKAGE).parts[0] == "report":
            continue
        for line, text in _code_strings(path):
            # a path (the name alone, or as a component of a path); prose that mentions a file is fine
            path_like = text.strip().replace("\\", "/")
            parts = path_like.split("/")
            if " " not in path_like and any(name in parts for name in RUN_FOLDER_NAMES):
                found.append(f"{path.relative_to(PACKAGE)}:{line}: {text!r}")
    assert not found, "use turnout.report.rundir instead:\n" + "\n".join(found)


def test_run_dir_names_and_checkpoints(tmp_path):
    run = RunDir(tmp_path / "r")
    assert not run.exists()
    for step in (20, 5):
        run.checkpoint(step).mkdir(parents=True)
    (run.checkpoints / "step-00000030.tmp").mkdir()
    (run.checkpoints / "notes").mkdir()
    assert [s for s, _ in run.checkpoint_folders()] == [5, 20]
    assert [p.name for p in run.partial_checkpoints()] == ["step-00000030.tmp"]
    assert RunDir.of_checkpoint(run.checkpoint(5)) == run and RunDir.of_checkpoint(tmp_path) is None
    run.events.write_text('{"kind": "start"}\n')
    assert run.exists()


def test_note_start_keeps_the_first_start_and_the_targets_in_order(tmp_path):
    run = RunDir(tmp_path)
    first = run.note_start("sim:flaky", params=3)
    again = run.note_start("cpu", params=3)
    assert again["targets"] == ["sim:flaky", "cpu"] and again["started"] == first["started"]
    assert run.note_start("sim:flaky")["targets"] == ["sim:flaky", "cpu"]
    assert json.loads(run.info.read_text())["name"] == tmp_path.name
    assert not list(tmp_path.glob(".run.json.*"))  # written through the atomic writer


def test_demo_and_qualify_folders(tmp_path):
    demo = DemoDir(tmp_path)
    q = demo.qualification("sim:flaky")
    assert q.root.name == "qualify-sim-flaky" and isinstance(q, QualifyDir)
    assert q.read_result() == {}
    q.root.mkdir()
    q.result.write_text('{"verdict": "unfit"}')
    assert q.read_result()["verdict"] == "unfit"
    assert demo.run.root == tmp_path / "run"


def test_jsonl_writes_strict_json_and_reads_torn_files(tmp_path):
    path = tmp_path / "m.jsonl"
    w = JsonlWriter(path)
    w.write({"loss": float("nan"), "x": [float("inf"), 1.0]})
    w.close()
    text = path.read_text()
    json.loads(text, parse_constant=lambda c: (_ for _ in ()).throw(ValueError(c)))  # no NaN literals
    path.write_bytes(path.read_bytes() + b'[1]\n{"b": NaN}\n{"c": "\xc3')
    rows, skipped = read_jsonl(path)
    assert rows[0] == {"loss": "NaN", "x": ["Infinity", 1.0]} and math.isnan(rows[1]["b"])
    assert skipped == 2  # the list and the torn last line
    JsonlWriter(tmp_path / "off.jsonl", enabled=False).write({"a": 1})
    assert not (tmp_path / "off.jsonl").exists()


def test_a_demo_folder_is_claimed_without_losing_what_turnout_did_not_write(tmp_path):
    mine = tmp_path / "important"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    with pytest.raises(ValueError, match="not empty"):
        DemoDir(mine).claim()
    assert (mine / "notes.txt").read_text() == "keep me"

    demo = DemoDir(tmp_path / "demo")
    demo.claim()  # a new folder
    for p in (demo.run.root, demo.hf, demo.qualification("cpu").root):
        p.mkdir()
    demo.index.write_text("old page")
    (demo.root / "notes.txt").write_text("mine")  # a person's file next to an earlier demo run
    demo.claim()
    assert sorted(p.name for p in demo.root.iterdir()) == [".turnout-demo", "notes.txt"]
