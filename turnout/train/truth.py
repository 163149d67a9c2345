"""Ground truth from an emulated target: the faults it injected, copied into RUN/events.jsonl as they happen.

A sim backend records every one-off fault it injects and every op it ran on the host; the run copies them as
`injected` and `fallback_op` events so each detection can be matched with what really happened. Every rank
copies its own (with its rank when there are several): one rank's fault is invisible to the others. The lines
are short single appends, so ranks writing to the same file do not interleave.
"""

from __future__ import annotations

from turnout.backend import Backend
from turnout.train.dist import DistInfo
from turnout.report.jsonl import JsonlWriter


class GroundTruth:
    """Copies a backend's new injection records into the run's events (no-op for a real target)."""

    def __init__(self, backend: Backend, events: JsonlWriter, info: DistInfo):
        self.backend = backend
        self.out = events  # the run's events.jsonl, open on every rank
        self.rank = {"rank": info.rank} if info.world_size > 1 else {}
        self.seen = 0  # records already copied
        self.fallback_ops: set[str] = set()  # a host fallback is reported once per op

    def drain(self) -> None:
        records = getattr(self.backend, "events", None)
        if not isinstance(records, list) or len(records) <= self.seen:
            return
        new, self.seen = records[self.seen:], len(records)
        name = self.backend.name
        for r in new:
            kind, step = r.get("kind"), r.get("step") or 0
            if kind in ("sdc", "device_error", "hang", "missing_op"):
                self.out.write({"step": step, "time": r["time"], "kind": "injected", "target": name,
                                "detail": r.get("detail", ""), "fault": kind, "op": r.get("op"), **self.rank})
            elif kind == "fallback" and r.get("op") not in self.fallback_ops:
                self.fallback_ops.add(r.get("op"))
                self.out.write({"step": step, "time": r["time"], "kind": "fallback_op", "target": name,
                                "detail": r.get("detail", ""), "op": r.get("op"), **self.rank})
