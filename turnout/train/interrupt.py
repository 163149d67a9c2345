"""Stopping when told to: SIGTERM (what a scheduler sends before it kills) and SIGINT (Ctrl-C) end a run at a
step boundary with a checkpoint, an event and the report, instead of losing the steps since the last checkpoint.

`SignalStop` holds the handlers while the loop runs (main thread only: Python delivers signals there). The
first signal is only noted; the loop finishes the step it is in, checkpoints and raises `Interrupted`, which the
CLI turns into exit 128 + signal (143 for SIGTERM, 130 for SIGINT). A second SIGINT abandons the step at once
(KeyboardInterrupt), for a person who will not wait; nothing written so far is lost either way. Across ranks
the note is all-reduced before each step, so every rank stops after the same step and checkpoints together.
"""

from __future__ import annotations

import signal
import threading
from typing import Any

import torch
import torch.distributed as dist

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Interrupted(Exception):
    """The run stopped at a step boundary because of a signal; `code` is the process's exit code."""

    def __init__(self, signum: int, step: int, checkpoint: str | None):
        self.signum, self.step, self.checkpoint = signum, step, checkpoint
        self.code = 128 + signum
        name = signal.Signals(signum).name
        saved = f"checkpoint {checkpoint}" if checkpoint else "no checkpoint needed (nothing trained since the last)"
        super().__init__(f"stopped by {name} after step {step}; {saved}; continue with --resume")


class SignalStop:
    """Notes SIGTERM/SIGINT while active (a context manager); `requested` says whether any rank got
    one, the same answer on every rank."""

    def __init__(self) -> None:
        self.signum = 0
        self._old: dict[int, Any] = {}

    def __enter__(self) -> "SignalStop":
        if threading.current_thread() is threading.main_thread():
            for s in STOP_SIGNALS:
                self._old[s] = signal.signal(s, self._note)
        return self

    def __exit__(self, *exc: object) -> None:
        for s, old in self._old.items():
            signal.signal(s, old)
        self._old.clear()

    def _note(self, signum: int, frame: Any) -> None:
        if signum == signal.SIGINT and self.signum == signal.SIGINT:
            raise KeyboardInterrupt  # asked twice: do not wait for the step
        self.signum = self.signum or signum

    def requested(self, world_size: int, device: torch.device) -> int:
        """The signal number some rank received (0: none); one small all-reduce on `device` (the collectives'
        device) when there are several ranks."""
        if world_size <= 1:
            return self.signum
        t = torch.tensor([self.signum], dtype=torch.int64, device=device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return int(t.item())
