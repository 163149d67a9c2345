"""RMSNorm, YaRN frequencies and the interleaved RoPE layout against references."""

import pytest
import torch

from turnout.model import ModelArgs
from turnout.model.norm_rope import RMSNorm, RotaryEmbedding, apply_rope, rope_inv_freq, softmax_scale

from .oracle import small_args


def test_rmsnorm_matches_fp64_reference():
    norm = RMSNorm(64, eps=1e-6)
    with torch.no_grad():
        norm.weight.copy_(1 + 0.3 * torch.randn(64))
    x = torch.randn(3, 5, 64) * 4
    x64 = x.double()
    ref = norm.weight.double() * x64 / torch.sqrt(x64.pow(2).mean(-1, keepdim=True) + 1e-6)
    assert (norm(x).double() - ref).abs().max() < 1e-5
    y = norm.to(torch.bfloat16)(x.bfloat16())
    assert y.dtype == torch.bfloat16 and (y.double() - ref).abs().max() < 0.1


ROPE_CASES = [
    dict(),
    dict(rope_type="yarn", rope_factor=40.0, original_seq_len=4096, mscale=1.0, mscale_all_dim=1.0,
         qk_rope_head_dim=64, max_seq_len=163840),
    dict(rope_type="yarn", rope_factor=4.0, original_seq_len=64, mscale=0.707),
    dict(rope_type="yarn", rope_factor=8.0, original_seq_len=32, beta_fast=16.0, beta_slow=2.0, rope_theta=5000.0),
    dict(rope_type="yarn", rope_factor=2.0, original_seq_len=128, rope_attention_factor=1.3, mscale_all_dim=0.5),
]


@pytest.mark.parametrize("case", ROPE_CASES)
def test_rope_frequencies_and_scale_match_hf(case):
    from transformers import DeepseekV3Config
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS
    from transformers.models.deepseek_v3.modeling_deepseek_v3 import yarn_apply_mscale

    args = small_args(**case)
    cfg = DeepseekV3Config(**args.to_hf_config_dict())
    inv, factor = rope_inv_freq(args)
    if args.rope_type == "default":
        hf_inv, hf_factor = 1.0 / (args.rope_theta ** (torch.arange(0, args.qk_rope_head_dim, 2).float()
                                                       / args.qk_rope_head_dim)), 1.0
    else:
        hf_inv, hf_factor = ROPE_INIT_FUNCTIONS["yarn"](cfg)
    assert torch.equal(inv, hf_inv) and factor == pytest.approx(hf_factor, rel=1e-12)
    assert softmax_scale(args) == pytest.approx(yarn_apply_mscale(cfg.rope_parameters, args.qk_head_dim ** -0.5))


def test_v3_softmax_scale():
    a = ModelArgs.preset("v3-671b")
    assert softmax_scale(a) == pytest.approx(0.1352338, rel=1e-6)
    assert rope_inv_freq(a)[1] == 1.0


def test_interleaved_rope_matches_official_complex_form():
    """DeepSeek's inference code rotates adjacent pairs with view_as_complex; q.k must agree."""
    args = small_args(qk_rope_head_dim=16)
    cos, sin = RotaryEmbedding(args)(torch.arange(10), torch.float32)  # [T, 16]
    assert torch.equal(cos[:, 0::2], cos[:, 1::2]) and torch.equal(sin[:, 0::2], -sin[:, 1::2])
    q, k = torch.randn(2, 10, 4, 16), torch.randn(2, 10, 1, 16)
    freqs_cis = torch.polar(torch.ones_like(cos[:, 1::2]).double(), torch.atan2(sin[:, 1::2], cos[:, 1::2]).double())

    def official(x):
        xc = torch.view_as_complex(x.double().reshape(*x.shape[:-1], -1, 2))
        return torch.view_as_real(xc * freqs_cis.to(torch.complex128).unsqueeze(1)).flatten(-2)

    ours_q, ours_k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
    ref_q, ref_k = official(q), official(k)
    # the official result itself, in the same interleaved layout
    assert torch.allclose(ours_q.double(), ref_q, atol=1e-6) and torch.allclose(ours_k.double(), ref_k, atol=1e-6)
    dots = torch.einsum("bthd,bshd->bhts", ours_q, ours_k.expand_as(ours_q)).double()
    ref_dots = torch.einsum("bthd,bshd->bhts", ref_q, ref_k.expand_as(ref_q))
    assert (dots - ref_dots).abs().max() < 1e-4


def test_rope_is_relative():
    """Shifting every position by the same amount leaves q.k unchanged (default RoPE, attention_factor 1)."""
    args = small_args()
    rope = RotaryEmbedding(args)
    q, k = torch.randn(1, 6, 2, 8), torch.randn(1, 6, 1, 8)
    def dots(offset):
        cos, sin = rope(torch.arange(6) + offset, torch.float32)
        return torch.einsum("bthd,bsd->bhts", apply_rope(q, cos, sin), apply_rope(k, cos, sin)[:, :, 0])
    assert torch.allclose(dots(0), dots(100), atol=1e-4)
    assert not torch.allclose(dots(0)[..., 0, 1], dots(0)[..., 0, 2])


def test_explicit_rmsnorm_backward_is_exact():
    """The written-out RMSNorm: gradcheck in fp64, and the same values and gradients as F.rms_norm in fp32."""
    from turnout.model.norm_rope import _RMSNorm

    x = torch.randn(3, 5, 16, dtype=torch.float64, requires_grad=True)
    w = torch.randn(16, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: _RMSNorm.apply(a, b, 1e-6), (x, w))
    norm = RMSNorm(16)
    with torch.no_grad():
        norm.weight.normal_()
    x32 = torch.randn(4, 7, 16, requires_grad=True)
    ref = torch.nn.functional.rms_norm(x32, (16,), norm.weight, 1e-6)
    (gx_ref, gw_ref) = torch.autograd.grad(ref.square().sum(), (x32, norm.weight))
    norm.impl = "explicit"
    out = norm(x32)
    (gx, gw) = torch.autograd.grad(out.square().sum(), (x32, norm.weight))
    torch.testing.assert_close(out, ref)
    torch.testing.assert_close(gx, gx_ref)
    torch.testing.assert_close(gw, gw_ref)
