"""What every stage returns: status, evidence numbers and findings, plus how an exception on the target is named.

A *finding* is one thing a stage found that bears on the verdict ("forward op mm fails", "device lost at step 25");
verdict.py alone decides what each kind of finding costs. Stages never pick the verdict themselves.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable

PASS, FAIL, SKIPPED = "pass", "fail", "skipped"

Log = Callable[[str], None]


@dataclass
class Finding:
    """One verdict-relevant fact: `kind` is a key of verdict.LEVELS, `message` one line a person can act on."""

    kind: str
    message: str
    stage: str = ""

    def to_dict(self) -> dict:
        return {"kind": self.kind, "message": self.message, "stage": self.stage}


@dataclass
class StageResult:
    """One stage's outcome. `evidence` is JSON-ready and holds the numbers the report draws."""

    name: str  # capabilities | ops | blocks | determinism | training | sdc | collectives | perf
    title: str
    status: str = PASS
    summary: str = ""
    findings: list[Finding] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    evidence: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0

    def find(self, kind: str, message: str) -> None:
        """Record a finding (and mark the stage failed)."""
        self.findings.append(Finding(kind, message, self.name))
        self.status = FAIL

    def skip(self, why: str) -> StageResult:
        self.status = SKIPPED
        self.summary = why
        return self

    def to_dict(self) -> dict:
        return {"title": self.title, "status": self.status, "seconds": round(self.seconds, 3),
                "summary": self.summary, "reasons": [f.message for f in self.findings],
                "findings": [f.to_dict() for f in self.findings], "warnings": list(self.warnings),
                "evidence": self.evidence}


class Timer:
    """`with Timer() as t: ...; t.seconds`"""

    def __enter__(self) -> Timer:
        self.t0 = time.perf_counter()
        self.seconds = 0.0
        return self

    def __exit__(self, *exc: Any) -> None:
        self.seconds = time.perf_counter() - self.t0


def is_missing(e: BaseException) -> bool:
    """Does this exception say an op or dtype has no kernel here (rather than the device failing)?"""
    text = str(e).lower()
    return isinstance(e, NotImplementedError) or "not implemented" in text or "no kernel" in text \
        or "could not run" in text


def failure_kind(e: BaseException) -> str:
    """'missing_op' for a missing kernel, else 'device_error' (lost device, runtime fault, hang released)."""
    return "missing_op" if is_missing(e) else "device_error"
