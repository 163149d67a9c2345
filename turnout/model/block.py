"""Decoder block: h += attn(attn_norm(h)); h += ffn(ffn_norm(h)), with a dense MLP or a MoE as the ffn."""

from __future__ import annotations

import torch
from torch import nn

from .args import ModelArgs
from .cache import CacheStep, LatentCache
from .mla import MLA
from .moe import MLP, MoE
from .norm_rope import RMSNorm


class Block(nn.Module):
    """One decoder layer; layers with layer_id < n_dense_layers use the dense MLP, the rest MoE."""

    def __init__(self, layer_id: int, args: ModelArgs):
        super().__init__()
        self.layer_id = layer_id
        self.attn_norm = RMSNorm(args.dim, args.norm_eps)
        self.attn = MLA(args, layer_id)
        self.ffn_norm = RMSNorm(args.dim, args.norm_eps)
        self.ffn = MLP(args.dim, args.inter_dim) if layer_id < args.n_dense_layers else MoE(args)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, cache: LatentCache | None = None,
                step: CacheStep | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """x [B, T, dim] -> (x [B, T, dim], this layer's balance loss or None)."""
        x = x + self.attn(self.attn_norm(x), cos, sin, cache, step)
        balance = None
        if isinstance(self.ffn, MoE):
            h, balance = self.ffn(self.ffn_norm(x))
        else:
            h = self.ffn(self.ffn_norm(x))
        return x + h, balance
