"""Expert parallelism for DeepSeekMoE on torch.distributed: each MoE layer's routed experts split over the ranks of
an expert-parallel group, tokens sent to the ranks that hold their experts and back with `all_to_all_single`.

Per layer and step, with ep ranks in the group and E/ep experts on each (rank r holds experts r*E/ep ...):

  1. each rank sorts its (token, slot) rows by expert, as the one-device path does: rows for rank d are contiguous;
  2. the per-expert row counts go through one all_to_all_single (E integers per rank): every rank learns how
     many rows each peer sends for each of its experts, so the splits may be uneven;
  3. the rows themselves go through all_to_all_single (an autograd function: its backward is the reverse exchange),
     are regrouped by local expert, run as one grouped product (or the expert loop), ungrouped, and go back the
     same way; the router weights and the scatter-add into the tokens stay on the token's own rank.

The gate, shared experts, attention and everything else stay replicated (data-parallel); only the routed
experts' weights are split. Gradients: a local expert's weight gradient sums the contributions of every rank's
tokens, i.e. it is the gradient of the SUM of the group's per-rank losses. Data parallelism averages the others'
gradients over the ranks, so a training step must divide the experts' by the number of ranks averaged over.

Conservation of the exchange (when `checks` gives the step's StepChecks): with each forward exchange every rank
also sends, per destination, the float64 sum and squared norm of the rows it sends there (one small extra
all_to_all of [ep, 2]); the receiver takes the same two of what it got from each source and both must agree
within the float64 rounding of the sums (LAMBDA * 2 sqrt(n) u64 * norm, LAMBDA * 2 n u64 * norm^2), so a flip in
the facts themselves is caught too. A row corrupted in transit fails the receiving rank's
check in the step it happens, as a product's checksum does. The backward exchanges (the gradients going back
the reverse way) are checked the same way.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
from torch import nn

from turnout.backend.abft import LAMBDA, unit_roundoff
from turnout.backend.checksums import StepChecks
from turnout.model.moe import Experts, MoE

OP = "c10d::all_to_all_single"  # as checks name it (the sim sees c10d::alltoall_base_)


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
        """The exchange of `rows` (autograd-aware: its backward is the reverse exchange), each direction checked
        for conservation when the step's checks are on (see the module doc)."""
        return _Exchange.apply(rows, out_splits, in_splits, self)

    def exchanged(self, rows: torch.Tensor, out_splits: list[int], in_splits: list[int], phase: str) -> torch.Tensor:
        """exchange(), and its conservation check when the step's checks are on."""
        got = exchange(rows, out_splits, in_splits, self.group)
        checks = self.checks() if self.checks is not None else None
        if checks is not None:
            with torch.no_grad():
                sent = _chunk_facts(rows, in_splits)  # [ep, 2]: per destination
                expect = torch.empty_like(sent)
                dist.all_to_all_single(expect, sent, group=self.group)  # [ep, 2]: what each source sent here
                have = _chunk_facts(got, out_splits)
                diff = (have - expect).abs().nan_to_num(nan=math.inf, posinf=math.inf)  # [ep, 2]
                finite = torch.isfinite(expect).all(1, keepdim=True)  # NaN sent is the NaN monitor's to report
                diff = torch.where(finite, diff, torch.zeros_like(diff))
                n = max(max(out_splits, default=0) * rows.shape[1], 1)
                u = unit_roundoff(torch.float64)
                sq = expect[:, 1].clamp(min=0)
                # float64 sums of n float32 values: the sum's error within 2 sqrt(n) u |x|, the squares' within 2 n u
                bound = torch.stack([LAMBDA * 2 * math.sqrt(n) * u * sq.sqrt(), LAMBDA * 2 * n * u * sq], 1) \
                    + torch.finfo(torch.float64).tiny
                checks.add(OP, phase, tuple(got.shape), diff.flatten(), bound.flatten().nan_to_num(nan=math.inf))
        return got


class _Exchange(torch.autograd.Function):
    """rows [sum(in_splits), dim] -> [sum(out_splits), dim] over the layer's group; backward sends the gradient
    back the reverse way. Both directions go through the layer's checked `exchanged`."""

    @staticmethod
    def forward(ctx, rows, out_splits, in_splits, layer):
        ctx.splits, ctx.layer = (out_splits, in_splits), layer
        return layer.exchanged(rows.detach(), out_splits, in_splits, "forward")

    @staticmethod
    def backward(ctx, grad):
        out_splits, in_splits = ctx.splits
        return ctx.layer.exchanged(grad.detach(), in_splits, out_splits, "backward"), None, None, None


