"""`sim:PROFILE`: an emulated accelerator that misbehaves on purpose, deterministically, as its profile says.

Tensors live on the CPU; everything run under `backend.compute()` (forward, backward and optimizer step)
goes through a TorchDispatchMode that injects the profile's faults (see sim_profile for the schema and
sim_mode for the order they apply in). The training loop calls `set_step(n)`; step-scheduled faults fire by
it. Every injected fault and host fallback is recorded (`events`, `injected()`, `fallbacks`, `counts`), so
qualification, health monitoring and failover can be checked against known ground truth.
"""

from __future__ import annotations

import contextlib
import threading
from typing import Any

from turnout.backend.cpu import CPUBackend
from turnout.backend.sim_faults import SimDeviceError
from turnout.backend.sim_mode import Injector
from turnout.backend.sim_profile import Profile, load_profile
from turnout.backend.spec import TargetError, TargetSpec

__all__ = ["SimBackend", "SimDeviceError"]


class SimBackend(CPUBackend):
    """The emulated accelerator. Built by `get_backend("sim:NAME[:dtype]")`; a bad profile raises TargetError."""

    device_type = "cpu"
    collective = "gloo"
    visible_devices_env = ""

    def __init__(self, spec: TargetSpec):
        super().__init__(spec)
        if not spec.profile:
            raise TargetError(f"target {spec} names no sim profile")
        self.profile: Profile = load_profile(spec.profile)
        self.default_dtypes = (self.profile.dtype,)  # the dtype it pretends to compute in; spec.dtype wins
        self._injector = Injector(self.profile, self.name)
        self._local = threading.local()  # .modes: this thread's stack of entered modes (None when nested)

    # ---- identity --------------------------------------------------------------------------------
    def availability(self) -> tuple[bool, str]:
        return True, self.profile.description

    def device_name(self, index: int = 0) -> str:
        return f"sim:{self.profile.name} (emulated on {super().device_name(index)})"

    def describe(self, peak: bool = False) -> dict[str, Any]:
        info = super().describe(peak)
        info["profile"] = str(self.profile.path)
        info["faults"] = [f.kind for f in self.profile.faults]
        return info

    # ---- execution ---------------------------------------------------------------------------------
    def compute(self) -> contextlib.AbstractContextManager:
        """Enter the fault-injecting dispatch mode. The object may be kept and entered again; entering it
        while it is already active in this thread (nested) adds nothing, so faults apply once per op."""
        return _Compute(self._injector, self._local)

    def set_step(self, step: int) -> None:
        """Start a run of training step `step`; scheduled faults fire by it (none before the first call)."""
        self._injector.schedule.set_step(step)

    @property
    def step(self) -> int | None:
        """The current step (None until `set_step` is first called)."""
        return self._injector.step

    # ---- hangs ---------------------------------------------------------------------------------------
    def cancel_hang(self) -> None:
        """Release a hang in progress (from another thread, e.g. a watchdog). Has no effect on later hangs."""
        self._injector.cancel.set()

    @property
    def hanging(self) -> bool:
        """True while an injected hang blocks."""
        return self._injector.hanging.is_set()

    # ---- records (ground truth) ------------------------------------------------------------------------
    @property
    def events(self) -> list[dict[str, Any]]:
        """Every injected fault and first fallback per (step, op): dicts with step, kind, op, detail, time."""
        return self._injector.record.events

    @property
    def fallbacks(self) -> dict[str, int]:
        """op -> number of calls that ran "on the host" (missing_op with fallback = true)."""
        return self._injector.record.fallbacks

    @property
    def counts(self) -> dict[str, dict[str, int]]:
        """kind -> op -> calls affected, for per-call faults (lossy_accum, bad_backward, nondeterministic,
        fallback)."""
        return self._injector.record.counts

    def injected(self, kind: str | None = None) -> list[dict[str, Any]]:
        """Recorded events, optionally only those of `kind` (a fault kind, 'fallback' or 'unsupported_dtype')."""
        return self._injector.record.injected(kind)

    def reset_records(self) -> None:
        """Forget recorded events and counts (the step, fault schedules and RNG state are kept)."""
        self._injector.record.reset()


class _Compute:
    """What `SimBackend.compute()` returns: reusable and re-entrant, one dispatch mode per outermost entry."""

    def __init__(self, injector: Injector, local: threading.local):
        self._injector = injector
        self._local = local

    def __enter__(self) -> None:
        stack = self._local.__dict__.setdefault("modes", [])
        mode = None if any(m is not None for m in stack) else self._injector.mode()
        if mode is not None:
            mode.__enter__()
        stack.append(mode)

    def __exit__(self, *exc: Any) -> None:
        mode = self._local.modes.pop()
        if mode is not None:
            mode.__exit__(*exc)
