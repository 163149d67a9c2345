"""What a start or a resume promises: a failed start leaves nothing, a resume with another model is refused
naming the fields, a resume that changes the schedule says so."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from turnout.cli import main

FAST = ["--config", "configs/debug.toml", "--set", "train.batch_size=4", "--set", "train.seq_len=32",
        "--set", "train.eval_interval=0", "--set", "train.eval_batches=1", "--set", "train.warmup_steps=2"]


def _events(run: Path, kind: str) -> list[dict]:
    rows = [json.loads(line) for line in (run / "events.jsonl").read_text().splitlines() if line.strip()]
    return [e for e in rows if e.get("kind") == kind]


@pytest.mark.parametrize("bad", [["--target", "sim:doesnotexist"], ["--target", "cuda:7"],
                                 ["--set", "data.sources=['/nonexistent/corpus.txt']"],
                                 ["--set", "model.preset=enormous"], ["--set", "data.sources=['{tmp}/empty.txt']"]])
def test_a_failed_start_leaves_no_run_folder(tmp_path, bad):
    (tmp_path / "empty.txt").write_text("")  # a corpus that holds no text fails only once the data is built
    bad = [a.format(tmp=tmp_path) for a in bad]
    out = tmp_path / "run"
    r = subprocess.run([sys.executable, "-m", "turnout", "train", *FAST, "--out", str(out), *bad],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert not out.exists()


def test_resume_with_another_model_names_the_fields_and_keeps_the_run(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", *FAST, "--set", "train.steps=2", "--out", str(run)]) == 0
    config = (run / "config.toml").read_text()
    events = (run / "events.jsonl").read_text()
    capsys.readouterr()
    assert main(["train", *FAST, "--set", "train.steps=4", "--set", "model.overrides.n_layers=5", "--out", str(run),
                 "--resume"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "n_layers=3 (config: 5)" in err and "step-00000002" in err
    assert (run / "config.toml").read_text() == config and (run / "events.jsonl").read_text() == events


def test_a_longer_schedule_on_resume_is_said_and_recorded(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", *FAST, "--set", "train.steps=4", "--set", "ckpt.interval=2", "--out", str(run),
                 "--until", "3"]) == 0
    capsys.readouterr()
    assert main(["train", "--out", str(run), "--resume", "--set", "train.steps=6"]) == 0
    (ev,) = _events(run, "schedule_changed")
    assert ev["step"] == 3 and ev["changed"] == {"steps": [4, 6]} and ev["lr_now"] > ev["lr_before"]
    assert "train.steps 4 -> 6" in capsys.readouterr().out
    assert main(["train", "--out", str(run), "--resume", "--set", "train.steps=8"]) == 0
    assert len(_events(run, "schedule_changed")) == 2  # against the checkpoint it resumed from, each time
