"""SIGTERM and SIGINT end a run at a step boundary with a checkpoint, a `stop` event and the report, exiting
143 / 130; the run resumes from that very step."""

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from turnout.ckpt import verify

ARGS = ["--config", "configs/debug.toml", "--set", "train.steps=400", "--set", "train.batch_size=4",
        "--set", "train.seq_len=32", "--set", "train.eval_interval=0", "--set", "train.eval_batches=1",
        "--set", "ckpt.interval=100", "--target", "cpu"]


def _rows(path: Path, kind: str) -> list[dict]:
    if not path.is_file():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:  # a line being written
            continue
        if row.get("kind") == kind:
            out.append(row)
    return out


@pytest.mark.parametrize("sig, code, extra", [(signal.SIGTERM, 143, []), (signal.SIGINT, 130, []),
                                             (signal.SIGTERM, 143, ["--fallback", "cpu"]),
                                             (signal.SIGTERM, 143, ["--nproc", "2"])],
                         ids=["sigterm", "sigint", "sigterm-to-the-supervisor", "sigterm-to-two-ranks"])
def test_a_signal_checkpoints_records_and_exits(tmp_path, sig, code, extra):
    run = tmp_path / "run"
    p = subprocess.Popen([sys.executable, "-m", "turnout", "train", *ARGS, "--out", str(run), *extra],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while len(_rows(run / "metrics.jsonl", "train")) < 3 and time.time() < deadline and p.poll() is None:
        time.sleep(0.1)
    p.send_signal(sig)
    out, err = p.communicate(timeout=120)
    assert p.returncode == code, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1 and signal.Signals(sig).name in err
    if "--fallback" in extra:
        assert "supervisor: SIGTERM: passed on to the worker" in out
    (stop,) = _rows(run / "events.jsonl", "stop")
    step = stop["step"]
    assert stop["signal"] == signal.Signals(sig).name and 3 <= step < 100
    assert max(r["step"] for r in _rows(run / "metrics.jsonl", "train")) == step  # no step lost, none half-done
    folder = run / "checkpoints" / f"step-{step:08d}"
    assert verify(folder) == [] and stop["checkpoint"] == str(folder)
    assert (run / "report.html").is_file()
    r = subprocess.run([sys.executable, "-m", "turnout", "train", "--out", str(run), "--resume", "--until",
                        str(step + 1)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    resume = _rows(run / "events.jsonl", "resume")[-1]
    assert resume["step"] == step
