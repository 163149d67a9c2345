"""After a failover: do the first steps on the new target reproduce the losses the old one recorded?

The run resumes from a checkpoint older than the old target's last steps, so the new target recomputes some
steps the old one already logged. Their losses must agree within `health.loss_check_rtol` (the targets'
dtypes and kernels differ, so not bit for bit); a mismatch is recorded as a `loss_check` event that is not ok.
"""

from __future__ import annotations

from turnout.config import HealthSection
from turnout.report.rundir import RunDir
from turnout.train.events import EventLog


def recorded_losses(run: RunDir, exclude: str) -> dict[int, float]:
    """The last loss recorded for each step by targets other than `exclude` (metrics.jsonl, torn lines skipped)."""
    out: dict[int, float] = {}
    for m in run.read_metrics()[0]:
        if m.get("kind") == "train" and m.get("target") != exclude and isinstance(m.get("loss"), float):
            out[int(m["step"])] = m["loss"]
    return out


class LossCheck:
    """Compares the new target's losses with those recorded past the checkpoint it resumed from."""

    def __init__(self, health: HealthSection, events: EventLog, target: str):
        self.health, self.events, self.target = health, events, target
        self.expected: dict[int, float] = {}  # step -> loss another target recorded past our checkpoint
        self.checked: list[tuple[int, float, float, float]] = []  # (step, loss, loss before, relative difference)

    def arm(self, run: RunDir, from_step: int) -> None:
        """Expect the losses other targets recorded after `from_step` (the checkpoint resumed from)."""
        self.expected = {s: l for s, l in recorded_losses(run, exclude=self.target).items() if s > from_step}

    def after_step(self, step: int, loss: float) -> None:
        """Compare one step; once `health.loss_check_steps` steps (or all expected ones) are in, say the verdict."""
        if step not in self.expected:
            return
        old = self.expected.pop(step)
        rel = abs(loss - old) / max(abs(old), 1e-12)
        self.checked.append((step, loss, old, rel))
        if len(self.checked) >= self.health.loss_check_steps or not self.expected:
            ok = all(c[3] <= self.health.loss_check_rtol for c in self.checked)
            worst = max(c[3] for c in self.checked)
            self.events.emit("loss_check", step, f"first {len(self.checked)} step(s) on {self.target} vs the "
                             f"losses recorded before the switch: worst relative difference {worst:.3g} "
                             f"({'ok' if ok else 'MISMATCH'}, tolerance {self.health.loss_check_rtol:g})", ok=ok,
                             worst=worst, compared=[{"step": c[0], "loss": c[1], "before": c[2]} for c in self.checked])
            self.expected = {}
