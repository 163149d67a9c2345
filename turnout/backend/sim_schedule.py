"""When step-scheduled faults (sdc, device_error, hang) fire: the step counter, per-step call counts, seeded draws.

Rules (see sim_profile for the schema):
- Nothing scheduled fires before the first `set_step` (probes and benchmarks run clean).
- `at_steps` / `every`: the fault fires at the `call`-th matching op run while a scheduled step is current,
  once per scheduled step (re-running that step is clean: a transient fault) or, with `repeat`, once per run.
- `rate`: for sdc, each matching op call in [from_step, until_step] fires with probability `rate`; for
  device_error / hang, each run of such a step is drawn once (at `set_step`) and fires at its first matching op.
- Draws come from a private `random.Random(profile.seed)`, never torch's RNG, so the same sequence of steps
  and ops gives the same faults and the training run's randomness is untouched.
"""

from __future__ import annotations

import random

from turnout.backend.sim_profile import SCHEDULED_KINDS, Fault


class Schedule:
    """Step state for one SimBackend. `pending` lists any-op faults (no `ops`) that may fire in this run."""

    def __init__(self, faults: tuple[Fault, ...], seed: int):
        self.faults = [f for f in faults if f.kind in SCHEDULED_KINDS]
        self.rng = random.Random(seed)
        self.step: int | None = None
        self.run = 0  # incremented by every set_step: one run of one step
        self._calls: dict[int, int] = {}  # fault index -> matching calls in this run
        self._fired_steps: dict[int, set[int]] = {f.index: set() for f in self.faults}
        self._armed: set[int] = set()  # rate-drawn step-level faults due in this run
        self.pending: list[Fault] = []

    def set_step(self, step: int) -> None:
        """Start a run of `step`: reset call counts, draw step-level rates, list the any-op faults due."""
        self.step = int(step)
        self.run += 1
        self._calls.clear()
        self._armed.clear()
        for f in self.faults:
            if f.rate is not None and f.kind != "sdc" and self._in_window(f) and self.rng.random() < f.rate:
                self._armed.add(f.index)
        self.pending = [f for f in self.faults if not f.ops and self._may_fire(f)]

    def _in_window(self, f: Fault) -> bool:
        return f.from_step <= self.step and (f.until_step is None or self.step <= f.until_step)

    def _scheduled(self, f: Fault) -> bool:
        """Is the current step one of f's scheduled steps (at_steps / every)?"""
        if f.at_steps:
            return self.step in f.at_steps
        return self._in_window(f) and (self.step - f.from_step) % f.every == 0

    def _may_fire(self, f: Fault) -> bool:
        if f.rate is not None:
            return f.index in self._armed or (f.kind == "sdc" and self._in_window(f))
        return self._scheduled(f) and (f.repeat or self.step not in self._fired_steps[f.index])

    def due(self, f: Fault) -> bool:
        """Called once per matching op call: does `f` fire on this call? (Marks it fired.)"""
        if self.step is None:
            return False
        if f.rate is not None:
            if f.kind == "sdc":
                return self._in_window(f) and self.rng.random() < f.rate
            if f.index in self._armed:
                self._armed.discard(f.index)
                self._drop_pending(f)
                return True
            return False
        if not self._scheduled(f):
            return False
        fired = self._fired_steps[f.index]
        if (not f.repeat and self.step in fired) or self._calls.get(f.index, 0) >= f.call:
            return False
        n = self._calls[f.index] = self._calls.get(f.index, 0) + 1
        if n != f.call:
            return False
        fired.add(self.step)
        self._drop_pending(f)
        return True

    def _drop_pending(self, f: Fault) -> None:
        if f in self.pending:
            self.pending = [p for p in self.pending if p is not f]
