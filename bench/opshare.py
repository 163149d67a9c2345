"""Where the operator time goes: profile a callable and split torch.profiler's self CPU time by operator.

Shared by the benchmark scripts' --breakdown options (they run from the repository root as `python bench/X.py`, so
this folder is on sys.path).
"""

from __future__ import annotations

from collections.abc import Callable

from torch.profiler import ProfilerActivity, profile

#: matrix products, in-place forms included (the blocked attention's backward accumulates with baddbmm_)
MATMULS = frozenset({"aten::mm", "aten::bmm", "aten::baddbmm", "aten::baddbmm_", "aten::addmm", "aten::addmm_",
                     "aten::_grouped_mm"})


def op_times(fn: Callable[[], object], n: int) -> tuple[dict[str, float], float]:
    """Run fn n times under the profiler -> (self CPU microseconds per operator name, their total)."""
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(n):
            fn()
    times = {e.key: e.self_cpu_time_total for e in prof.key_averages()}
    return times, sum(times.values())


def share(times: dict[str, float], total: float, keep: Callable[[str], bool]) -> float:
    """Fraction of `total` spent in the operators `keep` selects."""
    return sum(t for k, t in times.items() if keep(k)) / max(total, 1)
