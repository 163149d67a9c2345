"""A supervised worker process: how it is told it is supervised, how its end is described, and waiting for it
while the supervisor's SIGTERM/SIGINT are passed on to it. Shared by the supervisor of `turnout train` workers and
the one of users' own scripts."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
from dataclasses import dataclass

from turnout.report.rundir import RunDir

STOP_KINDS = ("untrusted", "hang", "unrecoverable")  # events with which a worker says why it stopped
SUPERVISED_ENV = "TURNOUT_SUPERVISED"  # set for workers: what to do next is the supervisor's call, not the user's


@dataclass
class WorkerExit:
    code: int
    reason: str  # "done", "untrusted", "hang", "unrecoverable", "config", "died", "refused", "interrupted"
    detail: str
    last_step: int


def events_since(run: RunDir, t0: float) -> list[dict]:
    """The run's events written at or after time `t0` (those a worker started then wrote)."""
    return [e for e in run.read_events()[0] if isinstance(e.get("time"), (int, float)) and e["time"] >= t0]


def wait_forwarding_signals(worker: subprocess.Popen) -> tuple[int, list[int]]:
    """Wait for a worker started in its own session, passing SIGTERM/SIGINT on to its process group meanwhile (in
    the main thread); returns its exit code and the signals passed on."""
    got: list[int] = []

    def forward(signum: int, frame: object) -> None:
        got.append(signum)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(worker.pid, signum)

    old = {s: signal.signal(s, forward) for s in (signal.SIGTERM, signal.SIGINT)} \
        if threading.current_thread() is threading.main_thread() else {}
    try:
        return worker.wait(), got
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)
