"""RMSNorm and rotary position embedding (RoPE) with YaRN scaling, in DeepSeek's interleaved-pair layout."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .args import ModelArgs


class RMSNorm(nn.Module):
    """y = w * x / rms(x), normalised in fp32 and cast back before the weight (as HF does).

    `impl` (ModelArgs.norm_impl, set by the Transformer): "fused" is F.rms_norm; "explicit" writes the fp32
    forward and backward out (_RMSNorm), faster than torch's CPU kernel on a training step's activations
    (bench/model_vs_hf.py runs it within configs/tiny.toml's kernel set).
    """

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.dim, self.eps = dim, eps
        self.weight = nn.Parameter(torch.ones(dim))
        self.impl = "fused"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype == torch.float32:
            if self.impl == "explicit" and self.weight.dtype == torch.float32:
                return _RMSNorm.apply(x, self.weight, self.eps)
            return F.rms_norm(x, (self.dim,), self.weight, self.eps)
        return F.rms_norm(x.float(), (self.dim,), eps=self.eps).to(x.dtype) * self.weight

    def reset_parameters(self):
        nn.init.ones_(self.weight)


class _RMSNorm(torch.autograd.Function):
    """x [..., D] -> w * x * r with r = rsqrt(mean(x^2) + eps); keeps x * r (the normalised input) and r."""

    @staticmethod
    def forward(ctx, x, weight, eps: float):
        r = torch.rsqrt(x.pow(2).mean(-1, keepdim=True).add_(eps))  # [..., 1]
        xn = x * r
        ctx.save_for_backward(xn, r, weight)
        return xn * weight

    @staticmethod
    def backward(ctx, dy):
        xn, r, weight = ctx.saved_tensors
        g = dy * weight
        # d(x * r)/dx applied to g: r * (g - xn * mean(g * xn)); the weight's gradient sums dy * xn over rows
        dx = (g - xn * (g * xn).mean(-1, keepdim=True)).mul_(r)
        dw = (dy * xn).sum(dim=tuple(range(dy.dim() - 1)))
        return dx, dw, None


def yarn_get_mscale(scale: float, mscale: float = 1.0) -> float:
    return 1.0 if scale <= 1 else 0.1 * mscale * math.log(scale) + 1.0


def softmax_scale(args: ModelArgs) -> float:
    """qk_head_dim^-0.5, times mscale(factor, mscale_all_dim)^2 under YaRN (1.3524e-1 for V3 instead of 7.2e-2)."""
    scale = args.qk_head_dim ** -0.5
    if args.rope_type != "default" and args.mscale_all_dim:
        m = yarn_get_mscale(args.rope_factor, args.mscale_all_dim)
        scale = scale * m * m
    return scale


def rope_inv_freq(args: ModelArgs) -> tuple[torch.Tensor, float]:
    """([qk_rope_head_dim/2] inverse frequencies, cos/sin multiplier); HF's default and yarn (truncate=True) math."""
    d, base = args.qk_rope_head_dim, args.rope_theta
    pos_freqs = base ** (torch.arange(0, d, 2, dtype=torch.float32, device="cpu") / d)
    inv_freq = 1.0 / pos_freqs
    if args.rope_type == "default":
        return inv_freq, 1.0
    factor, orig = args.rope_factor, args.original_seq_len

    def correction_dim(n_rot: float) -> float:  # the dim index whose wavelength fits n_rot times into orig
        return d * math.log(orig / (n_rot * 2 * math.pi)) / (2 * math.log(base))

    low = max(math.floor(correction_dim(args.beta_fast)), 0)
    high = min(math.ceil(correction_dim(args.beta_slow)), d - 1)
    if low == high:
        high += 0.001  # avoid 0/0 in the ramp
    ramp = torch.clamp((torch.arange(d // 2, dtype=torch.float32, device="cpu") - low) / (high - low), 0, 1)
    extra = 1 - ramp  # 1: keep the original frequency (fast dims), 0: divide by factor (slow dims)
    inv_freq = 1.0 / (factor * pos_freqs) * (1 - extra) + inv_freq * extra
    af = args.rope_attention_factor
    if af is None:
        if args.mscale and args.mscale_all_dim:
            af = yarn_get_mscale(factor, args.mscale) / yarn_get_mscale(factor, args.mscale_all_dim)
        else:
            af = yarn_get_mscale(factor)
    return inv_freq, float(af)


class RotaryEmbedding:
    """Maps positions to (cos, sin), each [..., rope]: cos repeated per pair, sin signed (-s, +s) per pair.

    Not a module and no buffer: inv_freq stays fp32 under `model.to(bf16)` and needs no re-init after meta-device
    construction. It lives on the CPU and is copied (rope/2 floats) to the positions' device once per forward.
    """

    def __init__(self, args: ModelArgs):
        self.inv_freq, self.attention_factor = rope_inv_freq(args)
        self._device_freq: torch.Tensor | None = None

    def __call__(self, positions: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        inv = self._device_freq
        if inv is None or inv.device != positions.device:
            inv = self._device_freq = self.inv_freq.to(positions.device)
        freqs = positions.float().unsqueeze(-1) * inv  # [..., T, rope/2] fp32
        cos, sin = freqs.cos(), freqs.sin()
        if self.attention_factor != 1.0:
            cos, sin = cos * self.attention_factor, sin * self.attention_factor
        cos = cos.repeat_interleave(2, dim=-1)  # [..., T, rope]: (c0, c0, c1, c1, ...)
        sin = torch.stack([-sin, sin], dim=-1).flatten(-2)  # (-s0, s0, -s1, s1, ...)
        return cos.to(dtype), sin.to(dtype)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate adjacent pairs (x0,x1),(x2,x3),... of x [..., T, h, rope] by cos/sin [..., T, rope] (RotaryEmbedding's).

    (x0, x1) -> (x0 c - x1 s, x1 c + x0 s): x * cos + pairswap(x) * sin, in the released weights' interleaved
    layout, the same as DeepSeek's complex multiply.
    """
    cos, sin = cos.unsqueeze(-2), sin.unsqueeze(-2)  # broadcast over heads
    swapped = x.unflatten(-1, (-1, 2)).flip(-1).flatten(-2)  # (x1, x0, x3, x2, ...)
    return torch.addcmul(x * cos, swapped, sin)
