"""The folders turnout writes, and the name of every file in them: nothing outside this module spells one.

    RUN/                      RunDir: one training run (`turnout train --out RUN`)
      config.toml             the run's config, as resolved
      run.json                name, targets used in order, model args, parameter counts, start time
      metrics.jsonl           one line per step and per held-out evaluation
      events.jsonl            every notable thing that happened, with its evidence
      tokenizer.json          the tokenizer the data was encoded with
      report.html             the run report (rebuilt from the files above)
      tensorboard/            event files, when train.log_to has "tensorboard"
      checkpoints/step-N/     DCP shards, manifest.json, tokenizer.json (written as step-N.tmp/, then renamed)
      checkpoints/step-N.corrupt/  a checkpoint that failed verification, set aside (never counted or deleted)
    QDIR/                     QualifyDir: one qualification (`turnout qualify --out QDIR`)
      qualify.json, report.html
    DEMO/                     DemoDir: `turnout demo --out DEMO`
      index.html, story.json, run/ (a RunDir), hf/ (the export), qualify-<target>/ (QualifyDirs),
      .turnout-demo (the mark that lets a later demo run replace these, and only these)
"""

from __future__ import annotations

import json
import re
import shutil
import time
from pathlib import Path

from turnout import atomic
from turnout.report.jsonl import read_jsonl

MANIFEST = "manifest.json"  # inside each checkpoint folder
TOKENIZER = "tokenizer.json"  # beside the run's files and inside each checkpoint folder
_STEP_RE = re.compile(r"^step-(\d+)$")


class RunDir:
    """A training run's folder: the path of each of its files, and the one reader of its JSONL logs."""

    def __init__(self, root: Path | str):
        self.root = Path(root)
        self.config = self.root / "config.toml"
        self.info = self.root / "run.json"
        self.metrics = self.root / "metrics.jsonl"
        self.events = self.root / "events.jsonl"
        self.tokenizer = self.root / TOKENIZER
        self.report = self.root / "report.html"
        self.tensorboard = self.root / "tensorboard"
        self.checkpoints = self.root / "checkpoints"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, RunDir) and other.root == self.root

    def __hash__(self) -> int:
        return hash(self.root)

    def checkpoint(self, step: int) -> Path:
        """The folder of the checkpoint taken after `step`."""
        return self.checkpoints / f"step-{step:08d}"

    def checkpoint_folders(self) -> list[tuple[int, Path]]:
        """(step, folder) of every folder named like a finished checkpoint, oldest first (not verified here)."""
        try:
            found = [(int(m.group(1)), p) for p in self.checkpoints.iterdir()
                     if p.is_dir() and (m := _STEP_RE.match(p.name))]
        except OSError:
            return []
        return sorted(found)

    @staticmethod
    def set_aside_name(folder: Path) -> Path:
        """Where a checkpoint that failed verification goes: step-N.corrupt beside it (step-N.corrupt-2, ... when
        an earlier one of that step is already there), so nothing already set aside is replaced."""
        dest, i = folder.with_name(folder.name + ".corrupt"), 1
        while dest.exists():
            i += 1
            dest = folder.with_name(f"{folder.name}.corrupt-{i}")
        return dest

    def set_aside_checkpoints(self) -> list[Path]:
        """Checkpoints that failed verification and were moved aside (`step-N.corrupt`)."""
        return sorted(self.checkpoints.glob("step-*.corrupt*")) if self.checkpoints.is_dir() else []

    def partial_checkpoints(self) -> list[Path]:
        """Checkpoint folders a writer had not finished (`step-N.tmp`)."""
        return sorted(self.checkpoints.glob("step-*.tmp")) if self.checkpoints.is_dir() else []

    @staticmethod
    def of_checkpoint(folder: Path | str) -> RunDir | None:
        """The run a checkpoint folder belongs to (RUN/checkpoints/step-N), or None for a loose folder."""
        folder = Path(folder)
        return RunDir(folder.parent.parent) if folder.parent.name == "checkpoints" else None

    def exists(self) -> bool:
        """Whether this folder holds a run's record (metrics or events); a folder of other files does not."""
        return self.root.is_dir() and (self.metrics.is_file() or self.events.is_file())

    def read_metrics(self) -> tuple[list[dict], int]:
        """(metrics rows, unreadable lines skipped); a torn last line is skipped, never an error."""
        return read_jsonl(self.metrics)

    def read_events(self) -> tuple[list[dict], int]:
        """(events, unreadable lines skipped)."""
        return read_jsonl(self.events)

    def read_info(self) -> dict:
        """run.json as a dict ({} when missing or unreadable)."""
        return read_json_object(self.info)

    def note_start(self, target: str, **facts) -> dict:
        """Record in run.json that the run (re)started on `target`: targets in order of first use, the first
        start time kept across resumes, and `facts` (model args, parameter counts, world size). Atomic."""
        old = self.read_info()
        targets = [str(t) for t in old.get("targets", []) if isinstance(t, str)]
        if target not in targets:
            targets.append(target)
        info = {"name": self.root.name, "targets": targets, **facts, "started": old.get("started", time.time())}
        atomic.write_json(self.info, info)
        return info


