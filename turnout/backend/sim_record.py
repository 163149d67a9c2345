"""The sim's ground truth: every fault it injected and every host fallback, with the step it happened at.

Events are dicts ``{"step", "kind", "op", "detail", "time"}`` (time: `time.time()`; step: None before the
first `set_step`). One-shot faults (sdc, device_error, hang, missing_op raising, unsupported dtype) get one
event each time they happen. Faults that act on every matching call (lossy_accum, bad_backward,
nondeterministic, fallbacks) would flood the list, so they are counted per op in `counts` (fallbacks also in
`fallbacks`) and get one event per (step, kind, op), the first time.
"""

from __future__ import annotations

import time
from typing import Any


class Recorder:
    """Events and counters for one SimBackend."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []
        self.fallbacks: dict[str, int] = {}  # op -> calls run "on the host"
        self.counts: dict[str, dict[str, int]] = {}  # kind -> op -> calls affected
        self._seen: set[tuple] = set()

    def event(self, step: int | None, kind: str, op: str | None, detail: str) -> dict[str, Any]:
        """Record one injected fault; returns the event (a hang appends how it ended to its detail)."""
        ev = {"step": step, "kind": kind, "op": op, "detail": detail, "time": time.time()}
        self.events.append(ev)
        return ev

    def count(self, step: int | None, kind: str, op: str, detail: str) -> None:
        """Count one call hit by a per-call fault; the first per (step, kind, op) also becomes an event."""
        per_op = self.counts.setdefault(kind, {})
        per_op[op] = per_op.get(op, 0) + 1
        if kind == "fallback":
            self.fallbacks[op] = self.fallbacks.get(op, 0) + 1
        key = (step, kind, op)
        if key not in self._seen:
            self._seen.add(key)
            self.event(step, kind, op, detail)

    def injected(self, kind: str | None = None) -> list[dict[str, Any]]:
        """Events, optionally only those of `kind` (a fault kind, 'fallback' or 'unsupported_dtype')."""
        return [e for e in self.events if kind is None or e["kind"] == kind]

    def reset(self) -> None:
        """Forget all records (fault schedules and RNG state are kept)."""
        self.events.clear()
        self.fallbacks.clear()
        self.counts.clear()
        self._seen.clear()
