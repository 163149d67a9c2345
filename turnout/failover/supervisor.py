"""The supervisor: runs training workers on a priority list of targets and fails over when one stops being trusted.

The worker (`turnout train --resume`, through torchrun when there are several ranks) decides about its own steps;
the supervisor decides about targets. It reads why a worker stopped from the run's events (they carry the detail
an exit code cannot) and:
- `untrusted` (persistent SDC, repeated device errors) or `hang`: fail over to the next target that accepts the
  config, resuming from the newest complete checkpoint (DCP reshards when the world size differs), at the same
  global sample index; the worker then checks its first losses against those recorded before the switch;
- a worker that died some other way (killed, crashed): restart it on the same target from its checkpoint, up to
  `max_restarts` times, then fail over;
- a run that is broken on any target (`unrecoverable`, a config error): stop.
Every decision is an event in the run's events.jsonl.
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
from turnout.ckpt import latest_checkpoint
from turnout.config import Config
from turnout.failover.worker import STOP_KINDS, SUPERVISED_ENV, WorkerExit, events_since, wait_forwarding_signals
from turnout.report.rundir import RunDir
from turnout.train.build import refusals
from turnout.train.events import EventLog
from turnout.train.health import EXIT_UNRECOVERABLE
from turnout.train.launch import command as launch_command

__all__ = ["STOP_KINDS", "SUPERVISED_ENV", "Supervisor", "WorkerExit", "wait_forwarding_signals"]


def _last_step(run: RunDir, target: str) -> int:
    """Highest step the target recorded in the run's metrics (0 when none)."""
    return max((int(m["step"]) for m in run.read_metrics()[0]
                if m.get("kind") == "train" and m.get("target") == target and isinstance(m.get("step"), int)),
               default=0)


class Supervisor:
    """Runs `turnout train` workers for one run over a list of targets."""

    def __init__(self, config: Config, config_path: Path, run_dir: Path, targets: list[str], *, nproc: int = 1,
                 extra_args: list[str] = (), max_restarts: int = 3, log: Callable[[str], None] = print,
                 until: int | None = None):
        self.config, self.config_path, self.run_dir = config, config_path, Path(run_dir)
        self.targets, self.nproc, self.extra = list(targets), nproc, list(extra_args)
        self.max_restarts, self.log, self.until = max_restarts, log, until
        self.folder = RunDir(run_dir)
        self.events = EventLog(self.folder.events, targets[0], echo=log)
        self.worker: subprocess.Popen | None = None

    def command(self, target: str, resume: bool) -> list[str]:
        inner = ["--config", str(self.config_path), "--out", str(self.run_dir), "--target", target, *self.extra]
        if resume:
            inner.append("--resume")
        if self.until:
            inner += ["--until", str(self.until)]
        if self.nproc > 1:
            return launch_command(self.nproc, ["train", *inner])
        return [sys.executable, "-m", "turnout", "train", *inner]

    def run_worker(self, target: str, resume: bool) -> WorkerExit:
        """Start one worker (group) and wait. A SIGINT/SIGTERM to the supervisor is passed on to the worker, which
        checkpoints at its next step boundary and stops; the supervisor then stops too (reason "interrupted")."""
        t0 = time.time()
        env = dict(os.environ, PYTHONUNBUFFERED="1", **{SUPERVISED_ENV: "1"})
        self.worker = subprocess.Popen(self.command(target, resume), env=env, start_new_session=True)
        (self.run_dir / "worker.pid").write_text(str(self.worker.pid))
        try:
            code, got = wait_forwarding_signals(self.worker)
        finally:
            (self.run_dir / "worker.pid").unlink(missing_ok=True)
        stops = [e for e in events_since(self.folder, t0) if e.get("kind") in STOP_KINDS]
        last = _last_step(self.folder, target)
        if got:
            name = signal.Signals(got[0]).name
            return WorkerExit(code if code > 0 else 128 + got[0], "interrupted",
                              f"{name}: passed on to the worker, which stopped after step {last}", last)
        if code == 0:
            return WorkerExit(0, "done", "", last)
        if stops:
            return WorkerExit(code, stops[-1]["kind"], stops[-1].get("detail", ""), last)
        if code == 2:
            return WorkerExit(code, "config", "the worker refused its input", last)
        how = f"killed by signal {-code}" if code < 0 else f"exited with code {code}"
        return WorkerExit(code, "died", f"worker {how}", last)

    def usable(self, target: str) -> list[str]:
        """Why `target` cannot take over this run (empty when it can)."""
        try:
            backend = get_backend(target)
        except ValueError as e:
            return [str(e)]
        return refusals(backend, self.config, self.nproc)

    def run(self) -> int:
        """Drive the run to completion over the targets; returns the exit code for the CLI."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        restarts, i = 0, 0
        resume = latest_checkpoint(self.run_dir) is not None
        ran: WorkerExit | None = None  # how the last worker on targets[i] ended, if one ran there
        while i < len(self.targets):
            target = self.targets[i]
            why = self.usable(target)
            if why:
                self.events.emit("target_refused", 0, f"{target} cannot take this run: {'; '.join(why)}",
                                 target=target)
                i += 1
                if ran is not None:  # it ran before and validate() now rejects it: move the run on
                    self._failover(target, self.targets[i] if i < len(self.targets) else None,
                                   WorkerExit(ran.code, "refused", "; ".join(why), ran.last_step))
                ran = None
                continue
            ex = ran = self.run_worker(target, resume)
            resume = True
            if ex.reason == "done":
                return 0
            if ex.reason == "interrupted":
                self.log(f"supervisor: {ex.detail}; continue with the same command and --resume")
                return ex.code
            if ex.reason in ("unrecoverable", "config"):
                self.log(f"supervisor: stopping: {ex.detail}")
                return ex.code or 1
            if ex.reason == "died":
                restarts += 1
                self.events.emit("worker_lost", ex.last_step, f"{ex.detail} on {target} (restart {restarts} of "
                                 f"{self.max_restarts})", target=target, code=ex.code)
                if restarts <= self.max_restarts:
                    continue
                ex = WorkerExit(ex.code, "died", f"the worker died {restarts} times on {target}", ex.last_step)
            i += 1
            restarts, ran = 0, None
            self._failover(target, self.targets[i] if i < len(self.targets) else None, ex)
        self.log("supervisor: no target left to run on")
        return EXIT_UNRECOVERABLE  # the run cannot continue on any target (88, as the README promises)

    def _failover(self, old: str, new: str | None, ex: WorkerExit) -> None:
        folder = latest_checkpoint(self.run_dir)
        to_step = int(folder.name.split("-")[1]) if folder else 0
        lost = max(ex.last_step - to_step, 0)
        if new is None:
            self.events.emit("failover", to_step, f"{old} stopped ({ex.reason}: {ex.detail}); no fallback target "
                             f"left", target=old, from_target=old, to_target=None, reason=ex.reason)
            return
        self.events.emit("failover", to_step, f"{old} -> {new}: {ex.reason}: {ex.detail}; resuming from "
                         f"{folder.name if folder else 'the start'} ({lost} step(s) to recompute)", target=old,
                         from_target=old, to_target=new, reason=ex.reason, from_step=ex.last_step, to_step=to_step,
                         steps_lost=lost)
