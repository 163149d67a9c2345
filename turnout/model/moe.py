"""DeepSeekMoE: sigmoid router with group-limited top-k (noaux_tc), routed + shared experts, dense MLP.

Load balancing is aux-loss-free: `Gate.bias` (HF `e_score_correction_bias`) only shifts which experts are chosen and
is moved by `update_bias` between optimiser steps, outside autograd. The sequence-wise balance loss (alpha) is optional.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .args import ModelArgs


class MLP(nn.Module):
    """SwiGLU feed-forward: w2(silu(w1 x) * w3 x); the dense FFN and the shared experts."""

    def __init__(self, dim: int, inter_dim: int):
        super().__init__()
        self.w1 = nn.Linear(dim, inter_dim, bias=False)
        self.w2 = nn.Linear(inter_dim, dim, bias=False)
        self.w3 = nn.Linear(dim, inter_dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class Gate(nn.Module):
    """Router: sigmoid scores in fp32; bias-shifted scores pick the experts, unbiased scores weight them."""

    def __init__(self, args: ModelArgs):
        super().__init__()
        self.topk, self.n_groups, self.topk_groups = args.n_activated_experts, args.n_expert_groups, args.n_limited_groups
        self.route_scale, self.norm_topk_prob = args.route_scale, args.norm_topk_prob
        self.weight = nn.Parameter(torch.empty(args.n_routed_experts, args.dim))
        # selection-only correction bias: persistent (checkpointed), never a gradient target
        self.register_buffer("bias", torch.zeros(args.n_routed_experts, dtype=torch.float32))

    def _apply(self, fn, recurse=True):
        super()._apply(fn, recurse)
        if self.bias.dtype != torch.float32:  # model.to(bf16): gamma = 1e-3 steps would vanish in bf16
            self.bias = self.bias.float()
        return self

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x [N, dim] -> (weights [N, k] fp32, indices [N, k], scores [N, E] fp32)."""
        scores = F.linear(x.float(), self.weight.float()).sigmoid()
        with torch.no_grad():  # selection is discrete: keep it out of the autograd graph
            choice = scores + self.bias.float()
            if self.n_groups > 1 and self.topk_groups < self.n_groups:
                N, E = choice.shape
                choice = choice.view(N, self.n_groups, E // self.n_groups)
                group = choice.topk(2, dim=-1).values.sum(-1)  # [N, G]: sum of each group's top-2
                keep = group.topk(self.topk_groups, dim=-1).indices
                drop = torch.ones_like(group, dtype=torch.bool).scatter_(1, keep, False)
                choice = choice.masked_fill(drop.unsqueeze(-1), float("-inf")).view(N, E)
            indices = choice.topk(self.topk, dim=-1).indices
        weights = scores.gather(1, indices)
        if self.norm_topk_prob:
            weights = weights / (weights.sum(dim=-1, keepdim=True) + 1e-20)
        return weights * self.route_scale, indices, scores


class Experts(nn.Module):
    """E SwiGLU experts as 3-D weights: w13 [E, 2*inter, dim] (w1 rows, then w3 rows), w2 [E, dim, inter].

    Tokens are sorted by expert once; "grouped" runs each projection as one torch._grouped_mm over the sorted rows,
    "loop" runs one matmul per expert on the same sorted rows (falls back to it when _grouped_mm is missing).
    """

    def __init__(self, args: ModelArgs):
        super().__init__()
        E, inter = args.n_routed_experts, args.moe_inter_dim
        self.n_experts, self.inter_dim = E, inter
        self.w13 = nn.Parameter(torch.empty(E, 2 * inter, args.dim))
        self.w2 = nn.Parameter(torch.empty(E, args.dim, inter))
        self.impl = args.experts_impl if hasattr(torch, "_grouped_mm") else "loop"

    def forward(self, x: torch.Tensor, weights: torch.Tensor, indices: torch.Tensor,
                counts: torch.Tensor) -> torch.Tensor:
        """x [N, dim], weights/indices [N, k], counts [E] tokens per expert -> sum_k weight * expert(x) [N, dim]."""
        k = indices.shape[1]
        order = indices.flatten().argsort(stable=True)  # [N*k] (token, slot) pairs sorted by expert
        token = order // k
        xs = x.index_select(0, token)  # [N*k, dim]; its backward is an index_add, not a sorting index_put
        o = self.compute(xs, counts)
        o = o * weights.flatten().index_select(0, order).unsqueeze(-1).to(o.dtype)
        return torch.zeros_like(x).index_add_(0, token, o)

    def compute(self, xs: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
        """xs [R, dim] rows sorted by expert, counts [E] rows per expert -> each row through its expert [R, dim]."""
        if self.impl == "grouped":
            offs = counts.cumsum(0).to(torch.int32)  # end row of each expert's group
            h = torch._grouped_mm(xs, self.w13.transpose(1, 2), offs=offs)  # [N*k, 2*inter]
            g, u = h.chunk(2, dim=-1)
            o = torch._grouped_mm(F.silu(g) * u, self.w2.transpose(1, 2), offs=offs)  # [N*k, dim]
        else:  # one matmul pair per expert that got rows (reads one count list from the device)
            outs, start = [], 0
            for e, c in enumerate(counts.tolist()):
                if c:
                    g, u = F.linear(xs[start:start + c], self.w13[e]).chunk(2, dim=-1)
                    outs.append(F.linear(F.silu(g) * u, self.w2[e]))
                    start += c
            o = torch.cat(outs) if len(outs) > 1 else outs[0] if outs else xs[:0]
        return o


class MoE(nn.Module):
    """y = sum over the top-k routed experts of weight * expert(x) + shared_experts(x)."""

    def __init__(self, args: ModelArgs):
        super().__init__()
        self.n_routed_experts, self.topk, self.alpha = args.n_routed_experts, args.n_activated_experts, args.aux_loss_alpha
        self.gate = Gate(args)
        self.experts = Experts(args)
        self.shared_experts = MLP(args.dim, args.n_shared_experts * args.moe_inter_dim) if args.n_shared_experts else None
        # tokens routed to each expert since the last reset (training forwards only); fp32 for all_reduce
        self.register_buffer("loads", torch.zeros(args.n_routed_experts, dtype=torch.float32), persistent=False)

    def _apply(self, fn, recurse=True):
        super()._apply(fn, recurse)
        if self.loads.dtype != torch.float32:  # model.to(bf16): bf16 counts stop being exact above 256
            self.loads = self.loads.float()
        return self

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """x [B, T, dim] -> (y [B, T, dim], sequence-wise balance loss or None)."""
        B, T, D = x.shape
        flat = x.view(-1, D)
        weights, indices, scores = self.gate(flat)
        counts = torch.bincount(indices.flatten(), minlength=self.n_routed_experts)
        y = self.experts(flat, weights, indices, counts)
        if self.shared_experts is not None:
            y = y + self.shared_experts(flat)
        balance = None
        if self.training:
            with torch.no_grad():
                self.loads += counts.to(self.loads.dtype)
            if self.alpha > 0:
                balance = self.balance_loss(scores.view(B, T, -1), indices.view(B, -1))
        return y.view(B, T, D), balance

    def balance_loss(self, scores: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
        """alpha * sum_i f_i P_i per sequence, averaged over the batch (paper eq. 17-20).

        scores [B, T, E] sigmoid scores; indices [B, T*k] chosen experts. f_i = E/(k T) * (tokens choosing i),
        P_i = mean_t of the scores normalised over all experts.
        """
        B, T, E = scores.shape
        with torch.no_grad():
            f = torch.zeros(B, E, device=scores.device).scatter_add_(1, indices, torch.ones_like(indices, dtype=torch.float32))
            f = f * (E / (self.topk * T))
        p = (scores / scores.sum(dim=-1, keepdim=True)).mean(dim=1)  # [B, E]
        return self.alpha * (f * p).sum(dim=-1).mean()

    @torch.no_grad()
    def update_bias(self, loads: torch.Tensor, gamma: float):
        """bias_i += gamma * sign(mean_load - load_i): underloaded experts become likelier picks."""
        self.gate.bias += gamma * torch.sign(loads.mean() - loads).to(self.gate.bias.dtype)
