"""Stage 7, performance: step throughput and MFU against the target's own measured peak, and perf cliffs -- a dtype
or an op that runs, but far below what the device does otherwise.

Cliffs: a probed dtype whose dense matmul peak is under CLIFF_SHARE of fp32's (a CPU without fp16 units runs fp16
matmuls ~100x slower), and an op whose replay on the target takes SLOW_FACTOR times the reference's and noticeably
longer in absolute terms (a host fallback, an unoptimised kernel), or which fell back to the host. Training counts
as too slow to be usable (verdict inference-only) when its compute dtype is a cliff, or when a training step on the
target delivers under `min_speed` of the reference's tokens/s.
"""

from __future__ import annotations

import statistics
import time

from turnout.backend import Backend
from turnout.qualify.ops import SLOW_EXTRA_S, SLOW_FACTOR
from turnout.qualify.stage import StageResult
from turnout.qualify.workload import Workload
from turnout.train.schedule import lr_at

CLIFF_SHARE = 0.1


def _step_seconds(work: Workload, backend: Backend, steps: int = 3) -> float:
    """Median seconds of a full step (compute + apply) after one warm-up step."""
    built = work.build(backend)
    times = []
    for s in range(steps + 1):
        t0 = time.perf_counter()
        r = built.runner.compute([work.batches[s % len(work.batches)]])
        built.runner.apply(r, lr_at(s, work.config.train))
        if s:
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def performance(work: Workload, target: Backend, reference: Backend, dtype: str, ops: StageResult | None,
                training: StageResult | None) -> StageResult:
    """The performance stage; reuses the step times of training parity and the op timings of op conformance."""
    st = StageResult("perf", "Performance")
    ev = st.evidence
    peaks = {d: target.matmul_peak(d, max_size=1024, repeats=3) for d in target.dtypes()}
    base = peaks.get("fp32") or max(peaks.values(), default=0.0)
    ev["matmul_peak_flops"] = peaks
    cliffs = {d: v / base for d, v in peaks.items() if base and v < CLIFF_SHARE * base}
    ev["dtype_cliffs"] = cliffs
    for d, share in cliffs.items():
        st.warnings.append(f"{d} matmuls on {target.name} run at {share:.1%} of the fp32 peak "
                           f"({peaks[d] / 1e9:.3g} vs {base / 1e9:.3g} GFLOP/s)")
    if dtype in cliffs:
        st.find("too_slow", f"training computes in {dtype}, which runs at {cliffs[dtype]:.1%} of the fp32 matmul "
                            f"peak on {target.name}")

    tv = (training.evidence.get("target_seconds") if training else None) or []
    t_step = statistics.median(tv) if len(tv) >= 3 else _step_seconds(work, target)
    rv = []
    if training is not None and not training.evidence.get("golden", {}).get("reused", True):
        rv = training.evidence.get("reference_seconds") or []
    r_step = statistics.median(rv) if len(rv) >= 3 else _step_seconds(work, reference)
    tokens = work.tokens_per_step
    t_tps, r_tps = tokens / t_step, tokens / r_step
    peak = peaks.get(dtype, base)
    ev.update({"tokens_per_step": tokens, "target_step_seconds": t_step, "reference_step_seconds": r_step,
               "target_tokens_per_s": t_tps, "reference_tokens_per_s": r_tps, "speed_vs_reference": t_tps / r_tps,
               "flops_per_token": work.flops_per_token, "mfu": work.flops_per_token * t_tps / peak if peak else None,
               "peak_dtype": dtype})
    if t_tps < work.settings.min_speed * r_tps:
        st.find("too_slow", f"a training step on {target.name} delivers {t_tps:.3g} tokens/s, "
                            f"{t_tps / r_tps:.1%} of the reference's {r_tps:.3g} (< {work.settings.min_speed:.0%})")

    slow = []
    for row in (ops.evidence.get("ops", []) if ops else []):
        t, r = row.get("seconds_target"), row.get("seconds_reference")
        if row.get("fallback") or (t and r and t > SLOW_FACTOR * r and t - r > SLOW_EXTRA_S):
            slow.append({"op": row["op"], "args": row["args"], "seconds_target": t, "seconds_reference": r,
                         "ratio": t / r if t and r else None, "fallback": row.get("fallback", False)})
    ev["op_cliffs"] = slow
    names = sorted({s["op"] for s in slow})
    if names:
        st.warnings.append(f"{len(names)} op(s) run far slower on {target.name} than on the reference or fall back "
                           f"to the host: {', '.join(names)}")
    mfu = ev["mfu"]
    st.summary = (f"{t_tps:.3g} tokens/s ({t_tps / r_tps:.2f}x the reference), MFU "
                  f"{(mfu or 0):.1%} of the measured {dtype} peak; {len(cliffs)} dtype and {len(names)} op cliff(s)")
    return st
