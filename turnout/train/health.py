"""Judging a step before it is applied, and keeping count of what a target got wrong.

`HealthMonitor.check` looks at one measured step: a non-finite loss or gradient norm is rejected at once; a
loss or grad-norm spike (above mean + k·sigma of a trailing window — OLMo's 6 sigma over 128 steps — or above
a ratio of the window's largest value — Megatron's 10x) is reported, and becomes a rollback only when it
persists for `spike_patience` steps, because runs often heal by themselves (BLOOM did, in ~30 steps).
`TrustPolicy` counts hardware-classified faults and device errors in sliding windows of steps; past its
limits the target is no longer trusted and the run should fail over.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field

from turnout.config import HealthSection
from turnout.train.step import StepResult

# exit codes a worker uses to tell the supervisor why it stopped
EXIT_UNTRUSTED = 86  # the target computes wrongly or keeps failing: fail over
EXIT_HANG = 87  # a step never returned: fail over
EXIT_UNRECOVERABLE = 88  # the run itself is broken (e.g. rollbacks exhausted): stop, whatever the target


class TargetUntrusted(RuntimeError):
    """The policy no longer trusts the target; carries the reason for the failover."""

    def __init__(self, reason: str, kind: str):
        super().__init__(reason)
        self.kind = kind


class RunUnrecoverable(RuntimeError):
    """The run cannot continue on any target (e.g. rollbacks exhausted)."""


class Window:
    """Trailing values with O(1) mean, standard deviation and a cached max."""

    def __init__(self, size: int):
        self.values: deque[float] = deque(maxlen=size)
        self.total = 0.0
        self.total_sq = 0.0

    def __len__(self) -> int:
        return len(self.values)

    def push(self, v: float) -> None:
        if len(self.values) == self.values.maxlen:
            old = self.values[0]
            self.total -= old
            self.total_sq -= old * old
        self.values.append(v)
        self.total += v
        self.total_sq += v * v

    def stats(self) -> tuple[float, float, float]:
        n = len(self.values)
        mean = self.total / n
        var = max(self.total_sq / n - mean * mean, 0.0)
        return mean, math.sqrt(var), max(self.values)


@dataclass
class Verdict:
    """The monitor's view of one step: ok, or a list of findings (kind, detail) and whether to act now."""

    ok: bool = True
    findings: list[tuple[str, str]] = field(default_factory=list)
    reject: bool = False  # do not apply this step (non-finite)
    rollback: bool = False  # a spike persisted past patience

    @property
    def kinds(self) -> list[str]:
        return [k for k, _ in self.findings]


class HealthMonitor:
    """Loss and grad-norm tests of one step against the run's recent history."""

    def __init__(self, h: HealthSection):
        self.h = h
        self.loss = Window(h.spike_window)
        self.grad = Window(h.spike_window)
        self.spiking = 0  # consecutive spiking steps

    def _spike(self, w: Window, v: float) -> str | None:
        if len(w) < self.h.spike_min_steps:
            return None
        mean, std, peak = w.stats()
        if v > mean + self.h.spike_sigma * std and v > mean * (1 + 1e-3):  # flat windows have ~0 sigma
            return f"{v:.4g} > mean {mean:.4g} + {self.h.spike_sigma:g} sigma ({std:.3g}) of the last {len(w)} steps"
        if v > self.h.spike_ratio * peak:
            return f"{v:.4g} > {self.h.spike_ratio:g}x the window's largest value {peak:.4g}"
        return None

    def check(self, r: StepResult) -> Verdict:
        """Judge a measured step. Healthy and pending-spike steps update the history; rejected ones do not."""
        v = Verdict()
        if not math.isfinite(r.loss) or not math.isfinite(r.grad_norm):
            bad = [n for n, x in (("loss", r.loss), ("grad norm", r.grad_norm)) if not math.isfinite(x)]
            layers = [k for k, x in r.layer_grad_norms.items() if not math.isfinite(x)]
            v.findings.append(("nan", f"non-finite {' and '.join(bad)}" + (f" (layers {', '.join(layers[:6])})"
                                                                           if layers else "")))
            v.ok, v.reject = False, True
            return v
        for kind, w, x in (("spike", self.loss, r.loss), ("grad_spike", self.grad, r.grad_norm)):
            why = self._spike(w, x)
            if why:
                v.findings.append((kind, f"{'loss' if kind == 'spike' else 'grad norm'} {why}"))
        if v.findings:
            v.ok = False
            self.spiking += 1
            v.rollback = self.spiking >= self.h.spike_patience
        else:
            self.spiking = 0
        return v

    def healthy(self, r: StepResult) -> bool:
        """Finite and no spike, without touching the persistence count."""
        if not math.isfinite(r.loss) or not math.isfinite(r.grad_norm):
            return False
        return self._spike(self.loss, r.loss) is None and self._spike(self.grad, r.grad_norm) is None

    def observe(self, r: StepResult) -> None:
        """Add a healthy applied step to the history."""
        if math.isfinite(r.loss) and math.isfinite(r.grad_norm):
            self.loss.push(r.loss)
            self.grad.push(r.grad_norm)

    def reset(self) -> None:
        """Forget spike persistence (after a rollback the history before the onset still holds)."""
        self.spiking = 0

    def state(self) -> dict:
        return {"loss": list(self.loss.values), "grad": list(self.grad.values)}

    def load_state(self, state: dict) -> None:
        for v in state.get("loss", []):
            self.loss.push(float(v))
        for v in state.get("grad", []):
            self.grad.push(float(v))


class TrustPolicy:
    """Sliding-window counts of device errors and hardware faults on the current target."""

    def __init__(self, h: HealthSection):
        self.h = h
        self.device_errors: list[int] = []  # steps
        self.faults: list[int] = []

    def _recent(self, steps: list[int], now: int, window: int) -> list[int]:
        return [s for s in steps if now - s < window]

    def device_error(self, step: int) -> str | None:
        """Count one device error; return the reason to stop trusting the target, if any."""
        self.device_errors = self._recent(self.device_errors, step, self.h.device_error_window) + [step]
        if len(self.device_errors) >= self.h.max_device_errors:
            return (f"{len(self.device_errors)} device errors within {self.h.device_error_window} steps "
                    f"(steps {', '.join(map(str, self.device_errors))})")
        return None

    def fault(self, step: int) -> str | None:
        """Count one hardware-classified fault (silent data corruption); return the reason to stop trusting."""
        self.faults = self._recent(self.faults, step, self.h.fault_window) + [step]
        if len(self.faults) >= self.h.max_faults:
            return (f"{len(self.faults)} silent data corruptions within {self.h.fault_window} steps "
                    f"(steps {', '.join(map(str, self.faults))})")
        return None

    def state(self) -> dict:
        return {"device_errors": self.device_errors, "faults": self.faults}

    def load_state(self, state: dict) -> None:
        self.device_errors = [int(s) for s in state.get("device_errors", [])]
        self.faults = [int(s) for s in state.get("faults", [])]
