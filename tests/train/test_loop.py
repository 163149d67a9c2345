"""Training runs end to end from the CLI on the `debug` preset: logs, checkpoints, resume, kill -9, errors."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from turnout.cli import main

FAST = ["--config", "configs/debug.toml", "--set", "train.steps=6", "--set", "train.batch_size=4",
        "--set", "train.seq_len=32", "--set", "train.eval_interval=3", "--set", "train.eval_batches=1",
        "--set", "ckpt.interval=3", "--set", "train.warmup_steps=2"]


def _lines(path: Path, kind: str | None = None) -> list[dict]:
    out = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [o for o in out if kind is None or o.get("kind") == kind]


def _losses(run: Path) -> dict[int, float]:
    return {m["step"]: m["loss"] for m in _lines(run / "metrics.jsonl", "train")}


def test_run_writes_metrics_events_checkpoints_report(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", *FAST, "--out", str(run), "--target", "cpu", "--sample", "ROMEO:"]) == 0
    out = capsys.readouterr().out
    assert "sample: ROMEO:" in out and "done: 6 steps on cpu" in out
    train = _lines(run / "metrics.jsonl", "train")
    assert [m["step"] for m in train] == [1, 2, 3, 4, 5, 6]
    for m in train:
        for key in ("loss", "ce", "mtp", "balance", "grad_norm", "grad_norm_layers", "lr", "tokens_per_s", "mfu",
                    "expert_load", "memory", "samples", "target"):
            assert key in m, key
        assert m["loss"] == pytest.approx(m["ce"] + 0.3 * m["mtp"] + m["balance"], rel=1e-5)
    assert train[-1]["samples"] == 6 * 4
    assert len(_lines(run / "metrics.jsonl", "eval")) == 2  # step 3 and the end
    kinds = [e["kind"] for e in _lines(run / "events.jsonl")]
    assert kinds[0] == "start" and kinds[-1] == "end" and kinds.count("checkpoint") == 2
    for e in _lines(run / "events.jsonl"):
        assert {"step", "time", "kind", "target", "detail"} <= set(e)
    ckpt = run / "checkpoints" / "step-00000006"
    man = json.loads((ckpt / "manifest.json").read_text())
    for key in ("model_args", "config", "target", "torch_version", "world_size", "step", "samples", "rng", "files"):
        assert key in man, key
    assert man["step"] == 6 and man["samples"] == 24 and man["target"] == "cpu" and man["world_size"] == 1
    assert "tokenizer.json" in man["files"] and any(f.endswith(".distcp") for f in man["files"])
    assert (run / "report.html").is_file()


def test_resume_is_bit_exact(tmp_path):
    straight, split = tmp_path / "straight", tmp_path / "split"
    assert main(["train", *FAST, "--out", str(straight), "--target", "cpu"]) == 0
    assert main(["train", *FAST, "--out", str(split), "--target", "cpu", "--until", "3"]) == 0
    assert max(_losses(split)) == 3
    assert main(["train", "--out", str(split), "--resume"]) == 0  # config and target come from the run folder
    assert _losses(split) == _losses(straight)  # bit for bit
    resume = [e for e in _lines(split / "events.jsonl") if e["kind"] == "resume"]
    assert resume and resume[0]["step"] == 3 and resume[0]["samples"] == 12


def test_kill_9_mid_run_then_resume_continues(tmp_path):
    run, ref = tmp_path / "killed", tmp_path / "ref"
    args = [*FAST, "--set", "train.steps=40", "--set", "ckpt.interval=5", "--set", "train.eval_interval=0"]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen([sys.executable, "-m", "turnout", "train", *args, "--out", str(run), "--target", "cpu"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    deadline = time.time() + 240
    while time.time() < deadline:
        ck = sorted((run / "checkpoints").glob("step-*[0-9]")) if (run / "checkpoints").exists() else []
        if len(ck) >= 2 and proc.poll() is None:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    killed_at = max(_losses(run))
    assert killed_at < 40
    assert main(["train", "--out", str(run), "--resume"]) == 0
    assert main(["train", *args, "--out", str(ref), "--target", "cpu"]) == 0
    assert _losses(run) == _losses(ref)


def test_refuses_to_overwrite_a_run_and_config_errors_are_one_line(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", *FAST, "--out", str(run), "--until", "3"]) == 0
    capsys.readouterr()
    assert main(["train", *FAST, "--out", str(run)]) == 2
    err = capsys.readouterr().err
    assert "--resume" in err and len(err.strip().splitlines()) == 1
    r = subprocess.run([sys.executable, "-m", "turnout", "train", "--out", str(tmp_path / "x"), "--set",
                        "train.lr=-1"], capture_output=True, text=True)
    assert r.returncode == 2 and r.stderr.strip().count("\n") == 0 and "train.lr" in r.stderr
    assert "Traceback" not in r.stderr
    r = subprocess.run([sys.executable, "-m", "turnout", "train", "--out", str(tmp_path / "y"), "--set",
                        "model.overrides.n_layerz=2"], capture_output=True, text=True)
    assert r.returncode == 2 and "model.overrides.n_layerz" in r.stderr and "Traceback" not in r.stderr


def test_resume_skips_a_corrupted_checkpoint(tmp_path):
    run = tmp_path / "run"
    assert main(["train", *FAST, "--out", str(run), "--until", "6", "--set", "ckpt.interval=2"]) == 0
    newest = sorted((run / "checkpoints").glob("step-*"))[-1]
    shard = next(newest.glob("*.distcp"))
    shard.write_bytes(shard.read_bytes()[:-10])
    assert main(["train", "--out", str(run), "--resume", "--set", "train.steps=8"]) == 0
    events = _lines(run / "events.jsonl")
    refused = [e for e in events if e["kind"] == "checkpoint_refused"]
    assert refused and "sha256" in refused[0]["detail"] or "missing" in refused[0]["detail"]
    resume = [e for e in events if e["kind"] == "resume"][-1]
    assert resume["step"] == 4


def test_gradient_accumulation_matches_one_big_batch(tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    assert main(["train", *FAST, "--out", str(one), "--until", "3", "--target", "cpu"]) == 0
    assert main(["train", *FAST, "--out", str(two), "--until", "3", "--target", "cpu", "--set", "train.grad_accum=2"]) == 0
    a, b = _losses(one), _losses(two)
    assert a.keys() == b.keys()
    for s in a:  # the same global batch; only the summation order differs
        assert a[s] == pytest.approx(b[s], rel=1e-5)


def test_resume_of_nothing_is_refused_and_of_a_finished_run_trains_nothing(tmp_path, capsys):
    empty = tmp_path / "empty"
    assert main(["train", *FAST, "--out", str(empty), "--resume"]) == 2
    err = capsys.readouterr().err
    assert "holds no run to resume" in err and len(err.strip().splitlines()) == 1 and not empty.exists()
    run = tmp_path / "run"
    assert main(["train", *FAST, "--out", str(run)]) == 0
    events = _lines(run / "events.jsonl")
    capsys.readouterr()
    assert main(["train", "--out", str(run), "--resume"]) == 0
    assert "already complete: 6 steps" in capsys.readouterr().out
    assert _lines(run / "events.jsonl") == events  # no resume, no end with a NaN loss
