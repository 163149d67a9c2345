"""The fault injector: a TorchDispatchMode that runs every aten op of the sim target and applies the profile.

Each op (an OpOverload) gets a plan once, from its normalised overload-packet name ('index_add_' ->
'index_add'); ops no fault names have no plan and go straight to `func(*args, **kwargs)`, so a healthy
profile costs one dict lookup and a Python call per op. Order for an op with a plan:

    step faults due (device_error / hang) -> unsupported dtype -> missing_op (raise, or time it as a fallback)
    -> lossy_accum inputs -> the op -> lossy_accum output -> bad_backward -> nondeterministic -> sdc

The mode sits below autograd, so it sees backward ops when backward runs under it (CPU autograd runs backward
on the calling thread) and nothing done here records a graph.
"""

from __future__ import annotations

import os
import random
import threading
import time
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from turnout.backend.sim_faults import (SimDeviceError, UlpJitter, collective_results, find_dtype, flip_bit,
                                        map_outputs, missing_kernel_error, qualified, round_args, round_to, scale,
                                        sleep_for, wait_work)
from turnout.backend.sim_profile import Fault, Profile, op_name
from turnout.backend.sim_record import Recorder
from turnout.backend.sim_schedule import Schedule
from turnout.backend.spec import DTYPES

aten = torch.ops.aten

_UNSET = object()
_HANG_SLICE = 0.05  # seconds per wait while hanging: a cancel is seen within this


class _Plan:
    """The faults that apply to one op, split by when they act."""

    __slots__ = ("op", "step_faults", "check_dtype", "missing", "lossy", "post", "collective")

    def __init__(self, op: str, faults: list[Fault], check_dtype: bool):
        self.op = op
        self.step_faults = [f for f in faults if f.kind in ("device_error", "hang")]
        self.check_dtype = check_dtype
        self.missing = next((f for f in faults if f.kind == "missing_op"), None)
        self.lossy = next((f for f in faults if f.kind == "lossy_accum"), None)
        self.post = [f for f in faults if f.kind in ("bad_backward", "nondeterministic", "sdc")]
        self.collective = op.startswith("c10d::")  # its result lands in buffers, when its Work completes


