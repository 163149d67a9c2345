"""Stage 4, determinism: the same training step (same weights, same batch, same step number) run several times on
the target must give the same loss and gradients bit for bit.

turnout's health monitor decides whether a step was corrupted by re-running it and comparing; that only works on a
target that reproduces itself. When runs differ, the step is retried under torch.use_deterministic_algorithms(True)
to tell "needs deterministic mode" (fine, with a warning) from "cannot be made reproducible" (unfit). Differences
far beyond rounding (a flipped high bit, NaN) are reported as corrupt results, not as nondeterminism.
"""

from __future__ import annotations

import math
import os

import torch

from turnout.backend import Backend
from turnout.errors import one_line
from turnout.qualify.numerics import bitwise_equal, ulp_distance
from turnout.qualify.stage import StageResult, failure_kind
from turnout.qualify.workload import Workload
from turnout.train.build import Built

CORRUPT_REL = 1e-3  # a re-run that differs by more than this (relative, normwise) is corruption, not rounding


def _snapshot(built: Built, backend: Backend, batch: tuple, step: int) -> tuple[float, torch.Tensor]:
    """(loss, all gradients flattened) of one compute of `step`; weights are left untouched."""
    backend.set_step(step)
    r = built.runner.compute([batch])
    grads = [p.grad.detach().reshape(-1).cpu() for p in built.inner.parameters() if p.grad is not None]
    return r.loss, torch.cat(grads).clone()


def _repeat(built: Built, backend: Backend, batch: tuple, step: int, n: int) -> list[tuple[float, torch.Tensor]]:
    return [_snapshot(built, backend, batch, step) for _ in range(n)]


def _compare(runs: list[tuple[float, torch.Tensor]]) -> dict:
    """How far runs 2..n are from run 1: bitwise, ulp, normwise relative."""
    loss0, g0 = runs[0]
    out = {"runs": len(runs), "bitwise": True, "max_ulp": 0.0, "max_rel": 0.0, "losses": [r[0] for r in runs]}
    for loss, g in runs[1:]:
        same = bitwise_equal(g, g0) and (loss == loss0 or (math.isnan(loss) and math.isnan(loss0)))
        if same:
            continue
        out["bitwise"] = False
        out["max_ulp"] = max(out["max_ulp"], ulp_distance(g, g0))
        d = float((g.double() - g0.double()).norm() / max(float(g0.double().norm()), 1e-30))
        out["max_rel"] = max(out["max_rel"], d if math.isfinite(d) else math.inf)
        if loss != loss0:
            out["max_rel"] = max(out["max_rel"], abs(loss - loss0) / max(abs(loss0), 1e-30))
    return out


def determinism(work: Workload, target: Backend, step: int) -> StageResult:
    """Run one step `settings.determinism_repeats` times at step number `step`; retry in deterministic mode."""
    st = StageResult("determinism", "Determinism")
    n = work.settings.determinism_repeats
    batch = work.batches[0]
    try:
        built = work.build(target)
        plain = _compare(_repeat(built, target, batch, step, n))
    except Exception as e:  # noqa: BLE001 - a fault while re-running is evidence
        st.find(failure_kind(e), f"device failed while re-running step {step} on {target.name}: {one_line(e)}")
        st.summary = "could not re-run the step"
        return st
    st.evidence.update({"step": step, "plain": plain})
    if plain["bitwise"]:
        st.summary = f"{n} runs of step {step} are bitwise identical"
        return st
    fixed = None
    was = torch.are_deterministic_algorithms_enabled()
    if target.device_type == "cuda":  # cuBLAS refuses deterministic mode without a fixed workspace
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    try:
        torch.use_deterministic_algorithms(True)
        fixed = _compare(_repeat(built, target, batch, step, n))
    except Exception as e:  # noqa: BLE001 - some ops have no deterministic kernel and say so
        st.evidence["deterministic_mode_error"] = one_line(e)
    finally:
        torch.use_deterministic_algorithms(was)
    st.evidence["deterministic_mode"] = fixed
    worst = plain["max_rel"]
    if not math.isfinite(worst) or worst > CORRUPT_REL:
        st.find("corrupt", f"re-running step {step} on {target.name} gives different results (relative difference "
                           f"{worst:.3g}, far beyond rounding): corrupt results")
    elif fixed is not None and fixed["bitwise"]:
        st.warnings.append(f"{target.name} is bit-reproducible only with torch.use_deterministic_algorithms(True) "
                           f"(without it, re-runs differ by up to {plain['max_ulp']:.3g} ulp)")
    else:
        still = "" if fixed is None else f", even with torch.use_deterministic_algorithms(True) (up to " \
                                         f"{fixed['max_ulp']:.3g} ulp)"
        st.find("nondeterministic", f"re-running step {step} on {target.name} is not bit-reproducible: gradients "
                                    f"differ by up to {plain['max_ulp']:.3g} ulp of their scale{still}; "
                                    f"re-run-and-compare SDC "
                                    f"detection cannot work on this target")
    st.summary = (f"{n} runs of step {step} differ (max {plain['max_ulp']:.3g} ulp, relative {worst:.3g}); "
                  f"deterministic mode {'fixes it' if fixed and fixed['bitwise'] else 'does not fix it'}")
    return st
