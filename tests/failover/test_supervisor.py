"""Failover end to end: a supervisor process runs workers on an unproven target and moves the run when it must."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

BASE = ["--config", "configs/debug.toml", "--set", "train.batch_size=4", "--set", "train.seq_len=32",
        "--set", "train.eval_interval=0", "--set", "train.warmup_steps=2", "--set", "ckpt.interval=10"]


def _turnout(*args, timeout=600):
    return subprocess.run([sys.executable, "-m", "turnout", *args], capture_output=True, text=True, timeout=timeout)


def _events(run: Path, kind=None):
    ev = [json.loads(x) for x in (run / "events.jsonl").read_text().splitlines() if x.strip()]
    return [e for e in ev if kind is None or e["kind"] == kind]


def _final_val(run: Path) -> float:
    return [e for e in _events(run, "end")][-1]["val_loss"]


def test_flaky_fails_over_to_cpu_and_lands_near_a_clean_run(tmp_path):
    steps = ["--set", "train.steps=130"]  # the SDCs at 43 and 97 are caught by the checksums, on their own steps
    flaky, clean = tmp_path / "flaky", tmp_path / "clean"
    r = _turnout("train", *BASE, *steps, "--out", str(flaky), "--target", "sim:flaky", "--fallback", "cpu")
    assert r.returncode == 0, r.stderr[-2000:]
    r = _turnout("train", *BASE, *steps, "--out", str(clean), "--target", "cpu")
    assert r.returncode == 0, r.stderr[-2000:]
    fo = _events(flaky, "failover")
    assert len(fo) == 1 and fo[0]["from_target"] == "sim:flaky" and fo[0]["to_target"] == "cpu"
    assert fo[0]["reason"] == "untrusted"
    end = _events(flaky, "end")[-1]
    assert end["target"] == "cpu" and end["step"] == 130
    check = _events(flaky, "loss_check")
    assert check and check[0]["ok"]
    # every injected fault was detected
    injected = {(e["fault"], e["step"]) for e in _events(flaky, "injected")}
    detected = {(e["kind"], e["step"]) for e in _events(flaky) if e["kind"] in ("sdc", "device_error")}
    assert injected <= detected, injected - detected
    # nothing was lost: the run on the unproven chip ends where a clean one does
    assert abs(_final_val(flaky) - _final_val(clean)) <= 0.02 * _final_val(clean)


def test_hang_is_detected_and_the_run_fails_over(tmp_path):
    prof = tmp_path / "stuck.toml"
    prof.write_text('[profile]\ndescription = "hangs"\n[[fault]]\nkind = "hang"\nat_steps = [15]\nseconds = 600\n')
    run = tmp_path / "run"
    t0 = time.time()
    r = _turnout("train", *BASE, "--set", "train.steps=25", "--set", "health.hang_floor_s=2",
                 "--set", "health.hang_factor=5", "--out", str(run), "--target", f"sim:{prof}", "--fallback", "cpu")
    assert r.returncode == 0, r.stderr[-2000:]
    assert time.time() - t0 < 300
    hang = _events(run, "hang")
    assert len(hang) == 1 and hang[0]["step"] == 15
    fo = _events(run, "failover")[0]
    assert fo["reason"] == "hang" and fo["to_target"] == "cpu" and fo["to_step"] == 10
    assert _events(run, "end")[-1]["step"] == 25


@pytest.mark.dist  # two gloo ranks through torchrun
def test_corrupted_gradient_all_reduce_is_caught_and_the_run_fails_over(tmp_path):
    """DDP on sim:bad-allreduce: compute is healthy, but each step's first gradient all_reduce returns a flipped
    bit. Each is caught (the in-place re-run is clean: transient), the target loses trust and the run moves to
    cpu. Without a fallback the job exits 86 with the ranks' one-line reason, not torchrun's code 1 and traceback."""
    ddp = ["--set", "train.steps=8", "--set", "train.parallel='ddp'", "--set", "health.max_faults=2",
           "--target", "sim:bad-allreduce", "--nproc", "2"]
    r = _turnout("train", *BASE, *ddp, "--out", str(tmp_path / "alone"))
    assert r.returncode == 86, r.stderr[-2000:]
    said = [x for x in r.stderr.splitlines() if x.startswith("turnout train:")]
    assert len(said) == 1 and "no longer trusted" in said[0] and "Traceback" not in r.stderr
    assert "train with --fallback" in said[0]
    run = tmp_path / "run"
    r = _turnout("train", *BASE, *ddp, "--out", str(run), "--fallback", "cpu")
    assert r.returncode == 0, r.stderr[-2000:]
    said = [x for x in r.stderr.splitlines() if x.startswith("turnout train:")]
    assert len(said) == 1 and said[0].endswith("the supervisor moves the run")  # no advice to do its job
    injected = _events(run, "injected")
    assert sorted((e["step"], e["rank"]) for e in injected) == [(1, 0), (1, 1), (2, 0), (2, 1)]  # every rank's
    assert {e["op"] for e in injected} == {"c10d::allreduce"}
    assert [(e["step"], e["classification"]) for e in _events(run, "sdc")] == [(1, "transient"), (2, "transient")]
    fo = _events(run, "failover")
    assert len(fo) == 1 and fo[0]["reason"] == "untrusted" and fo[0]["to_target"] == "cpu"
    end = _events(run, "end")[-1]
    assert end["target"] == "cpu" and end["step"] == 8


def test_sigkill_of_a_worker_restarts_it_from_the_checkpoint(tmp_path):
    run = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "turnout", "train", *BASE, "--set", "train.steps=60",
                             "--out", str(run), "--target", "cpu", "--fallback", "cpu"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    pid = None
    while time.time() < deadline:
        ck = list((run / "checkpoints").glob("step-*[0-9]")) if (run / "checkpoints").is_dir() else []
        if ck and (run / "worker.pid").is_file():
            pid = int((run / "worker.pid").read_text())
            break
        time.sleep(0.05)
    assert pid, "no worker to kill"
    os.kill(pid, signal.SIGKILL)
    assert proc.wait(timeout=400) == 0
    lost = _events(run, "worker_lost")
    assert len(lost) == 1 and "signal 9" in lost[0]["detail"]
    assert _events(run, "end")[-1]["step"] == 60
    assert any(e["kind"] == "resume" for e in _events(run))


def test_bad_fallback_spec_is_one_line(tmp_path):
    r = _turnout("train", *BASE, "--out", str(tmp_path / "x"), "--target", "cpu", "--fallback", "tpu")
    assert r.returncode == 2 and "valid forms" in r.stderr and "Traceback" not in r.stderr


def test_a_target_that_validate_now_rejects_is_failed_over(tmp_path, monkeypatch):
    """A worker dies; before restarting it the supervisor asks the target again, which now refuses the config."""
    from turnout.config import load_config
    from turnout.failover import Supervisor, WorkerExit

    cfg = load_config("configs/debug.toml")
    (tmp_path / "c.toml").write_text("")
    sup = Supervisor(cfg, tmp_path / "c.toml", tmp_path / "run", ["sim:healthy", "cpu"], log=lambda m: None)
    calls = []

    def fake_worker(target, resume):
        calls.append(target)
        return WorkerExit(-9, "died", "worker killed by signal 9", 12) if target == "sim:healthy" else \
            WorkerExit(0, "done", "", 20)

    def usable(target):  # the emulated chip disappears after its first worker
        return ["target sim:healthy is not available: device lost"] if calls.count(target) >= 1 and \
            target == "sim:healthy" else []

    monkeypatch.setattr(sup, "run_worker", fake_worker)
    monkeypatch.setattr(sup, "usable", usable)
    assert sup.run() == 0
    assert calls == ["sim:healthy", "cpu"]
    fo = _events(tmp_path / "run", "failover")
    assert len(fo) == 1 and fo[0]["reason"] == "refused" and fo[0]["to_target"] == "cpu"
    assert "device lost" in fo[0]["detail"]
