"""The gradient reduction checked by conservation, in the step it happens: DDP's all-reduce and FSDP2's
reduce-scatter.

A DDP communication hook reduces each gradient bucket as DDP's default hook does (sum, then divide by the world
size) and also all-reduces two numbers per bucket: the rank's local sum of the bucket and its sum of squares,
both accumulated in float64. Summation commutes, so the sum of the reduced bucket must equal the sum of the
ranks' local sums, up to the rounding of the reduction itself: each element is the float32 sum of `world`
terms, so (probabilistically, as in turnout.backend.abft) the difference stays below
LAMBDA * u * sqrt(world - 1) * sqrt(sum over ranks of ||g_r||^2). A rank whose reduced bucket came back
corrupted fails that check on its own; the verdict joins the step's product checks and is read with them.

FSDP2 reduce-scatters each group's flat gradient buffer [world * shard]: rank j keeps the reduction of chunk j.
`ConservedReduceScatter` (installed with `set_custom_reduce_scatter`) does the same reduce-scatter and then one
small all-reduce of a [3, world] float64 tensor: each rank's sums and squared norms of its own W input chunks,
and the sum of the shard it received in its own slot. For every chunk j the reduced shard's sum must equal the
ranks' summed chunk sums, within the same bound as above; every rank checks every chunk, so all ranks see the
one rank whose shard came back wrong (the mismatch's `row` is that rank).

FSDP2 also all-gathers each group's parameter shards before its forward (and again before its backward when it
resharded after the forward). A corrupted copy there feeds the rank's products a wrong weight, which their own
checksums cannot see (they check C against the A and B they were given). `ConservedAllGather` (installed with
`set_custom_all_gather`) takes each rank's float64 sum and squared norm of the shard it sends, before sending
(FSDP2 gathers in place: the input is the rank's own slot of the output), then one small all-reduce of a
[2 + world, world] float64 tensor that also holds, on row 2 + r, rank r's sums of every chunk it received. A copy
is exact, so only the two float64 summation orders differ; every rank checks every rank's copy of every chunk.
"""

import math  # no `from __future__ import annotations`: DDP reads the hook's annotations as objects
from typing import Callable

import torch
import torch.distributed as dist
from torch.distributed.fsdp._fully_shard._fsdp_collectives import DefaultAllGather, DefaultReduceScatter

from turnout.backend.abft import LAMBDA, unit_roundoff
from turnout.backend.checksums import StepChecks, phase

OP = "c10d::allreduce"
RS_OP = "c10d::reduce_scatter"
AG_OP = "c10d::all_gather"


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
            bound = _bound(local[1].sqrt(), u, world, n)
            diff = (got - local[0]).abs().nan_to_num(nan=math.inf, posinf=math.inf)
            diff = torch.where(torch.isfinite(local).all(), diff, torch.zeros_like(diff))
            checks.add(OP, "backward", (n,), diff.reshape(1), bound.nan_to_num(nan=math.inf).reshape(1))
        return out.div_(world)

    return fut.then(verify)


def _bound(scale: torch.Tensor, u: float, world: int, n: int) -> torch.Tensor:
    """LAMBDA times the scale of a sum's rounding when `n` elements, each a float32 sum of `world` terms, are summed
    in float64 (see the module doc); `scale` is sqrt of the terms' summed squares."""
    return LAMBDA * (u * math.sqrt(max(world - 1, 1)) + 2 * math.sqrt(n) * unit_roundoff(torch.float64)) * scale \
        + torch.finfo(torch.float64).tiny


def install_fsdp(model: torch.nn.Module, checks: Callable[[], StepChecks | None]) -> int:
    """Make every FSDP2 unit of `model` all-gather through ConservedAllGather and reduce-scatter through
    ConservedReduceScatter; returns how many units."""
    from torch.distributed.fsdp import FSDPModule

    units = [m for m in model.modules() if isinstance(m, FSDPModule)]
    for m in units:
        m.set_custom_all_gather(ConservedAllGather(checks))
        m.set_custom_reduce_scatter(ConservedReduceScatter(checks))
    return len(units)