def _chunk_facts(rows: torch.Tensor, splits: list[int]) -> torch.Tensor:
    """[len(splits), 2] float64: each chunk's sum and squared norm."""
    return torch.stack([torch.stack([c.sum(dtype=torch.float64), torch.linalg.vector_norm(c, dtype=torch.float64) ** 2])
                        for c in rows.split(splits)])


def exchange(rows: torch.Tensor, out_splits: list[int], in_splits: list[int],
             group: dist.ProcessGroup | None) -> torch.Tensor:
    """all_to_all_single of `rows` [sum(in_splits), dim] -> [sum(out_splits), dim] (no autograd)."""
    out = rows.new_empty((sum(out_splits), *rows.shape[1:]))
    dist.all_to_all_single(out, rows.contiguous(), out_splits, in_splits, group=group)
    return out


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



@dataclass
class ExpertLayout:
    """A run's (dp, ep) device mesh: world = dp * ep ranks, rank = d * ep + e. The ranks of one row (same d) form an
    expert-parallel group and split the routed experts (rank e holds experts e*E/ep ...); the ranks of one column
    (same e) hold the same experts, so they are replicas of those weights and average their gradients.

    Everything else (attention, gate, shared experts, embeddings) is data-parallel over the whole world."""

    mesh: object  # torch.distributed.device_mesh.DeviceMesh, dims ("dp", "ep")
    params: dict[str, nn.Parameter] = field(default_factory=dict)  # name in the model -> this rank's split weight

    @property
    def ep(self) -> int:
        return self.mesh["ep"].size()

    @property
    def dp(self) -> int:
        return self.mesh["dp"].size()

    @property
    def ep_group(self) -> dist.ProcessGroup:
        return self.mesh["ep"].get_group()

    @property
    def dp_group(self) -> dist.ProcessGroup:
        return self.mesh["dp"].get_group()

    def record(self) -> dict:
        """What the manifest keeps of the layout."""
        return {"dp": self.dp, "ep": self.ep, "dims": ["dp", "ep"]}

    def replica_ranks(self) -> list[list[int]]:
        """Groups of world ranks holding the same experts (one per expert-parallel index), in rank order."""
        return [[d * self.ep + e for d in range(self.dp)] for e in range(self.ep)]

    def reduce_grads(self) -> None:
        """Make the split weights' gradients those of the world's mean loss. After backward a local expert's
        gradient sums its expert-parallel group's per-rank losses (the exchange's backward brings every rank's
        rows back); summing over the replicas (dp) gives the sum over the world, and data parallelism averages,
        so divide by the world size. One flat all_reduce."""
        grads = [p.grad for p in self.params.values() if p.grad is not None]
        if not grads:
            return
        world = self.dp * self.ep
        if self.dp > 1:
            flat = torch.cat([g.flatten() for g in grads])
            dist.all_reduce(flat, group=self.dp_group)
            torch._foreach_copy_(grads, [c.view_as(g) for c, g in zip(flat.split([g.numel() for g in grads]), grads)])
        torch._foreach_div_(grads, world)

    def gathered(self, local: torch.Tensor) -> torch.Tensor:
        """A split weight (or its gradient) [E/ep, ...] -> the whole [E, ...] on every rank of the group."""
        out = local.new_empty((local.shape[0] * self.ep, *local.shape[1:]))
        dist.all_gather_into_tensor(out, local.contiguous(), group=self.ep_group)
        return out

    def local_part(self, full: torch.Tensor) -> torch.Tensor:
        """The whole [E, ...] -> this rank's split [E/ep, ...]."""
        return full.chunk(self.ep)[self.mesh["ep"].get_local_rank()]

    def sharded(self, names_to_tensors: dict) -> dict:
        """State-dict entries of split weights (model or optimizer state of the same shape, keyed by the weight's
        name) wrapped as DTensors Shard(0) on the expert-parallel mesh dimension: DCP then writes each expert once
        under its global shape and reshards to any layout, one process included."""
        from torch.distributed.tensor import DTensor, Shard

        mesh = self.mesh["ep"]
        return {k: DTensor.from_local(v, mesh, [Shard(0)], run_check=False) for k, v in names_to_tensors.items()}


def build_layout(model: nn.Module, ep: int, world: int, device_type: str) -> ExpertLayout:
    """Split `model`'s routed experts over a (world/ep, ep) mesh; every rank must hold the same full weights."""
    from torch.distributed.device_mesh import init_device_mesh

    mesh = init_device_mesh(device_type, (world // ep, ep), mesh_dim_names=("dp", "ep"))
    shard_experts(model, mesh["ep"].get_group())
    split = {id(p) for p in expert_parameters(model)}
    return ExpertLayout(mesh, {n: p for n, p in model.named_parameters() if id(p) in split})
