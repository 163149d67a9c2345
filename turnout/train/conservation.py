"""The gradient all-reduce checked by conservation, in the step it happens (DDP).

A DDP communication hook reduces each gradient bucket as DDP's default hook does (sum, then divide by the world
size) and also all-reduces two numbers per bucket: the rank's local sum of the bucket and its sum of squares,
both accumulated in float64. Summation commutes, so the sum of the reduced bucket must equal the sum of the
ranks' local sums, up to the rounding of the reduction itself: each element is the float32 sum of `world`
terms, so (probabilistically, as in turnout.backend.abft) the difference stays below
LAMBDA * u * sqrt(world - 1) * sqrt(sum over ranks of ||g_r||^2). A rank whose reduced bucket came back
corrupted fails that check on its own; the verdict joins the step's product checks and is read with them.
"""

import math  # no `from __future__ import annotations`: DDP reads the hook's annotations as objects
from typing import Callable

import torch
import torch.distributed as dist

from turnout.backend.abft import LAMBDA, unit_roundoff
from turnout.backend.checksums import StepChecks

OP = "c10d::allreduce"


class Conservation:
    """The hook's state: `checks()` gives the StepChecks of the step being computed (None: record nothing)."""

    def __init__(self, checks: Callable[[], StepChecks | None]):
        self.checks = checks
        self.world = dist.get_world_size()


def install(model: torch.nn.Module, checks: Callable[[], StepChecks | None]) -> None:
    """Make a DDP model reduce its gradients through `conserved_allreduce`."""
    model.register_comm_hook(Conservation(checks), conserved_allreduce)


def conserved_allreduce(state: Conservation, bucket: dist.GradBucket) -> torch.futures.Future[torch.Tensor]:
    """DDP's all-reduce of one bucket (sum, then mean), checked by conservation (see the module doc)."""
    buf = bucket.buffer()
    local = torch.stack([buf.sum(dtype=torch.float64), torch.linalg.vector_norm(buf, dtype=torch.float64) ** 2])
    fut = dist.all_reduce(buf, async_op=True).get_future()  # the gradients first: same order on every rank
    dist.all_reduce(local)  # the one small extra collective per bucket
    checks, world = state.checks(), state.world
    u = unit_roundoff(buf.dtype)
    n = buf.numel()

    def verify(f: torch.futures.Future) -> torch.Tensor:
        out = f.value()[0]
        if checks is not None:
            got = out.sum(dtype=torch.float64)
            scale = local[1].sqrt()
            bound = LAMBDA * (u * math.sqrt(max(world - 1, 1)) + 2 * math.sqrt(n) * unit_roundoff(torch.float64)) \
                * scale + torch.finfo(torch.float64).tiny
            diff = (got - local[0]).abs().nan_to_num(nan=math.inf, posinf=math.inf)
            diff = torch.where(torch.isfinite(local).all(), diff, torch.zeros_like(diff))
            checks.add(OP, "backward", (n,), diff.reshape(1), bound.nan_to_num(nan=math.inf).reshape(1))
        return out.div_(world)

    return fut.then(verify)
