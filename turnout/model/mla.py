"""Multi-head Latent Attention (MLA), with a training path and an absorbed, latent-cached inference path."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .args import ModelArgs
from .attention import MAX_LEN, block_causal_attention
from .cache import CacheStep, LatentCache
from .norm_rope import RMSNorm, apply_rope, softmax_scale


class MLA(nn.Module):
    """q = wq_b(q_norm(wq_a x)) (or wq x); [c_kv | k_pe] = wkv_a x; [k_nope | v] = wkv_b kv_norm(c_kv); out = wo(attn).

    k_pe is one head shared by all heads. Training expands c_kv with wkv_b and calls SDPA with the YaRN-adjusted scale.
    With a cache, wkv_b is folded into the query and the output ("absorbed"), so only kv_norm(c_kv) and k_pe are kept.
    """

    def __init__(self, args: ModelArgs, layer_id: int):
        super().__init__()
        self.layer_id = layer_id
        self.n_heads, self.kv_lora_rank = args.n_heads, args.kv_lora_rank
        self.nope, self.rope, self.v_dim = args.qk_nope_head_dim, args.qk_rope_head_dim, args.v_head_dim
        qk = args.qk_head_dim
        self.q_lora_rank = args.q_lora_rank
        if args.q_lora_rank is None:
            self.wq = nn.Linear(args.dim, args.n_heads * qk, bias=False)
        else:
            self.wq_a = nn.Linear(args.dim, args.q_lora_rank, bias=False)
            self.q_norm = RMSNorm(args.q_lora_rank)  # eps 1e-6 regardless of norm_eps, as in HF
            self.wq_b = nn.Linear(args.q_lora_rank, args.n_heads * qk, bias=False)
        self.wkv_a = nn.Linear(args.dim, args.kv_lora_rank + args.qk_rope_head_dim, bias=False)
        self.kv_norm = RMSNorm(args.kv_lora_rank)
        self.wkv_b = nn.Linear(args.kv_lora_rank, args.n_heads * (args.qk_nope_head_dim + args.v_head_dim), bias=False)
        self.wo = nn.Linear(args.n_heads * args.v_head_dim, args.dim, bias=False)
        self.scale = softmax_scale(args)
        self.attn_impl = args.attn_impl

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                cache: LatentCache | None = None, step: CacheStep | None = None) -> torch.Tensor:
        B, T, _ = x.shape
        H = self.n_heads
        q = self.wq(x) if self.q_lora_rank is None else self.wq_b(self.q_norm(self.wq_a(x)))
        q = q.view(B, T, H, self.nope + self.rope)
        q_nope, q_pe = q.split([self.nope, self.rope], dim=-1)
        c_kv, k_pe = self.wkv_a(x).split([self.kv_lora_rank, self.rope], dim=-1)
        if cache is not None:
            o = self._absorbed(q_nope, q_pe, c_kv, k_pe, cos, sin, cache, step)
        else:
            q_pe = apply_rope(q_pe, cos, sin)
            k_pe = apply_rope(k_pe.unsqueeze(2), cos, sin).squeeze(2)  # [B, T, rope]
            o = self._expanded(q_nope, q_pe, self.kv_norm(c_kv), k_pe)
        return self.wo(o.flatten(2))

    def _expanded(self, q_nope, q_pe, c_kv, k_pe) -> torch.Tensor:
        """Training path: k, v for every head from wkv_b; causal attention over the T tokens of this call."""
        B, T, H, _ = q_nope.shape
        kv = self.wkv_b(c_kv).view(B, T, H, self.nope + self.v_dim)
        k_nope, v = kv.split([self.nope, self.v_dim], dim=-1)
        # concatenating the head-major views writes q and k contiguous as [B, H, T, qk]: no copy later
        q = torch.cat([q_nope.transpose(1, 2), q_pe.transpose(1, 2)], dim=-1)
        k = torch.cat([k_nope.transpose(1, 2), k_pe.unsqueeze(1).expand(B, H, T, self.rope)], dim=-1)
        v = v.transpose(1, 2)  # [B, H, T, v]
        if self.attn_impl == "blocked" and T <= MAX_LEN:
            o = block_causal_attention(q, k, v, self.scale)
        elif self.attn_impl in ("sdpa", "blocked"):
            # v is zero-padded to the qk head dim (32 -> 48 in tiny, 128 -> 192 in V3): fused flash kernels
            # (CPU's, FA2) need equal head dims, and without them SDPA falls back to the full-T^2 math path
            pad = self.nope + self.rope - self.v_dim
            o = F.scaled_dot_product_attention(q, k, F.pad(v, (0, pad)) if pad > 0 else v, is_causal=True,
                                               scale=self.scale)
            o = o[..., :self.v_dim] if pad > 0 else o
        else:
            s = (q @ k.transpose(-1, -2)) * self.scale  # [B, H, T, T]
            causal = torch.ones(T, T, dtype=torch.bool, device=q.device).tril()
            s = s.masked_fill(~causal, float("-inf"))
            o = torch.softmax(s, dim=-1, dtype=torch.float32).to(q.dtype) @ v
        return o.transpose(1, 2)  # [B, T, H, v]

    def _absorbed(self, q_nope, q_pe, c_kv, k_pe, cos, sin, cache: LatentCache, step: CacheStep) -> torch.Tensor:
        """Inference path on the latent cache: scores = (q_nope W_uk) . c_kv + q_pe . k_pe; out = (P c_kv) W_uv.

        Written for few tokens per call (decode): a handful of batched matmuls per layer, no per-head K/V.
        """
        B, T, H, _ = q_nope.shape
        C, dtype = self.kv_lora_rank, q_nope.dtype
        pe = apply_rope(torch.cat([q_pe, k_pe.unsqueeze(2)], dim=2), cos, sin)  # [B, T, H + 1, rope]: q and k at once
        latent = torch.cat([self.kv_norm(c_kv), pe[:, :, H]], dim=-1)  # [B, T, C + rope]
        keys = cache.update(self.layer_id, latent, step).to(dtype)  # [B, S, C + rope]
        w = self.wkv_b.weight.view(H, self.nope + self.v_dim, C)
        q_lat = torch.bmm(q_nope.reshape(B * T, H, self.nope).transpose(0, 1), w[:, :self.nope])  # [H, B*T, C]
        q = torch.cat([q_lat.transpose(0, 1), pe[:, :, :H].reshape(B * T, H, self.rope)], dim=-1)  # [B*T, H, C+rope]
        bias = step.bias.to(dtype)  # [B, T, S]: rows of query t repeat for each head
        bias = bias.repeat_interleave(H, dim=1) if T > 1 else bias
        s = torch.baddbmm(bias, q.view(B, T * H, C + self.rope), keys.transpose(1, 2), alpha=self.scale)
        p = torch.softmax(s, dim=-1, dtype=torch.float32).to(dtype)  # [B, T*H, S]
        o_lat = torch.bmm(p, keys[..., :C]).view(B * T, H, C)
        o = torch.bmm(o_lat.transpose(0, 1), w[:, self.nope:].transpose(1, 2))  # [H, B*T, v]
        return o.transpose(0, 1).reshape(B, T, H, self.v_dim)
