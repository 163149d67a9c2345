"""Analytic parameter and FLOP counts against instantiated models and torch's FlopCounterMode."""

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from turnout.model import ModelArgs, Transformer, flops_per_token, mtp_params, param_counts
from turnout.model.moe import MoE

from .oracle import small_args


def _active_by_hand(model: Transformer) -> int:
    """Parameters a token touches: everything but the routed experts it is not sent to."""
    a = model.args
    n = sum(p.numel() for p in model.parameters())
    for m in model.modules():
        if isinstance(m, MoE):
            n -= (a.n_routed_experts - a.n_activated_experts) * (m.experts.w13[0].numel() + m.experts.w2[0].numel())
    return n


@pytest.mark.parametrize("overrides", [dict(), dict(q_lora_rank=None, tie_embeddings=True, n_dense_layers=0),
                                       dict(mtp_depth=2, n_shared_experts=2)])
def test_param_counts_match_instantiated_model(overrides):
    args = small_args(**overrides)
    model = Transformer(args)
    total, active = param_counts(args, mtp=True)
    assert total == sum(p.numel() for p in model.parameters())
    assert active == _active_by_hand(model)
    t0, _ = param_counts(args)
    assert total - t0 == mtp_params(args) == sum(p.numel() for p in model.mtp.parameters())


def test_preset_sizes():
    total, _ = param_counts(ModelArgs.preset("tiny"))
    assert 8.5e6 < total < 9.5e6
    assert sum(p.numel() for p in Transformer(ModelArgs.preset("tiny")).parameters()) == total
    assert 0.5e6 < param_counts(ModelArgs.preset("debug"))[0] < 1.5e6
    assert 100e6 <= param_counts(ModelArgs.preset("small"))[0] <= 200e6


def test_v3_671b_counts():
    total, active = param_counts(ModelArgs.preset("v3-671b"))
    assert abs(total / 1e9 - 671) < 1.0, total
    assert abs(active / 1e9 - 37) < 1.0, active
    # the MTP module: ~11.6B of its own, ~13.5B with the embedding and head copies stored beside it (the "14B")
    a = ModelArgs.preset("v3-671b")
    assert 13e9 < mtp_params(a) + 2 * a.vocab_size * a.dim < 14.5e9


@pytest.mark.parametrize("mtp_depth", [0, 1])
def test_training_flops_match_flop_counter(mtp_depth):
    # loop experts, eager attention, plain loss: FlopCounterMode counts neither grouped_mm, causal skipping, nor
    # the in-place addmm_ of the fused loss
    args = small_args(experts_impl="loop", attn_impl="eager", loss_impl="plain", mtp_depth=mtp_depth)
    model = Transformer(args)
    B, T = 2, 32
    tokens = torch.randint(0, args.vocab_size, (B, T + 1))
    with FlopCounterMode(display=False) as fc:
        model(tokens[:, :-1], targets=tokens[:, 1:]).loss.backward()
    expected = flops_per_token(args, T, causal=False) * B * T
    assert abs(fc.get_total_flops() / expected - 1) < 1e-3, (fc.get_total_flops(), expected)
    assert flops_per_token(args, T) < flops_per_token(args, T, causal=False)
