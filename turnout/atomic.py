"""Atomic file writes: readers see the old file or the new one, never half of one.

The bytes go to a temp file in the target's folder (so the final rename never crosses filesystems), are flushed
and fsynced, made world-readable (mkstemp creates owner-only files; reports and data files are meant to be shared),
and renamed over the target with os.replace. On any error the temp file is removed and the target is untouched.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any


def write_bytes(path: str | os.PathLike, data: bytes, *, mode: int = 0o644) -> Path:
    """Replace `path` with `data` atomically; returns the path."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_text(path: str | os.PathLike, text: str, *, mode: int = 0o644) -> Path:
    """Replace `path` with UTF-8 `text` atomically; returns the path."""
    return write_bytes(path, text.encode("utf-8"), mode=mode)


def write_json(path: str | os.PathLike, data: Any, *, indent: int | None = 1, **dump_kw: Any) -> Path:
    """Replace `path` with `data` as JSON (and a final newline) atomically; returns the path."""
    return write_text(path, json.dumps(data, indent=indent, **dump_kw) + "\n")
