"""Stage 2, op conformance: every traced op on the target and on the reference device, both judged against a
float64 result on the CPU, forward and (for ops whose backward runs in training) through autograd.

Per op: two input draws (traced values, fresh randn), the worst error ratio / max / mean relative error over
outputs and draws, and the pass rule of numerics.py (the target may be as inexact as the reference device times
a factor). An op is *missing* when it raises a missing-kernel error on the target, and a *host fallback* when the
sim records one or its outputs come back on the CPU from an accelerator. Inference use = the op runs when
serving; training use = it runs in the training step (its own result, and its gradient where one is taken).
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field

import torch
from torch.utils._pytree import tree_map

from turnout.backend import Backend
from turnout.errors import one_line
from turnout.qualify.numerics import ErrStats, bitwise_equal, elementwise, judge_elementwise, score
from turnout.qualify.opcall import Run, draw, run_forward, run_grad
from turnout.qualify.stage import SKIPPED, StageResult
from turnout.qualify.trace import TracedOp

DRAWS = 2  # traced values, then fresh randn
SLOW_FACTOR = 10.0  # an op this many times slower on the target than on the reference ...
SLOW_EXTRA_S = 2.5e-4  # ... and at least this much slower in absolute terms is a perf cliff


@dataclass
class OpResult:
    """The evidence for one traced op."""

    op: TracedOp
    status: str = "pass"  # pass | fail | missing | error | skipped
    dtype: torch.dtype | None = None  # the tolerance's dtype (first output's)
    fwd: tuple[ErrStats, ErrStats] | None = None  # (target, reference) against float64
    bwd: tuple[ErrStats, ErrStats] | None = None  # gradients of the inputs, when the op's backward runs in training
    fwd_why: str | None = None
    bwd_why: str | None = None
    bf16_like: bool | None = None  # failing fp32 op: is its error that of the reference computing in bf16?
    fallback: bool = False
    error: str | None = None
    t_target: float = math.inf
    t_ref: float = math.inf
    notes: list[str] = field(default_factory=list)
    exc: BaseException | None = field(default=None, repr=False)
    error_phase: str | None = None  # "forward" or "backward": where a missing/error status came from

    @property
    def inference_ok(self) -> bool:
        broken = self.status in ("missing", "error") and self.error_phase != "backward"
        return not self.op.inference or (not broken and self.fwd_why is None)

    @property
    def training_ok(self) -> bool:
        return not self.op.training or (self.status not in ("missing", "error") and self.fwd_why is None
                                        and self.bwd_why is None)

    def to_dict(self) -> dict:
        o = self.op
        d = {"op": o.name, "packet": o.packet, "uses": sorted(o.uses), "args": o.signature(), "calls": o.calls,
             "view": o.is_view, "status": self.status, "dtype": str(self.dtype).removeprefix("torch.") if self.dtype
             else None, "inference_ok": self.inference_ok, "training_ok": self.training_ok,
             "fallback": self.fallback, "error": self.error, "notes": self.notes,
             "seconds_target": _finite(self.t_target), "seconds_reference": _finite(self.t_ref)}
        for key, pair, why in (("forward", self.fwd, self.fwd_why), ("backward", self.bwd, self.bwd_why)):
            d[key] = None if pair is None else {"target": pair[0].to_dict(), "reference": pair[1].to_dict(),
                                                "fail": why, "score": score(*pair, self.dtype)}
        if self.bf16_like is not None:
            d["bf16_like"] = self.bf16_like
        return d


def _finite(v: float) -> float | None:
    return v if math.isfinite(v) else None


def _float_out_dtype(outs: list[torch.Tensor]) -> torch.dtype | None:
    return next((t.dtype for t in outs if t.is_floating_point()), outs[0].dtype if outs else None)


def _compare(target: list[torch.Tensor], ref: list[torch.Tensor], truth: list[torch.Tensor | None],
             ) -> tuple[ErrStats, ErrStats, str | None]:
    """(target stats, reference stats, shape problem or None) over paired outputs."""
    t_all, r_all = ErrStats(exact_only=True), ErrStats(exact_only=True)
    if len(target) != len(truth) or len(ref) != len(truth):
        return t_all, r_all, f"{len(target)} outputs, expected {len(truth)}"
    for a, b, e in zip(target, ref, truth):
        if e is None:
            continue
        if a is None or tuple(a.shape) != tuple(e.shape):
            return t_all, r_all, f"output shape {None if a is None else list(a.shape)}, expected {list(e.shape)}"
        r = (elementwise(b, e, b.dtype) if b is not None and b.shape == e.shape
             else ErrStats(1.0, math.inf, math.inf, e.numel()))
        same = b is not None and a.dtype == b.dtype and a.shape == b.shape and bitwise_equal(a, b)
        t_all = t_all.merge(r if same else elementwise(a, e, a.dtype))  # bitwise the reference: same error
        r_all = r_all.merge(r)
    return t_all, r_all, None


def check_op(op: TracedOp, target: Backend, reference: Backend, seed: int) -> OpResult:
    """Run one traced op on target, reference and float64 (each draw), forward then autograd; judge it."""
    res = OpResult(op)
    fwd_t = fwd_r = bwd_t = bwd_r = None
    for which in range(DRAWS):
        args, kwargs = draw(op.args, op.kwargs, which, seed + which)
        tr = run_forward(op.func, args, kwargs, target)
        rr = run_forward(op.func, args, kwargs, reference)
        if not rr.ok:  # the reference cannot run our replay either: nothing to judge against
            res.status, res.error = SKIPPED, f"reference: {rr.error}"
            return res
        if not tr.ok:
            res.status, res.error, res.exc = ("missing" if tr.missing else "error"), tr.error, tr.exc
            res.error_phase = "forward"
            return res
        truth = run_forward(op.func, args, kwargs, None)
        if not truth.ok:  # no float64 kernel: judge against the reference's own output
            res.notes.append(f"no float64 result ({truth.error}); compared with the reference")
            truth = Run(outs=rr.outs)
        res.fallback |= tr.fallback
        res.t_target, res.t_ref = min(res.t_target, tr.seconds), min(res.t_ref, rr.seconds)
        res.dtype = _float_out_dtype(tr.outs)
        t, r, bad = _compare(tr.outs, rr.outs, truth.outs)
        if bad:
            res.status, res.fwd_why = "fail", bad
            return res
        fwd_t, fwd_r = (t, r) if fwd_t is None else (fwd_t.merge(t), fwd_r.merge(r))
        if op.grad and not op.is_view and any(o.is_floating_point() for o in truth.outs):
            g = _check_grad(op, args, kwargs, target, reference, truth.outs, seed + 100 + which, res)
            if g is not None:
                bwd_t, bwd_r = g if bwd_t is None else (bwd_t.merge(g[0]), bwd_r.merge(g[1]))
            if res.status in ("missing", "error"):
                return res
    if res.t_target > SLOW_FACTOR * res.t_ref and res.t_target - res.t_ref > SLOW_EXTRA_S:
        _retime(op, target, reference, seed, res)  # one slow call may be the host's hiccup: look again
    res.fwd = (fwd_t, fwd_r)
    res.fwd_why = judge_elementwise(fwd_t, fwd_r, res.dtype) if res.dtype is not None else None
    if res.fwd_why and res.dtype == torch.float32:
        res.bf16_like = _bf16_like(op, target, reference, seed + 1)
    if bwd_t is not None:
        res.bwd = (bwd_t, bwd_r)
        res.bwd_why = res.bwd_why or judge_elementwise(bwd_t, bwd_r, res.dtype)
    if res.fwd_why or res.bwd_why:
        res.status = "fail"
    return res


def _retime(op: TracedOp, target: Backend, reference: Backend, seed: int, res: OpResult, repeats: int = 5) -> None:
    """Best of `repeats` more calls on each side (the traced draw), for ops that looked like perf cliffs."""
    args, kwargs = draw(op.args, op.kwargs, 0, seed)
    for _ in range(repeats):
        tr, rr = run_forward(op.func, args, kwargs, target), run_forward(op.func, args, kwargs, reference)
        if tr.ok and rr.ok:
            res.t_target, res.t_ref = min(res.t_target, tr.seconds), min(res.t_ref, rr.seconds)


def _bf16_like(op: TracedOp, target: Backend, reference: Backend, seed: int) -> bool | None:
    """Does the target's fp32 error look like the reference's when the reference gets bf16 inputs (fresh draw)?"""
    args, kwargs = draw(op.args, op.kwargs, 1, seed)
    to16 = lambda t: t.to(torch.bfloat16) if isinstance(t, torch.Tensor) and t.is_floating_point() else t  # noqa
    tr, truth = run_forward(op.func, args, kwargs, target), run_forward(op.func, args, kwargs, None)
    r16 = run_forward(op.func, tree_map(to16, args), tree_map(to16, kwargs), reference)
    if not (tr.ok and truth.ok and r16.ok) or len(r16.outs) != len(truth.outs):
        return None
    t, r = ErrStats(exact_only=True), ErrStats(exact_only=True)
    for a, b, e in zip(tr.outs, r16.outs, truth.outs):
        if a.shape != e.shape or b.shape != e.shape:
            return None
        t, r = t.merge(elementwise(a, e, a.dtype)), r.merge(elementwise(b, e, a.dtype))  # both at fp32 tolerance
    # closer than the pass rule: the typical (mean) error must be that of bf16 arithmetic, not merely allowed next to it
    return judge_elementwise(t, r, torch.float32) is None and t.mean_rel <= 2 * r.mean_rel


def _check_grad(op: TracedOp, args: tuple, kwargs: dict, target: Backend, reference: Backend,
                outs64: list[torch.Tensor], seed: int, res: OpResult) -> tuple[ErrStats, ErrStats] | None:
    """Autograd through the op with one random upstream gradient per floating output; None when not differentiable."""
    gen = torch.Generator().manual_seed(seed)
    # upstream in the target's output dtype, so all three runs see the same values
    upstream = {i: torch.randn(o.shape, generator=gen).to(res.dtype if res.dtype.is_floating_point else o.dtype)
                for i, o in enumerate(outs64) if o.is_floating_point()}
    truth = run_grad(op.func, args, kwargs, None, upstream)
    if not truth.ok:
        return None  # no autograd formula (or not differentiable): nothing the training step runs
    tg = run_grad(op.func, args, kwargs, target, upstream)
    if not tg.ok:
        rg = run_grad(op.func, args, kwargs, reference, upstream)
        if rg.ok:  # only the target fails
            res.status, res.error, res.exc = ("missing" if tg.missing else "error"), f"backward: {tg.error}", tg.exc
            res.error_phase = "backward"
        return None
    rg = run_grad(op.func, args, kwargs, reference, upstream)
    if not rg.ok:
        return None
    pairs = [(a, b, e) for a, b, e in zip(tg.grads, rg.grads, truth.grads) if e is not None]
    t, r, bad = _compare([a for a, _, _ in pairs], [b for _, b, _ in pairs], [e for _, _, e in pairs])
    if bad:
        res.bwd_why = f"gradient {bad}"
        return None
    return t, r


def conformance(ops: list[TracedOp], target: Backend, reference: Backend, seed: int = 0) -> StageResult:
    """The op-conformance stage over the traced op set."""
    st = StageResult("ops", "Op conformance")
    results = []
    for i, op in enumerate(ops):
        try:
            results.append(check_op(op, target, reference, seed + 7919 * i))
        except Exception as e:  # noqa: BLE001 - a harness problem on one op must not hide the others
            r = OpResult(op, status=SKIPPED, error=f"harness: {one_line(e)}")
            results.append(r)
    _summarise(st, results, target)
    return st


def _summarise(st: StageResult, results: list[OpResult], target: Backend) -> None:
    by_name: dict[str, list[OpResult]] = defaultdict(list)
    for r in results:
        by_name[r.op.name].append(r)
    for name, rs in by_name.items():
        for r in rs:
            if r.status in ("missing", "error"):
                serving = r.op.inference and r.error_phase == "forward"
                if r.status == "error":
                    st.find("device_error", f"device failed during op conformance in {name}: {r.error}")
                else:
                    st.find("missing_inference_op" if serving else "missing_training_op",
                            f"{name} ({r.op.signature()}) does not run on {target.name} "
                            f"({'inference' if serving else 'training'} use): {r.error}")
                break
        bad_fwd = [r for r in rs if r.fwd_why and r.status == "fail"]
        if bad_fwd:
            w = max(bad_fwd, key=lambda r: r.fwd[0].ratio if r.fwd else 1.0)
            use = "inference" if any(r.op.inference for r in bad_fwd) else "training"
            kind = "forward_conformance" if use == "inference" else "training_conformance"
            st.find(kind, f"{name} fails on {target.name} ({use} use; {len(bad_fwd)} of {len(rs)} shapes), worst "
                          f"{w.op.signature()}: {w.fwd_why}")
        bad_bwd = [r for r in rs if r.bwd_why and r.status == "fail"]
        if bad_bwd:
            w = bad_bwd[0]
            st.find("backward_conformance", f"gradient of {name} fails on {target.name} ({len(bad_bwd)} of "
                                            f"{len(rs)} shapes), e.g. {w.op.signature()}: {w.bwd_why}")
    fell = sorted({r.op.name for r in results if r.fallback})
    if fell:
        st.warnings.append(f"{len(fell)} op(s) fall back to the host on {target.name}: {', '.join(fell)}")
    skipped = [r for r in results if r.status == SKIPPED]
    if skipped:
        st.warnings.append(f"{len(skipped)} op call(s) could not be replayed and were not judged, e.g. "
                           f"{skipped[0].op.name}: {skipped[0].error}")
    fails = [r for r in results if r.status == "fail"]
    fwd_fails = [r for r in fails if r.fwd_why and r.bf16_like is not None]
    if fwd_fails and all(r.bf16_like for r in fwd_fails):
        st.warnings.append(f"the failing fp32 ops ({', '.join(sorted({r.op.packet for r in fwd_fails}))}) are as "
                           f"exact as the reference computing in bf16: {target.name} appears to compute at bf16 "
                           f"precision while claiming fp32")
    inf_ok = all(r.inference_ok for r in results)
    train_ok = all(r.training_ok for r in results)
    st.evidence = {"ops": [r.to_dict() for r in results], "distinct_ops": len(by_name), "calls": len(results),
                   "failing": sorted({r.op.name for r in fails}),
                   "missing": sorted({r.op.name for r in results if r.status == "missing"}),
                   "fallbacks": fell, "bf16_like": sorted({r.op.name for r in fwd_fails if r.bf16_like}),
                   "inference_pass": inf_ok, "training_pass": train_ok,
                   "rule": "fail when error_ratio > max(2 x reference's, 1e-3), or max_rel > 10 x reference's and "
                           "> rtol; error_ratio = share of elements with |x - x64| > atol + rtol*|x64|"}
    st.summary = (f"{len(results)} distinct calls of {len(by_name)} ops: {len(fails)} fail, "
                  f"{len(st.evidence['missing'])} missing, {len(fell)} host fallback(s); inference use "
                  f"{'passes' if inf_ok else 'FAILS'}, training use {'passes' if train_ok else 'FAILS'}")
