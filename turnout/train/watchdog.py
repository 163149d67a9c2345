"""A hang watchdog outside the training thread (after NVRx's learned section timeouts).

The training thread marks the start and end of each step; a daemon thread checks every `poll_s` whether the
current section has run longer than its timeout: `hang_first_s` until a few step times are known, then
`max(hang_floor_s, hang_factor x median recent step time)`. A step that never returns (a stuck kernel or
collective) cannot be interrupted from Python, so `on_hang` records the hang and ends the process; the
supervisor then resumes the run from its last checkpoint on the next target. Qualification's training-parity
stage uses the same watchdog with one fixed timeout, to release an emulated hang.
"""

from __future__ import annotations

import statistics
import threading
import time
from collections import deque
from typing import Callable

from turnout.config import HealthSection


class Watchdog:
    """Times sections of the training thread and calls `on_hang(label, step, elapsed, timeout)` once per hang.

    `h` is the health section whose timeouts are learned from step times, or one fixed number of seconds for
    every section."""

    def __init__(self, h: HealthSection | float, on_hang: Callable[[str, int, float, float], None],
                 poll_s: float = 0.2):
        self.h = h
        self.on_hang = on_hang
        self.poll_s = poll_s
        self.durations: deque[float] = deque(maxlen=50)
        self._section: tuple[str, int, float] | None = None  # (label, step, start)
        self._fired = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="turnout-watchdog", daemon=True)

    def start(self) -> "Watchdog":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def timeout(self, label: str = "step") -> float:
        if not isinstance(self.h, HealthSection):
            return float(self.h)
        if label != "step" or len(self.durations) < 3:
            return self.h.hang_first_s
        return max(self.h.hang_floor_s, self.h.hang_factor * statistics.median(self.durations))

    def begin(self, label: str, step: int) -> None:
        self._section = (label, step, time.monotonic())
        self._fired = False

    def end(self) -> None:
        sec = self._section
        self._section = None
        if sec is not None and sec[0] == "step":
            self.durations.append(time.monotonic() - sec[2])

    def _watch(self) -> None:
        while not self._stop.wait(self.poll_s):
            sec = self._section
            if sec is None or self._fired:
                continue
            label, step, t0 = sec
            elapsed, limit = time.monotonic() - t0, self.timeout(label)
            if elapsed > limit:
                self._fired = True
                self.on_hang(label, step, elapsed, limit)
