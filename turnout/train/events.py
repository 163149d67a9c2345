"""Append-only JSON-lines logs: `RUN/metrics.jsonl` (one object per step or eval) and `RUN/events.jsonl`.

Every event carries at least step, time, kind, target and detail; evidence goes in extra fields. Lines are
flushed as written so a killed run keeps everything up to its last completed line.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any


def _clean(v: Any) -> Any:
    """JSON-safe: non-finite floats become strings ('NaN', 'Infinity') so the file stays strict JSON."""
    if isinstance(v, float) and not math.isfinite(v):
        return "NaN" if math.isnan(v) else ("Infinity" if v > 0 else "-Infinity")
    if isinstance(v, dict):
        return {k: _clean(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_clean(x) for x in v]
    return v


class JsonlWriter:
    """Appends one JSON object per line; no-op when `enabled` is False (non-zero ranks)."""

    def __init__(self, path: Path, enabled: bool = True):
        self.path = Path(path)
        self.enabled = enabled
        self._f = None
        if enabled:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._f = open(self.path, "a")

    def write(self, obj: dict) -> None:
        if self._f is not None:
            self._f.write(json.dumps(_clean(obj)) + "\n")
            self._f.flush()

    def close(self) -> None:
        if self._f is not None:
            self._f.close()
            self._f = None


#: what one rank can see alone; every other event follows all-reduced numbers, so rank 0 writes it for all
RANK_LOCAL_KINDS = frozenset({"device_error"})


class EventLog(JsonlWriter):
    """`RUN/events.jsonl`: every notable thing that happened, with its evidence.

    Rank 0 writes every event. With `rank` set (another rank of a multi-rank run) only RANK_LOCAL_KINDS are
    written, tagged with the rank; appends of single short lines from several processes do not interleave."""

    def __init__(self, path: Path, target: str, enabled: bool = True, echo=None, rank: int | None = None):
        super().__init__(path, enabled)
        self.target = target
        self.echo = echo  # callable(str) that shows events to a person, e.g. the progress display
        self.rank = rank

    def emit(self, kind: str, step: int, detail: str, **evidence: Any) -> dict:
        event = {"step": step, "time": time.time(), "kind": kind, "target": evidence.pop("target", self.target),
                 "detail": detail, **evidence}
        if self.rank is None:
            self.write(event)
        elif kind in RANK_LOCAL_KINDS:
            self.write({**event, "rank": self.rank})
        if self.echo is not None and self.enabled:
            self.echo(f"[{kind}] step {step}: {detail}")
        return event
