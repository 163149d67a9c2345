"""Failover for training scripts turnout does not own: `turnout supervise --fallback cpu -- python train.py ...`.

The script is a worker: it learns its target from $TURNOUT_TARGET (a `Guard(target=None)` reads it) and keeps its
own record and checkpoints (a Guard's run_dir), from which a restarted process resumes by itself. How it ended
decides what happens next, from its exit code or, with `--run`, from the stop events it wrote since it started:
- 0: done;
- 86 or an `untrusted` event, 87 or a `hang` event: the target must go: the same command on the next target;
- 88 or an `unrecoverable` event: broken on any target: stop (88); 2: the script refused its input: stop;
- any other end (a crash, a kill): restart on the same target, up to `max_restarts` times, then fail over.
Targets that do not parse or are not available are refused before anything starts. Every decision is an event
in RUN/events.jsonl when a run folder is given, and a line on stderr either way.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

from turnout.backend import get_backend
from turnout.backend.registry import ENV_VAR as TARGET_ENV  # what a Guard(target=None) reads
from turnout.errors import one_line
from turnout.failover.worker import STOP_KINDS, SUPERVISED_ENV, WorkerExit, events_since, wait_forwarding_signals
from turnout.report.rundir import RunDir
from turnout.train.events import EventLog
from turnout.train.health import EXIT_HANG, EXIT_UNRECOVERABLE, EXIT_UNTRUSTED

RUN_ENV = "TURNOUT_RUN_DIR"
_BY_CODE = {EXIT_UNTRUSTED: "untrusted", EXIT_HANG: "hang", EXIT_UNRECOVERABLE: "unrecoverable"}


class ScriptSupervisor:
    """Runs a user's command over a priority list of targets (see the module docstring); `run()` returns the exit
    code for the CLI."""

    def __init__(self, command: list[str], targets: list[str], *, run_dir: str | Path | None = None,
                 max_restarts: int = 3, log: Callable[[str], None] | None = None):
        if not command:
            raise ValueError("no command to supervise")
        self.command, self.targets, self.max_restarts = list(command), list(targets), max_restarts
        self.log = log or (lambda line: print(line, file=sys.stderr, flush=True))
        self.folder = RunDir(run_dir) if run_dir is not None else None
        self.events = EventLog(self.folder.events if self.folder else Path(os.devnull), targets[0],
                               enabled=self.folder is not None)

    def note(self, kind: str, step: int, detail: str, **evidence) -> None:
        """A decision: an event in the run's record (when there is one) and a line for the person."""
        self.events.emit(kind, step, detail, **evidence)
        self.log(f"supervise: [{kind}] {detail}")

    def usable(self, target: str) -> str | None:
        """Why `target` cannot run the script (None when it can)."""
        try:
            backend = get_backend(target)
        except ValueError as e:
            return one_line(e)
        ok, why = backend.availability()
        return None if ok else f"not available: {why}"

    def run_worker(self, target: str) -> WorkerExit:
        """The command once on `target`; how it ended."""
        t0 = time.time()
        env = dict(os.environ, PYTHONUNBUFFERED="1", **{SUPERVISED_ENV: "1", TARGET_ENV: target})
        if self.folder is not None:
            env[RUN_ENV] = str(self.folder.root)
        self.log(f"supervise: running on {target}: {' '.join(self.command)}")
        try:
            worker = subprocess.Popen(self.command, env=env, start_new_session=True)
        except OSError as e:
            return WorkerExit(2, "config", f"cannot start {self.command[0]!r}: {one_line(e)}", 0)
        code, got = wait_forwarding_signals(worker)
        if got:
            name = signal.Signals(got[0]).name
            return WorkerExit(code if code > 0 else 128 + got[0], "interrupted", f"{name}: passed on to the script", 0)
        stops = [e for e in events_since(self.folder, t0) if e.get("kind") in STOP_KINDS] if self.folder else []
        if code == 0:
            return WorkerExit(0, "done", "", 0)
        if code in _BY_CODE:  # the code decides; an event of that kind, if the script wrote one, says more
            stops = [e for e in stops if e["kind"] == _BY_CODE[code]] or [{"kind": _BY_CODE[code]}]
        if stops:
            said = stops[-1]
            step = said["step"] if isinstance(said.get("step"), int) else 0
            return WorkerExit(code, said["kind"], said.get("detail") or f"exit code {code}", step)
        if code == 2:
            return WorkerExit(code, "config", "the script refused its input (exit 2)", 0)
        how = f"killed by signal {-code}" if code < 0 else f"exited with code {code}"
        return WorkerExit(code, "died", f"the script {how}", 0)

    def run(self) -> int:
        """Run the command over the targets until it is done or cannot go on; the exit code for the CLI: 0, 88 (no
        target left, or unrecoverable), the script's own code when it refused its input, or when it was stopped by
        a SIGTERM/SIGINT passed on to it (128 + the signal if it ended cleanly)."""
        if self.folder is not None:
            self.folder.root.mkdir(parents=True, exist_ok=True)
        restarts, i = 0, 0
        while i < len(self.targets):
            target = self.targets[i]
            why = self.usable(target)
            if why:
                self.note("target_refused", 0, f"{target} cannot run the script: {why}", target=target)
                i += 1
                continue
            ex = self.run_worker(target)
            if ex.reason == "done":
                self.log(f"supervise: done on {target}")
                return 0
            if ex.reason == "interrupted":
                self.log(f"supervise: {ex.detail}; stopped")
                return ex.code
            if ex.reason in ("unrecoverable", "config"):
                self.log(f"supervise: stopping: {ex.detail}")
                return EXIT_UNRECOVERABLE if ex.reason == "unrecoverable" else ex.code
            if ex.reason == "died":
                restarts += 1
                self.note("worker_lost", ex.last_step, f"{ex.detail} on {target} (restart {restarts} of "
                                 f"{self.max_restarts})", target=target, code=ex.code)
                if restarts <= self.max_restarts:
                    continue
                ex = WorkerExit(ex.code, "died", f"the script died {restarts} times on {target}", ex.last_step)
            i += 1
            restarts = 0
            new = self.targets[i] if i < len(self.targets) else None
            self.note("failover", ex.last_step, f"{target} -> {new or 'none left'}: {ex.reason}: {ex.detail}",
                             target=target, from_target=target, to_target=new, reason=ex.reason)
        self.log("supervise: no target left to run on")
        return EXIT_UNRECOVERABLE