class QualifyDir:
    """A qualification's folder: the result as JSON and the page drawn from it."""

    def __init__(self, root: Path | str):
        self.root = Path(root)
        self.result = self.root / "qualify.json"
        self.report = self.root / "report.html"

    def read_result(self) -> dict:
        """qualify.json as a dict ({} when missing or unreadable)."""
        return read_json_object(self.result)


class CoverageDir:
    """An sdc-coverage campaign's folder: the figures and records as JSON and the page drawn from them."""

    def __init__(self, root: Path | str):
        self.root = Path(root)
        self.result = self.root / "sdc-coverage.json"
        self.report = self.root / "sdc-coverage.html"


class DemoDir:
    """The demo's folder: one page, its story, the run, the export and a qualification per target."""

    def __init__(self, root: Path | str):
        self.root = Path(root)
        self.index = self.root / "index.html"
        self.story = self.root / "story.json"
        self.run = RunDir(self.root / "run")
        self.hf = self.root / "hf"
        self.marker = self.root / ".turnout-demo"

    def entries(self) -> list[Path]:
        """What a demo run left here: the only paths a new demo run may replace."""
        if not self.root.is_dir():
            return []
        own = (self.index, self.story, self.run.root, self.hf, self.marker)
        return sorted(p for p in self.root.iterdir() if p in own or (p.is_dir() and p.name.startswith("qualify-")))

    def claim(self) -> None:
        """Make the folder ready for a demo run without losing anything turnout did not write: a missing or
        empty folder is created, a previous demo run's own files are removed (anything else in it stays), and
        a folder holding other things is refused (ValueError naming it)."""
        if self.root.exists() and not self.root.is_dir():
            raise ValueError(f"{self.root} is a file, not a folder")
        earlier = self.marker.is_file() or self.story.is_file()  # story.json: a demo run from before the mark
        if self.root.is_dir() and any(self.root.iterdir()) and not earlier:
            raise ValueError(f"{self.root} is not empty and holds no earlier demo run; choose another --out or "
                             f"empty it yourself")
        for p in self.entries():
            shutil.rmtree(p) if p.is_dir() else p.unlink()
        self.root.mkdir(parents=True, exist_ok=True)
        atomic.write_text(self.marker, "written by turnout demo; a later demo run may replace this folder's "
                          "demo files (index.html, story.json, run/, hf/, qualify-*/) and nothing else\n")

    def qualification(self, target: str) -> QualifyDir:
        """The folder of `target`'s qualification (a spec such as sim:flaky becomes qualify-sim-flaky)."""
        return QualifyDir(self.root / ("qualify-" + re.sub(r"[^A-Za-z0-9_.-]+", "-", target)))


def read_json_object(path: Path) -> dict:
    """A JSON object from a file, or {} when missing, unreadable or not an object."""
    try:
        obj = json.loads(path.read_text(encoding="utf-8", errors="replace"))
    except (OSError, ValueError, RecursionError):
        return {}
    return obj if isinstance(obj, dict) else {}
