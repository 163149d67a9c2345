"""`RUN/events.jsonl` as the training loop writes it: every notable thing that happened, with its evidence.

Every event carries at least step, time, kind, target and detail; evidence goes in extra fields. The line
format (and metrics.jsonl's) is report/jsonl.py's: flushed as written, so a killed run keeps every line it
completed.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from turnout.report.jsonl import JsonlWriter

#: what one rank can see alone; every other event follows all-reduced numbers, so rank 0 writes it for all
RANK_LOCAL_KINDS = frozenset({"device_error", "checksum"})


class EventLog(JsonlWriter):
    """Rank 0 writes every event. With `rank` set (another rank of a multi-rank run) only RANK_LOCAL_KINDS are
    written, tagged with the rank; appends of single short lines from several processes do not interleave.

    `echo` shows each event to a person (the progress display); `also` receives every event rank 0 writes
    (e.g. a TensorBoard copy)."""

    def __init__(self, path: Path, target: str, enabled: bool = True, echo: Callable[[str], None] | None = None,
                 rank: int | None = None, also: Callable[[dict], None] | None = None):
        super().__init__(path, enabled)
        self.target = target
        self.echo = echo
        self.rank = rank
        self.also = also

    def emit(self, kind: str, step: int, detail: str, **evidence: Any) -> dict:
        event = {"step": step, "time": time.time(), "kind": kind, "target": evidence.pop("target", self.target),
                 "detail": detail, **evidence}
        if self.rank is None:
            self.write(event)
            if self.also is not None and self.enabled:
                self.also(event)
        elif kind in RANK_LOCAL_KINDS:
            self.write({**event, "rank": self.rank})
        if self.echo is not None and self.enabled:
            self.echo(f"[{kind}] step {step}: {detail}")
        return event
