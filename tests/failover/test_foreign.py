"""`turnout supervise`: a script turnout does not own, failed over between targets by its exit codes and events."""

from __future__ import annotations

import contextlib
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
import json, os, signal, sys, time
from pathlib import Path
target, log = os.environ["TURNOUT_TARGET"], Path(sys.argv[1])
with open(log, "a") as f:
    f.write(target + "\n")
with open(str(log) + ".env", "a") as f:
    f.write(json.dumps({k: os.environ.get(k) for k in ("TURNOUT_SUPERVISED", "TURNOUT_RUN_DIR", "PYTHONUNBUFFERED")})
            + "\n")
runs = log.read_text().split()
plan = dict(arg.split("=", 1) for arg in sys.argv[2:])  # target -> what to do there
act = plan.get(target, "ok")
if act == "ok":
    sys.exit(0)
if act.startswith("exit"):
    sys.exit(int(act[4:]))
if act.startswith("event:"):  # a stop event of that kind in the run folder, then an ordinary crash
    run = Path(os.environ["TURNOUT_RUN_DIR"])
    with open(run / "events.jsonl", "a") as f:
        f.write(json.dumps({"step": 7, "time": time.time(), "kind": act[6:], "target": target,
                            "detail": "the script's own words"}) + "\n")
    sys.exit(1)
if act.startswith("crash"):  # crash the first N runs on this target
    sys.exit(1 if runs.count(target) <= int(act[5:]) else 0)
if act == "kill":
    os.kill(os.getpid(), signal.SIGKILL)
if act == "wait":
    signal.signal(signal.SIGTERM, lambda *a: (Path(str(log) + ".term").write_text("got it"), sys.exit(143)))
    Path(str(log) + ".ready").write_text(str(os.getpid()))
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
    assert fo[0]["reason"] == "untrusted" and fo[0]["target"] == "sim:flaky"
    env = [json.loads(x) for x in (tmp_path / "targets.log.env").read_text().splitlines()]
    assert env == [{"TURNOUT_SUPERVISED": "1", "TURNOUT_RUN_DIR": str(tmp_path / "run"), "PYTHONUNBUFFERED": "1"}] * 2


def test_an_untrusted_event_counts_whatever_the_exit_code(tmp_path, script):
    code, seen = _supervise(tmp_path, script, ["sim:flaky", "cpu"], {"sim:flaky": "event:untrusted"})
    assert code == 0 and seen == ["sim:flaky", "cpu"]
    assert [e["reason"] for e in _events(tmp_path) if e["kind"] == "failover"] == ["untrusted"]


def test_a_hang_fails_over_too(tmp_path, script):
    code, seen = _supervise(tmp_path, script, ["sim:hang", "cpu"], {"sim:hang": "exit87"})
    assert code == 0 and seen == ["sim:hang", "cpu"]
    (tmp_path / "targets.log").unlink()
    code, seen = _supervise(tmp_path, script, ["sim:hang", "sim:flaky", "cpu"], {"sim:hang": "event:hang",
                                                                                "sim:flaky": "exit86"})
    assert code == 0 and seen == ["sim:hang", "sim:flaky", "cpu"]
    fo = [e for e in _events(tmp_path) if e["kind"] == "failover"][-2:]
    assert [(e["from_target"], e["to_target"], e["reason"]) for e in fo] == [
        ("sim:hang", "sim:flaky", "hang"), ("sim:flaky", "cpu", "untrusted")]
    assert "the script's own words" in fo[0]["detail"] and fo[0]["step"] == 7


def test_events_from_before_the_script_started_do_not_count(tmp_path, script):
    run = tmp_path / "run"
    run.mkdir()
    (run / "events.jsonl").write_text(json.dumps({"step": 3, "time": time.time() - 60, "kind": "untrusted",
                                                  "target": "sim:flaky", "detail": "an earlier run"}) + "\n")
    code, seen = _supervise(tmp_path, script, ["sim:flaky", "cpu"], {"sim:flaky": "crash1"})
    assert code == 0 and seen == ["sim:flaky", "sim:flaky"]  # a crash: restarted where it was
    assert [e["kind"] for e in _events(tmp_path)] == ["untrusted", "worker_lost"]


def test_a_crash_is_restarted_on_the_same_target_then_failed_over(tmp_path, script):
    code, seen = _supervise(tmp_path, script, ["sim:flaky", "cpu"], {"sim:flaky": "crash2"})
    assert code == 0 and seen == ["sim:flaky"] * 3  # two crashes, restarted, then done there
    lost = [e for e in _events(tmp_path) if e["kind"] == "worker_lost"]
    assert [(e["target"], e["code"]) for e in lost] == [("sim:flaky", 1)] * 2
    assert "restart 2 of 3" in lost[1]["detail"]
    (tmp_path / "targets.log").unlink()
    (tmp_path / "run" / "events.jsonl").unlink()
    code, seen = _supervise(tmp_path, script, ["sim:flaky", "cpu"], {"sim:flaky": "crash9"}, max_restarts=1)
    assert code == 0 and seen == ["sim:flaky", "sim:flaky", "cpu"]
    assert [(e["kind"], e.get("reason")) for e in _events(tmp_path)] == [
        ("worker_lost", None), ("worker_lost", None), ("failover", "died")]