class Injector:
    """Fault state and records for one SimBackend; `mode()` gives a dispatch mode that applies them."""

    def __init__(self, profile: Profile, target: str, rank: int | None = None):
        self.profile = profile
        self.target = target  # the spec string, e.g. "sim:flaky", used in error messages
        self.rank = int(os.environ.get("RANK", "0")) if rank is None else rank  # torchrun's, for `ranks = [..]`
        faults = [f for f in profile.faults if not f.ranks or self.rank in f.ranks]
        self.schedule = Schedule(tuple(faults), profile.seed)
        self.record = Recorder()
        self.unsupported = {DTYPES[d]: d for d in profile.unsupported_dtypes}
        self._unsupported_set = frozenset(self.unsupported)
        self._pick = random.Random(profile.seed + 0x5DC)  # which element an sdc hits; apart from rate draws
        self._jitter = {f.index: UlpJitter(profile.seed + 1 + f.index, f.ulps)
                        for f in faults if f.kind == "nondeterministic"}
        self._by_op: dict[str, list[Fault]] = {}
        for f in faults:
            for op in f.ops:
                self._by_op.setdefault(op, []).append(f)
        self.plans: dict[Any, _Plan | None] = {}  # OpOverload -> plan (None: run untouched)
        # (result, flat index, value) of the last collective sdc: a copy into that result right after the
        # collective (gloo's reduce-scatter copies its output out of a buffer of its own) gets the flip again
        self.refault: tuple[torch.Tensor, int, float] | None = None
        self.cancel = threading.Event()  # set to release a hang early
        self.hanging = threading.Event()  # set while a hang blocks

    @property
    def step(self) -> int | None:
        return self.schedule.step

    def mode(self) -> TorchDispatchMode:
        return _SimMode(self)

    def build(self, func: Any) -> _Plan | None:
        """The plan for `func` (cached): None when no fault names it and every dtype is supported."""
        packet = getattr(getattr(func, "overloadpacket", func), "__name__", str(func))
        op = op_name(f"{getattr(func, 'namespace', 'aten')}::{packet}")
        faults = self._by_op.get(op, [])
        plan = _Plan(op, faults, bool(self.unsupported)) if faults or self.unsupported else None
        self.plans[func] = plan
        return plan

    # ---- one op ------------------------------------------------------------------------------------
    def dispatch(self, func: Any, plan: _Plan | None, args: tuple, kwargs: dict) -> Any:
        """Run `func` with the faults of `plan` (and any due any-op step fault)."""
        if self.refault is not None:
            t, index, value = self.refault
            if func is aten.copy_.default and args[0].untyped_storage().data_ptr() == t.untyped_storage().data_ptr():
                out = func(*args, **kwargs)
                t.view(-1)[index] = value
                return out
            if func is not aten.split.Tensor:
                self.refault = None
        step = self.schedule.step
        op = plan.op if plan is not None else None
        for f in self.schedule.pending:
            if self.schedule.due(f):
                self._step_fault(f, op or op_name(f"{func.namespace}::{func.overloadpacket.__name__}"))
        if plan is None:
            return func(*args, **kwargs)
        for f in plan.step_faults:
            if self.schedule.due(f):
                self._step_fault(f, op)
        if plan.check_dtype:
            bad = find_dtype(args, kwargs, self._unsupported_set)
            if bad is not None:
                name = self.unsupported[bad]
                self.record.event(step, "unsupported_dtype", op, f"{qualified(op)} called with {name}")
                raise missing_kernel_error(op, bad, self.target, name)
        m = plan.missing
        if m is not None and not m.fallback:
            self.record.event(step, "missing_op", op, f"{qualified(op)} raised NotImplementedError ({m.label})")
            raise NotImplementedError(f"{self.target}: {qualified(op)} is not implemented on this device")
        if plan.lossy is not None and not plan.collective:  # a collective writes into its arguments: keep them
            args, kwargs = round_args(args, kwargs, DTYPES[plan.lossy.precision])
        t0 = time.perf_counter()
        out = func(*args, **kwargs)
        if m is not None:  # a fallback: the op ran "on the host", slowdown times as long
            took = time.perf_counter() - t0
            self.record.count(step, "fallback", op, f"{qualified(op)} fell back to the host ({m.slowdown:g}x slower)")
            sleep_for((m.slowdown - 1) * took)
        results = None
        if plan.collective and (plan.lossy is not None or plan.post):
            wait_work(out)  # faults act on the collective's result, which is final only now
            results = collective_results(op, out, args)
        if plan.lossy is not None:
            prec = DTYPES[plan.lossy.precision]
            out = map_outputs(func, out, lambda t: round_to(t, prec), results)
            self.record.count(step, "lossy_accum", op, f"{qualified(op)} accumulated in {plan.lossy.precision}")
        for f in plan.post:
            out = self._post(f, func, op, out, results)
        return out

    def _post(self, f: Fault, func: Any, op: str, out: Any, results: list[torch.Tensor] | None) -> Any:
        step = self.schedule.step
        if f.kind == "bad_backward":
            self.record.count(step, "bad_backward", op, f"{qualified(op)} output scaled by {1 + f.error:g}")
            return map_outputs(func, out, lambda t: scale(t, 1 + f.error), results)
        if f.kind == "nondeterministic":
            self.record.count(step, "nondeterministic", op, f"{qualified(op)} output perturbed by <= {f.ulps} ulp")
            return map_outputs(func, out, lambda t: self._jitter[f.index](t, op), results)
        if self.schedule.due(f):  # sdc
            return self._sdc(f, func, op, out, results)
        return out

    def _sdc(self, f: Fault, func: Any, op: str, out: Any, results: list[torch.Tensor] | None) -> Any:
        """Flip one bit of one element of the first floating-point tensor output (of a collective: its result)."""
        outs = results if results is not None else list(out) if isinstance(out, (tuple, list)) else [out]
        i = next((i for i, t in enumerate(outs) if isinstance(t, torch.Tensor) and t.is_floating_point()
                  and t.numel()), None)
        if i is None:
            self.record.event(self.step, "sdc", op, f"{f.label} due but {qualified(op)} had no float output")
            return out
        t = outs[i]
        index = self._pick.randrange(t.numel())
        new, bit = flip_bit(t, index, f.bit)
        before, after = t.reshape(-1)[index].item(), new.view(-1)[index].item()
        self.record.event(self.step, "sdc", op, f"flipped bit {bit} of element {index} of a {tuple(t.shape)} "
                                                f"{str(t.dtype).removeprefix('torch.')} output: {before!r} -> "
                                                f"{after!r} ({f.label})")
        returns = func._schema.returns
        if results is not None or (returns and returns[min(i, len(returns) - 1)].alias_info is not None):
            t.copy_(new.view(t.shape))
            if results is not None and t.is_contiguous():
                self.refault = (t, index, after)
            return out
        if not isinstance(out, (tuple, list)):
            return new.view(t.shape)
        outs[i] = new.view(t.shape)
        return type(out)(outs)

    # ---- step faults ---------------------------------------------------------------------------------
    def _step_fault(self, f: Fault, op: str) -> None:
        step = self.schedule.step
        if f.kind == "device_error":
            self.record.event(step, "device_error", op, f"device lost during {qualified(op)} ({f.label})")
            raise SimDeviceError(f"{self.target}: device lost (injected device_error at step {step})")
        ev = self.record.event(step, "hang", op, f"hang of {f.seconds:g} s in {qualified(op)} ({f.label})")
        waited, cancelled = self._hang(f.seconds)
        ev["detail"] += f"; released after {waited:.2f} s ({'cancelled' if cancelled else 'timed out'})"
        if f.error_after:
            raise SimDeviceError(f"{self.target}: device lost after hanging {waited:.1f} s "
                                 f"(injected hang at step {step})")

    def _hang(self, seconds: float) -> tuple[float, bool]:
        """Block up to `seconds` in short waits (other threads, e.g. a watchdog, keep running); a `cancel`
        releases it. Returns (seconds waited, whether it was cancelled)."""
        self.cancel.clear()
        self.hanging.set()
        t0 = time.monotonic()
        try:
            while not self.cancel.is_set():
                left = seconds - (time.monotonic() - t0)
                if left <= 0:
                    break
                self.cancel.wait(min(_HANG_SLICE, left))
        finally:
            self.hanging.clear()
        return time.monotonic() - t0, self.cancel.is_set()


class _SimMode(TorchDispatchMode):
    """Routes every aten op through the injector; the untouched-op path is kept as short as possible."""

    def __init__(self, injector: Injector):
        super().__init__()
        self.injector = injector

    @classmethod
    def _should_skip_dynamo(cls) -> bool:
        # torch otherwise wraps __torch_dispatch__ in a dynamo-disable shim: it imports torch._dynamo on first
        # use (seconds) and adds a wrapper call per op. The sim runs eager, so it needs neither.
        return False

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        inj = self.injector
        plan = inj.plans.get(func, _UNSET)
        if plan is _UNSET:
            plan = inj.build(func)
        if plan is None and not inj.schedule.pending and inj.refault is None:
            return func(*args, **(kwargs or {}))
        return inj.dispatch(func, plan, args, kwargs or {})