class ConservedAllGather(DefaultAllGather):
    """FSDP2's all-gather of the parameter shards, checked by conservation (see the module doc)."""

    def __init__(self, checks: Callable[[], StepChecks | None]):
        super().__init__()
        self.checks = checks

    def __call__(self, output_tensor: torch.Tensor, input_tensor: torch.Tensor, group: dist.ProcessGroup,
                 async_op: bool = False):
        checks = self.checks()
        if checks is None or not input_tensor.is_floating_point():
            if checks is not None:  # packed mixed dtypes (uint8): no sums to compare
                checks.unchecked[f"{AG_OP} ({input_tensor.dtype})"] += 1
            return dist.all_gather_into_tensor(output_tensor, input_tensor, group=group, async_op=async_op)
        world, rank = dist.get_world_size(group), dist.get_rank(group)
        facts = torch.zeros(2 + world, world, dtype=torch.float64, device=input_tensor.device)
        facts[0, rank] = input_tensor.sum(dtype=torch.float64)  # before the gather writes this slot again
        facts[1, rank] = torch.linalg.vector_norm(input_tensor, dtype=torch.float64) ** 2
        work = dist.all_gather_into_tensor(output_tensor, input_tensor, group=group, async_op=async_op)
        if work is not None:
            work.wait()  # the check reads the result (on a device: orders the stream, the host does not wait)
        facts[2 + rank] = output_tensor.reshape(world, -1).sum(dim=1, dtype=torch.float64)
        dist.all_reduce(facts, group=group)  # the one small extra collective per all-gather
        sent, seen = facts[0], facts[2:]  # [world]: what rank j sent; [world, world]: rank r's copy of chunk j
        diff = (seen - sent).abs().nan_to_num(nan=math.inf, posinf=math.inf)
        diff = torch.where(torch.isfinite(facts[:2]).all(0), diff, torch.zeros_like(diff))
        n = input_tensor.numel()
        bound = (LAMBDA * 2 * math.sqrt(n) * unit_roundoff(torch.float64)) * facts[1].sqrt() \
            + torch.finfo(torch.float64).tiny  # two float64 summation orders of the same n values
        checks.add(AG_OP, phase(), (world, n), diff.reshape(-1), bound.nan_to_num(nan=math.inf).expand(world, world)
                   .reshape(-1))
        return work


class ConservedReduceScatter(DefaultReduceScatter):
    """FSDP2's reduce-scatter of a flat gradient buffer, checked by conservation (see the module doc)."""

    def __init__(self, checks: Callable[[], StepChecks | None]):
        super().__init__()
        self.checks = checks

    def __call__(self, output_tensor: torch.Tensor, input_tensor: torch.Tensor, group: dist.ProcessGroup,
                 op, async_op: bool = False):
        world, rank = dist.get_world_size(group), dist.get_rank(group)
        chunks = input_tensor.reshape(world, -1)
        facts = torch.zeros(3, world, dtype=torch.float64, device=input_tensor.device)
        facts[0] = chunks.sum(dim=1, dtype=torch.float64)
        facts[1] = torch.linalg.vector_norm(chunks, dim=1, dtype=torch.float64) ** 2
        work = dist.reduce_scatter_tensor(output_tensor, input_tensor, op=op, group=group, async_op=async_op)
        if work is not None:
            work.wait()  # the check reads the result; FSDP2 calls this synchronously on its reduce-scatter stream
        checks = self.checks()
        scale = None  # what the shard's sum is multiplied by to match the summed inputs
        if isinstance(op, dist.ReduceOp.RedOpType) and op in (dist.ReduceOp.SUM, dist.ReduceOp.AVG):
            scale = 1.0 if op == dist.ReduceOp.SUM else float(world)
        if checks is None:
            return work
        if scale is None:  # a pre-multiplied sum (NCCL's divide factor): its factor is not visible here
            checks.unchecked[f"{RS_OP} ({op})"] += 1
            return work
        facts[2, rank] = output_tensor.sum(dtype=torch.float64) * scale
        dist.all_reduce(facts, group=group)  # the one small extra collective per reduce-scatter
        diff = (facts[2] - facts[0]).abs().nan_to_num(nan=math.inf, posinf=math.inf)
        diff = torch.where(torch.isfinite(facts[:2]).all(0), diff, torch.zeros_like(diff))
        bound = _bound(facts[1].sqrt(), unit_roundoff(input_tensor.dtype), world, chunks.shape[1])
        checks.add(RS_OP, "backward", (chunks.shape[1],), diff, bound.nan_to_num(nan=math.inf))
        return work