def test_a_script_killed_by_a_signal_is_restarted_too(tmp_path, script):
    code, seen = _supervise(tmp_path, script, ["sim:flaky", "cpu"], {"sim:flaky": "kill"}, max_restarts=0)
    assert code == 0 and seen == ["sim:flaky", "cpu"]
    lost = [e for e in _events(tmp_path) if e["kind"] == "worker_lost"]
    assert len(lost) == 1 and lost[0]["code"] == -signal.SIGKILL and "killed by signal 9" in lost[0]["detail"]


def test_unrecoverable_and_refused_input_stop(tmp_path, script):
    code, seen = _supervise(tmp_path, script, ["sim:flaky", "cpu"], {"sim:flaky": "exit88"})
    assert code == 88 and seen == ["sim:flaky"]
    (tmp_path / "targets.log").unlink()
    code, seen = _supervise(tmp_path, script, ["sim:flaky", "cpu"], {"sim:flaky": "event:unrecoverable"})
    assert code == 88 and seen == ["sim:flaky"]  # the script exited 1, its event says why
    (tmp_path / "targets.log").unlink()
    code, seen = _supervise(tmp_path, script, ["sim:flaky", "cpu"], {"sim:flaky": "exit2"})
    assert code == 2 and seen == ["sim:flaky"]


def test_no_target_left_is_88_and_a_bad_target_is_skipped(tmp_path, script):
    code, seen = _supervise(tmp_path, script, ["sim:no-such-profile", "sim:flaky"], {"sim:flaky": "exit86"})
    assert code == 88 and seen == ["sim:flaky"]
    ev = _events(tmp_path)
    assert [(e["kind"], e["target"]) for e in ev] == [("target_refused", "sim:no-such-profile"),
                                                      ("failover", "sim:flaky")]
    assert ev[1]["to_target"] is None


def test_a_target_that_is_not_here_is_refused_before_it_starts(tmp_path, script):
    from turnout.backend import get_backend

    absent = next((t for t in ("npu", "xpu", "mps", "cuda") if not get_backend(t).is_available()), None)
    if absent is None:
        pytest.skip("every device kind is present here")
    code, seen = _supervise(tmp_path, script, [absent, "cpu"], {})
    assert code == 0 and seen == ["cpu"]
    ev = _events(tmp_path)
    assert [(e["kind"], e["target"]) for e in ev] == [("target_refused", absent)]
    assert "not available" in ev[0]["detail"]


def test_a_command_that_cannot_start_is_refused_input(tmp_path):
    assert cli(["supervise", "--target", "cpu", "--", str(tmp_path / "no-such-program")]) == 2


def test_without_a_run_folder_decisions_are_printed(tmp_path, script, capsys):
    code, seen = _supervise(tmp_path, script, ["sim:flaky", "cpu"], {"sim:flaky": "exit86"}, run=False)
    assert code == 0 and seen == ["sim:flaky", "cpu"]
    assert "[failover] sim:flaky -> cpu" in capsys.readouterr().err


def test_no_command_is_one_line_exit_2(capsys):
    assert cli(["supervise", "--fallback", "cpu"]) == 2
    err = capsys.readouterr().err.strip()
    assert "no command to run" in err and "\n" not in err


def test_sigterm_is_passed_on_to_the_script(tmp_path, script):
    """The supervisor's SIGTERM reaches the script, and the supervisor ends with the script's code, not moving on."""
    log = tmp_path / "targets.log"
    p = subprocess.Popen([sys.executable, "-m", "turnout", "supervise", "--target", "cpu", "--fallback", "sim:flaky",
                          "--run", str(tmp_path / "run"), "--", sys.executable, str(script), str(log), "cpu=wait"],
                         env=dict(os.environ, PYTHONUNBUFFERED="1"))
    ready = Path(str(log) + ".ready")  # the script's pid, written once its handler is set
    deadline = time.monotonic() + 60
    try:
        while not ready.exists() and p.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert ready.exists(), "the script never started"
        p.send_signal(signal.SIGTERM)
        assert p.wait(timeout=30) == 143
    finally:  # a supervisor that failed to pass the signal on leaves the script behind: end it
        p.kill()
        if ready.exists() and ready.read_text():
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(ready.read_text()), signal.SIGKILL)
    assert Path(str(log) + ".term").read_text() == "got it"
    assert log.read_text().split() == ["cpu"]  # not restarted, not failed over
