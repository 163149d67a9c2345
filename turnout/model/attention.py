"""Causal attention in query blocks with explicit matmuls: the training-path kernel choice attn_impl="blocked".

Query block i (rows i*c .. (i+1)*c - 1) only scores keys 0 .. (i+1)*c - 1, so with n blocks the products cover
(n + 1) / 2n of the full T x T square (62.5% for 4 blocks) instead of all of it, and each block is a handful of
large batched matmuls. The probabilities are kept for the backward, which is written out (softmax backward
included), so nothing is recomputed: memory O(T^2 / 2) per head, which suits the short sequences of CPU
training; MLA uses SDPA instead above MAX_LEN.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

MAX_LEN = 2048  # longer sequences: the saved probabilities would outgrow what the blocks save
BLOCKS = 4


class _BlockCausal(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, scale: float, n_blocks: int):
        """q, k [N, T, D], v [N, T, Dv] -> o [N, T, Dv]; T divisible by n_blocks."""
        N, T, _ = q.shape
        c = T // n_blocks
        diag = torch.full((c, c), float("-inf"), dtype=q.dtype, device=q.device).triu_(1)  # within a block
        outs, probs = [], []
        for i in range(n_blocks):
            L = (i + 1) * c
            bias = F.pad(diag, (L - c, 0))  # [c, L]: earlier blocks fully visible, causal inside this one
            # the mask is added after the product, not as baddbmm's input: a -inf input would leave its rows'
            # product checksums nothing to compare (and 0 / -inf entries make the two bit-identical)
            s = torch.bmm(q[:, i * c:L], k[:, :L].transpose(1, 2)).mul_(scale).add_(bias)  # [N, c, L]
            p = torch.softmax(s, dim=-1, dtype=torch.float32).to(q.dtype)
            outs.append(torch.bmm(p, v[:, :L]))
            probs.append(p)
        o = torch.cat(outs, dim=1)
        ctx.save_for_backward(q, k, v, o, *probs)
        ctx.scale = scale
        return o

    @staticmethod
    def backward(ctx, do):
        q, k, v, o, *probs = ctx.saved_tensors
        c = q.shape[1] // len(probs)
        do = do.contiguous()
        delta = (do * o).sum(-1, keepdim=True)  # [N, T, 1]: rowsum(dP * P) of the softmax backward
        dq = torch.empty_like(q)
        dk, dv = torch.zeros_like(k), torch.zeros_like(v)
        for i, p in enumerate(probs):
            L = (i + 1) * c
            do_i = do[:, i * c:L]
            dv[:, :L].baddbmm_(p.transpose(1, 2), do_i)
            ds = torch.bmm(do_i, v[:, :L].transpose(1, 2)).sub_(delta[:, i * c:L]).mul_(p)  # [N, c, L]
            dq[:, i * c:L] = torch.bmm(ds, k[:, :L]).mul_(ctx.scale)
            dk[:, :L].baddbmm_(ds.transpose(1, 2), q[:, i * c:L], alpha=ctx.scale)
        return dq, dk, dv, None, None


def block_causal_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
    """Causal attention of q, k [B, H, T, D] and v [B, H, T, Dv] -> [B, H, T, Dv], in query blocks.

    Runs in one dtype, forward and backward: autocast's when it is on (as SDPA would), else the inputs' widest.
    """
    B, H, T, D = q.shape
    n = BLOCKS if T % BLOCKS == 0 and T >= 4 * BLOCKS else 1
    device = q.device.type
    if torch.is_autocast_enabled(device):
        dtype = torch.get_autocast_dtype(device)
    else:
        dtype = torch.promote_types(torch.promote_types(q.dtype, k.dtype), v.dtype)
    flat = [t.reshape(B * H, T, t.shape[-1]).to(dtype) for t in (q, k, v)]
    with torch.autocast(device, enabled=False):  # the backward runs without autocast: keep both alike
        return _BlockCausal.apply(*flat, scale, n).view(B, H, T, v.shape[-1])
