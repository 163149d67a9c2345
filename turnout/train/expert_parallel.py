"""Expert parallelism for DeepSeekMoE on torch.distributed: each MoE layer's routed experts split over the ranks of
an expert-parallel group, tokens sent to the ranks that hold their experts and back with `all_to_all_single`.

Per layer and step, with ep ranks in the group and E/ep experts on each (rank r holds experts r*E/ep ...):

  1. each rank sorts its (token, slot) rows by expert, as the one-device path does: rows for rank d are contiguous;
  2. the per-expert row counts go through one all_to_all_single (E integers per rank): every rank learns how
     many rows each peer sends for each of its experts, so the splits may be uneven;
  3. the rows themselves go through all_to_all_single (autograd-aware: its backward is the reverse exchange),
     are regrouped by local expert, run as one grouped product (or the expert loop), ungrouped, and go back the
     same way; the router weights and the scatter-add into the tokens stay on the token's own rank.

The gate, shared experts, attention and everything else stay replicated (data-parallel); only the routed
experts' weights are split. Gradients: a local expert's weight gradient sums the contributions of every rank's
tokens, i.e. it is the gradient of the SUM of the group's per-rank losses. Data parallelism averages the others'
gradients over the ranks, so a training step must divide the experts' by the number of ranks averaged over.

Conservation of the exchange (when `checks` gives the step's StepChecks): with each forward exchange every rank
also sends, per destination, the float64 sum and squared norm of the rows it sends there (one small extra
all_to_all of [ep, 2]); the receiver sums what it got from each source and the two must agree within the float64
rounding of the sums (LAMBDA * 2 sqrt(n) u64 * norm). A row corrupted in transit fails the receiving rank's
check in the step it happens, as a product's checksum does. The backward exchanges (autograd's reverse
all_to_all) are not checked.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.distributed as dist
import torch.distributed._functional_collectives as funcol
from torch import nn

from turnout.backend.abft import LAMBDA, unit_roundoff
from turnout.backend.checksums import StepChecks
from turnout.model.moe import Experts, MoE

OP = "c10d::all_to_all_single"


class ExpertParallelExperts(Experts):
    """The local E/ep experts of one layer (w13 [E/ep, 2*inter, dim], w2 [E/ep, dim, inter]) behind Experts'
    interface: forward(x, weights, indices, counts) with global expert indices and counts [E]; only `compute`, the
    rows through their experts, differs."""

    def __init__(self, full: Experts, group: dist.ProcessGroup | None = None):
        nn.Module.__init__(self)
        self.group = group
        self.ep = dist.get_world_size(group)
        rank = dist.get_rank(group)
        E = full.n_experts
        if E % self.ep:
            raise ValueError(f"{E} routed experts cannot be split evenly over {self.ep} expert-parallel ranks")
        self.n_global, self.n_experts, self.inter_dim = E, E // self.ep, full.inter_dim
        self.first = rank * self.n_experts
        sl = slice(self.first, self.first + self.n_experts)
        self.w13 = nn.Parameter(full.w13.detach()[sl].clone())
        self.w2 = nn.Parameter(full.w2.detach()[sl].clone())
        self.impl = full.impl
        self.checks: Callable[[], StepChecks | None] | None = None  # the step's checks, when the exchange is checked

    def compute(self, xs: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
        """xs [R, dim] this rank's rows sorted by global expert (so by owner rank), counts [E] rows per global expert
        -> each row through its expert [R, dim], computed on the rank that holds it (Experts.forward does the
        sorting, the router weights and the scatter-add into the tokens, on the token's own rank)."""
        ep, local = self.ep, self.n_experts
        recv = torch.empty_like(counts)
        dist.all_to_all_single(recv, counts, group=self.group)  # [ep * local]: rows each peer sends per expert
        recv = recv.view(ep, local)  # [source rank, local expert]
        send_splits = counts.view(ep, local).sum(1).tolist()
        recv_splits = recv.sum(1).tolist()
        got = self._exchange(xs, recv_splits, send_splits)  # rows by (source, local expert)
        expert_of = torch.repeat_interleave(torch.arange(local, device=xs.device).repeat(ep), recv.flatten())
        group_order = expert_of.argsort(stable=True)  # [R']: the received rows grouped by local expert
        h = super().compute(got.index_select(0, group_order), recv.sum(0))
        h = h.index_select(0, group_order.argsort())  # back to (source, local expert) order
        return self._exchange(h, send_splits, recv_splits)

    def _exchange(self, rows: torch.Tensor, out_splits: list[int], in_splits: list[int]) -> torch.Tensor:
        """exchange(), and its conservation check when the step's checks are on (see the module doc)."""
        got = exchange(rows, out_splits, in_splits, self.group)
        checks = self.checks() if self.checks is not None else None
        if checks is not None:
            with torch.no_grad():
                sent = _chunk_facts(rows.detach(), in_splits)  # [ep, 2]: per destination
                expect = torch.empty_like(sent)
                dist.all_to_all_single(expect, sent, group=self.group)  # [ep, 2]: what each source sent here
                have = _chunk_facts(got.detach(), out_splits)[:, 0]
                diff = (have - expect[:, 0]).abs().nan_to_num(nan=math.inf, posinf=math.inf)
                diff = torch.where(torch.isfinite(expect).all(1), diff, torch.zeros_like(diff))  # NaN: the monitor's
                n = max(max(out_splits, default=0) * rows.shape[1], 1)
                bound = LAMBDA * 2 * math.sqrt(n) * unit_roundoff(torch.float64) * expect[:, 1].clamp(min=0).sqrt() \
                    + torch.finfo(torch.float64).tiny
                checks.add(OP, "forward", tuple(got.shape), diff, bound.nan_to_num(nan=math.inf))
        return got


def _chunk_facts(rows: torch.Tensor, splits: list[int]) -> torch.Tensor:
    """[len(splits), 2] float64: each chunk's sum and squared norm."""
    return torch.stack([torch.stack([c.sum(dtype=torch.float64), torch.linalg.vector_norm(c, dtype=torch.float64) ** 2])
                        for c in rows.split(splits)])


def exchange(rows: torch.Tensor, out_splits: list[int], in_splits: list[int],
              group: dist.ProcessGroup | None) -> torch.Tensor:
    """all_to_all_single of `rows` [sum(in_splits), dim] -> [sum(out_splits), dim]; its backward is the reverse."""
    out = funcol.all_to_all_single_autograd(rows.contiguous(), out_splits, in_splits, group or dist.group.WORLD)
    return funcol.wait_tensor(out) if isinstance(out, funcol.AsyncCollectiveTensor) else out


def shard_experts(model: nn.Module, group: dist.ProcessGroup | None = None) -> list[ExpertParallelExperts]:
    """Replace every MoE layer's routed experts in `model` by this rank's share over `group` (default: the world);
    every rank must hold the same full weights before. Returns the new expert modules."""
    out = []
    for m in model.modules():
        if isinstance(m, MoE) and not isinstance(m.experts, ExpertParallelExperts):
            m.experts = ExpertParallelExperts(m.experts, group)
            out.append(m.experts)
    return out


def expert_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The split (rank-local) parameters: kept out of data-parallel gradient averaging."""
    return [p for m in model.modules() if isinstance(m, ExpertParallelExperts) for p in (m.w13, m.w2)]

