"""The run record's line format: one JSON object per line, appended and flushed as written, read back tolerantly.

A killed process keeps everything up to its last complete line; a torn last line (or any unreadable one) is
skipped and counted when read, never an exception. Non-finite floats are written as the strings "NaN",
"Infinity", "-Infinity" so every line stays strict JSON for other tools (jq, pandas, browsers).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any


def clean(v: Any) -> Any:
    """JSON-safe: non-finite floats become strings ('NaN', 'Infinity') so the file stays strict JSON."""
    if isinstance(v, float) and not math.isfinite(v):
        return "NaN" if math.isnan(v) else ("Infinity" if v > 0 else "-Infinity")
    if isinstance(v, dict):
        return {k: clean(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [clean(x) for x in v]
    return v


class JsonlWriter:
    """Appends one JSON object per line; a no-op when `enabled` is False (e.g. ranks that do not keep the log).

    Each line goes out in one write on a file opened for appending, so short lines from several processes
    (the ranks of one run) do not interleave on a local filesystem."""

    def __init__(self, path: Path, enabled: bool = True):
        self.path = Path(path)
        self.enabled = enabled
        self._f = None

    def write(self, obj: dict) -> None:
        """Append one line; the file (and its folder) is created on the first write, so a start that fails
        before anything happened leaves nothing behind."""
        if not self.enabled:
            return
        if self._f is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._f = open(self.path, "a")
        self._f.write(json.dumps(clean(obj)) + "\n")
        self._f.flush()

    def close(self) -> None:
        if self._f is not None:
            self._f.close()
            self._f = None


def read_jsonl(path: Path | str) -> tuple[list[dict], int]:
    """(the JSON objects in a JSONL file, how many non-blank lines were skipped as unreadable).

    Blank lines are ignored; unparsable lines (a truncated last line) and lines that are not objects are
    skipped and counted. A missing or unreadable file gives ([], 0).
    """
    try:
        # errors="replace": a write cut inside a multi-byte character must not make the whole file unreadable.
        text = Path(path).read_bytes().decode("utf-8", errors="replace")
    except OSError:
        return [], 0
    rows, skipped = [], 0
    for line in text.splitlines():
        line = line.strip()
        if not line:
            continue
        try:
            obj = json.loads(line)  # Python's json accepts NaN/Infinity literals, which older writers used
        except (ValueError, RecursionError):
            skipped += 1
            continue
        if isinstance(obj, dict):
            rows.append(obj)
        else:
            skipped += 1
    return rows, skipped
