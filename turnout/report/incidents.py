"""Incidents: each detection paired with the fault injection that caused it and the recovery that followed.

Inputs are normalised rows (see run_data): events sorted by time, and train lines. For each detection event
(nan, spike, grad_spike, hang, device_error, sdc):

- injected: the closest earlier `injected` event whose `fault` equals the detection's kind and that no earlier
  detection already claimed (so one injection explains one detection, and a later natural fault of the same
  kind is not blamed on an old injection). Time to detect = detection time - injection time.
- recovery: the first rollback/failover/resume after the detection and before the next detection at a
  *different* step (detections at the same step, e.g. "sdc" after a "rerun", are one incident and share it).
  A resume (process restart) only counts if training had not gone past the detection's step in between.
  Time to recover = time of the first train line after the recovery - detection time.
- actions: every action event (recoveries, rerun, skip_batches, lr_cut, fallback_op) between the detection and
  the moment training resumed. Without a recovery event, an incident handled by e.g. skip_batches still gets a
  time to recover: first train line after its last action - detection time.
- steps lost: detection step - the recovery's `to_step` (the step resumed from), when the event carries one;
  a `resume` event without one is logged at the checkpoint step it resumed from, so its own step is used.
"""

from __future__ import annotations

import bisect
import math

from turnout.report.values import as_int

DETECTIONS = frozenset({"nan", "spike", "grad_spike", "hang", "device_error", "sdc"})
RECOVERIES = frozenset({"rollback", "failover", "resume"})
ACTIONS = RECOVERIES | frozenset({"rerun", "skip_batches", "lr_cut", "fallback_op"})


class _TrainClock:
    """Train lines by time, to answer "when did training next produce a step after t?"."""

    def __init__(self, train: list[dict]):
        rows = sorted((m["time"], i, m["step"]) for i, m in enumerate(train) if math.isfinite(m["time"]))
        self.times = [r[0] for r in rows]
        self.steps = [r[2] for r in rows]

    def next_after(self, t: float, other_than_step: int | None = None) -> float | None:
        """Time of the first train line strictly after t (optionally skipping lines for one step), or None."""
        if not math.isfinite(t):
            return None
        for i in range(bisect.bisect_right(self.times, t), len(self.times)):
            if other_than_step is None or self.steps[i] != other_than_step:
                return self.times[i]
        return None

    def progressed(self, t0: float, t1: float, step: int | None) -> bool:
        """Whether a train line for a step past `step` was written between times t0 and t1."""
        if step is None or not (math.isfinite(t0) and math.isfinite(t1)):
            return False
        lo, hi = bisect.bisect_right(self.times, t0), bisect.bisect_left(self.times, t1)
        return any(s is not None and s > step for s in self.steps[lo:hi])


def _brief(e: dict) -> dict:
    """The parts of an event the incident table shows for an action."""
    return {"kind": e["kind"], "step": e["step"], "time": e["time"], "target": e["target"],
            "detail": str(e.get("detail", "") or ""), "to_step": e.get("to_step")}


def _delta(a: float | None, b: float | None) -> float | None:
    """a - b when both are finite numbers, else None."""
    if a is None or b is None or not (math.isfinite(a) and math.isfinite(b)):
        return None
    return a - b


def _resumed_from(e: dict) -> int | None:
    """The step a recovery restarted from: its `to_step`, or for a resume event (which the loop logs at the
    checkpoint's step) its own step."""
    to_step = as_int(e.get("to_step"))
    if to_step is None and e["kind"] == "resume":
        return e["step"]
    return to_step


def find_incidents(events: list[dict], train: list[dict]) -> tuple[list[dict], list[dict]]:
    """(incidents in time order, injected events no detection was paired with) -- see the module docstring."""
    clock = _TrainClock(train)
    injected = [(i, e) for i, e in enumerate(events) if e["kind"] == "injected"]
    claimed: set[int] = set()
    incidents = []
    for i, d in enumerate(events):
        if d["kind"] not in DETECTIONS:
            continue
        inj = None
        for j, e in injected:
            if j in claimed or str(e.get("fault", "")) != d["kind"]:
                continue
            if math.isfinite(e["time"]) and math.isfinite(d["time"]) and e["time"] <= d["time"]:
                inj = (j, e)  # events are time-sorted, so the last match is the closest earlier one
        if inj is not None:
            claimed.add(inj[0])
        end = next((k for k in range(i + 1, len(events))
                    if events[k]["kind"] in DETECTIONS and events[k]["step"] != d["step"]), len(events))
        window = events[i + 1:end]
        # A resume is a process restart; it answers this detection only if training had not moved on since
        # (otherwise it is an unrelated restart, e.g. a session continued the next day).
        recovery = next((e for e in window if e["kind"] in RECOVERIES and not (
            e["kind"] == "resume" and clock.progressed(d["time"], e["time"], d["step"]))), None)
        if recovery is not None:
            resumed = clock.next_after(recovery["time"])
        else:
            # A line for the detection's own step may be logged just after the detection; it is not a resume.
            resumed = clock.next_after(d["time"], other_than_step=d["step"])
        horizon = resumed if resumed is not None else math.inf
        actions = [e for e in window if e["kind"] in ACTIONS and not e["time"] > horizon]
        if recovery is None and actions:
            resumed = clock.next_after(actions[-1]["time"])
        to_step = next((s for s in (_resumed_from(e) for e in actions if e["kind"] in RECOVERIES)
                        if s is not None), None)
        check = next((e for e in window if e["kind"] == "loss_check"), None)
        incidents.append({
            "step": d["step"], "time": d["time"], "kind": d["kind"], "target": d["target"],
            "detail": str(d.get("detail", "") or ""),
            "injected_fault": inj[1].get("fault") if inj else None,
            "injected_time": inj[1]["time"] if inj else None,
            "injected_step": inj[1]["step"] if inj else None,
            "ttd": _delta(d["time"], inj[1]["time"]) if inj else None,
            "recovery": recovery["kind"] if recovery else None,
            "recovery_time": recovery["time"] if recovery else None,
            "resumed_time": resumed if (recovery or actions) else None,
            "ttr": _delta(resumed, d["time"]) if (recovery or actions) else None,
            "to_step": to_step,
            "steps_lost": d["step"] - to_step if to_step is not None and d["step"] is not None else None,
            "actions": [_brief(e) for e in actions],
            "loss_check_ok": (check.get("ok") if isinstance(check.get("ok"), bool) else None) if check else None,
        })
    undetected = [{"fault": e.get("fault"), "step": e["step"], "time": e["time"], "target": e["target"],
                   "detail": str(e.get("detail", "") or "")} for j, e in injected if j not in claimed]
    return incidents, undetected
