"""`turnout supervise`: a script turnout does not own, failed over between targets by its exit codes and events."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from turnout.cli import main as cli

WORKER = r'''
import json, os, sys, time
from pathlib import Path
target, log = os.environ["TURNOUT_TARGET"], Path(sys.argv[1])
with open(log, "a") as f:
    f.write(target + "\n")
runs = log.read_text().split()
plan = dict(arg.split("=", 1) for arg in sys.argv[2:])  # target -> what to do there
act = plan.get(target, "ok")
if act == "ok":
    sys.exit(0)
if act.startswith("exit"):
    sys.exit(int(act[4:]))
if act == "event":  # an untrusted event in the run folder, then an ordinary crash
    run = Path(os.environ["TURNOUT_RUN_DIR"])
    with open(run / "events.jsonl", "a") as f:
        f.write(json.dumps({"step": 7, "time": time.time(), "kind": "untrusted", "target": target,
                            "detail": "3 silent data corruptions"}) + "\n")
    sys.exit(1)
if act.startswith("crash"):  # crash the first N runs on this target
    sys.exit(1 if runs.count(target) <= int(act[5:]) else 0)
if act == "wait":
    import signal
    signal.signal(signal.SIGTERM, lambda *a: (Path(str(log) + ".term").write_text("got it"), sys.exit(143)))
    time.sleep(60)
'''


@pytest.fixture
def script(tmp_path):
    path = tmp_path / "worker.py"
    path.write_text(WORKER)
    return path


def _supervise(tmp_path, script, targets: list[str], plan: dict[str, str], run: bool = True, **kw) -> tuple[int, list[str]]:
    log = tmp_path / "targets.log"
    argv = ["supervise", "--target", targets[0], *[a for t in targets[1:] for a in ("--fallback", t)]]
    if run:
        argv += ["--run", str(tmp_path / "run")]
    argv += [f"--{k.replace('_', '-')}={v}" for k, v in kw.items()]
    argv += ["--", sys.executable, str(script), str(log), *[f"{k}={v}" for k, v in plan.items()]]
    code = cli(argv)
    return code, log.read_text().split() if log.exists() else []


def _events(tmp_path) -> list[dict]:
    return [json.loads(x) for x in (tmp_path / "run" / "events.jsonl").read_text().splitlines()]


def test_untrusted_by_exit_code_moves_to_the_next_target(tmp_path, script):
    code, seen = _supervise(tmp_path, script, ["sim:flaky", "cpu"], {"sim:flaky": "exit86"})
    assert code == 0 and seen == ["sim:flaky", "cpu"]
    fo = [e for e in _events(tmp_path) if e["kind"] == "failover"]
    assert len(fo) == 1 and fo[0]["from_target"] == "sim:flaky" and fo[0]["to_target"] == "cpu"
    assert fo[0]["reason"] == "untrusted"


def test_an_untrusted_event_counts_whatever_the_exit_code(tmp_path, script):
    code, seen = _supervise(tmp_path, script, ["sim:flaky", "cpu"], {"sim:flaky": "event"})
    assert code == 0 and seen == ["sim:flaky", "cpu"]
    assert [e["reason"] for e in _events(tmp_path) if e["kind"] == "failover"] == ["untrusted"]


def test_a_hang_fails_over_too(tmp_path, script):
    code, seen = _supervise(tmp_path, script, ["sim:hang", "cpu"], {"sim:hang": "exit87"})
    assert code == 0 and seen == ["sim:hang", "cpu"]


def test_a_crash_is_restarted_on_the_same_target_then_failed_over(tmp_path, script):
    code, seen = _supervise(tmp_path, script, ["sim:flaky", "cpu"], {"sim:flaky": "crash2"})
    assert code == 0 and seen == ["sim:flaky"] * 3  # two crashes, restarted, then done there
    (tmp_path / "targets.log").unlink()
    code, seen = _supervise(tmp_path, script, ["sim:flaky", "cpu"], {"sim:flaky": "crash9"}, max_restarts=1)
    assert code == 0 and seen == ["sim:flaky", "sim:flaky", "cpu"]


def test_unrecoverable_and_refused_input_stop(tmp_path, script):
    code, seen = _supervise(tmp_path, script, ["sim:flaky", "cpu"], {"sim:flaky": "exit88"})
    assert code == 88 and seen == ["sim:flaky"]
    (tmp_path / "targets.log").unlink()
    code, seen = _supervise(tmp_path, script, ["sim:flaky", "cpu"], {"sim:flaky": "exit2"})
    assert code == 2 and seen == ["sim:flaky"]


def test_no_target_left_is_88_and_a_bad_target_is_skipped(tmp_path, script):
    code, seen = _supervise(tmp_path, script, ["sim:no-such-profile", "sim:flaky"], {"sim:flaky": "exit86"})
    assert code == 88 and seen == ["sim:flaky"]
    assert [e["kind"] for e in _events(tmp_path)][:1] == ["target_refused"]


def test_without_a_run_folder_decisions_are_printed(tmp_path, script, capsys):
    code, seen = _supervise(tmp_path, script, ["sim:flaky", "cpu"], {"sim:flaky": "exit86"}, run=False)
    assert code == 0 and seen == ["sim:flaky", "cpu"]
    assert "[failover] sim:flaky -> cpu" in capsys.readouterr().err


def test_no_command_is_one_line_exit_2(capsys):
    assert cli(["supervise", "--fallback", "cpu"]) == 2
    err = capsys.readouterr().err.strip()
    assert "no command to run" in err and "\n" not in err


def test_sigterm_is_passed_on_to_the_script(tmp_path, script):
    log = tmp_path / "targets.log"
    p = subprocess.Popen([sys.executable, "-m", "turnout", "supervise", "--target", "cpu", "--", sys.executable,
                          str(script), str(log), "cpu=wait"], env=dict(os.environ, PYTHONUNBUFFERED="1"))
    for _ in range(100):
        if log.exists():
            break
        time.sleep(0.1)
    time.sleep(0.5)
    p.send_signal(signal.SIGTERM)
    assert p.wait(timeout=30) == 143
    assert Path(str(log) + ".term").read_text() == "got it"
