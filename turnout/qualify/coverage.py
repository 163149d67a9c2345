"""What a verdict covers: the model and the kernels it was run with, the compute dtype, the op set that was traced
(by where it was used: training, inference), and the numerics fingerprint a later run or server is checked
against (turnout.train.fingerprint). A verdict says nothing about ops that were never traced: another kernel
choice (blocked instead of fused attention) or another model calls other ops and needs its own qualification.
"""

from __future__ import annotations

from turnout.backend import Backend
from turnout.config import Config
from turnout.qualify.stage import StageResult
from turnout.qualify.workload import Workload
from turnout.train.fingerprint import numerics_fingerprint


def covers(work: Workload, ops: StageResult | None, target: Backend, config: Config) -> dict:
    """The `covers` record of qualify.json: model, kernels, dtype, traced op packets by use, fingerprint."""
    dtype = target.compute_dtype_name(config)
    model = work.describe()
    rows = (ops.evidence.get("ops") if ops is not None else None) or []
    training = sorted({r["packet"] for r in rows if {"forward", "backward"} & set(r["uses"])})
    inference = sorted({r["packet"] for r in rows if "inference" in r["uses"]})
    return {"model": model, "kernels": model["kernels"], "dtype": dtype,
            "ops": {"training": training, "inference": inference, "distinct_calls": len(rows)},
            "fingerprint": numerics_fingerprint(work.shape_model(), target, dtype),
            "note": "the verdict covers these ops as this model calls them with these kernels; a run or server "
                    "whose fingerprint differs is not covered by it"}
