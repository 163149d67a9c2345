"""Atomic writes: the target is replaced whole, readable by all, and untouched when the write fails."""

import json
import os
import stat

import pytest

from turnout import atomic


def test_writes_and_replaces(tmp_path):
    p = tmp_path / "a.json"
    atomic.write_json(p, {"x": 1})
    assert json.loads(p.read_text()) == {"x": 1} and p.read_text().endswith("\n")
    atomic.write_text(p, "two")
    assert p.read_text() == "two"
    assert stat.S_IMODE(os.stat(p).st_mode) == 0o644
    assert [q.name for q in tmp_path.iterdir()] == ["a.json"]  # no temp files left behind


def test_failed_write_keeps_the_old_file(tmp_path, monkeypatch):
    p = tmp_path / "keep.txt"
    p.write_text("old")

    def broken_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk full"):
        atomic.write_bytes(p, b"new")
    assert p.read_text() == "old"
    assert [q.name for q in tmp_path.iterdir()] == ["keep.txt"]


def test_unserialisable_json_writes_nothing(tmp_path):
    p = tmp_path / "x.json"
    with pytest.raises(ValueError):
        atomic.write_json(p, {"nan": float("nan")}, allow_nan=False)
    assert not p.exists() and list(tmp_path.iterdir()) == []
