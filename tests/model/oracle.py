"""Helpers shared by the model tests: small configs, weight randomisation, the HF DeepseekV3 oracle."""

import torch

from turnout.model import ModelArgs


def small_args(**overrides) -> ModelArgs:
    """A ~0.5M-param model: 3 layers (1 dense), 8 experts in 4 groups keeping 2, top-2, q_lora, no MTP."""
    base = dict(vocab_size=512, dim=64, inter_dim=192, moe_inter_dim=32, n_layers=3, n_dense_layers=1, n_heads=4,
                n_routed_experts=8, n_shared_experts=1, n_activated_experts=2, n_expert_groups=4, n_limited_groups=2,
                route_scale=2.5, q_lora_rank=48, kv_lora_rank=32, qk_nope_head_dim=16, qk_rope_head_dim=8,
                v_head_dim=16, max_seq_len=256, mtp_depth=0)
    base.update(overrides)
    return ModelArgs().replace(**base).check()


@torch.no_grad()
def randomize_(model: torch.nn.Module, seed: int = 0, bias_scale: float = 0.3):
    """Randomise every parameter and the router bias so nothing is left at zero/identity init.

    Norm weights ~ 1 + 0.2 N(0,1); router weights ~ 0.3 N(0,1) (spread scores); router bias ~ bias_scale N(0,1);
    other matrices ~ N(0, 1/fan_in) so activations stay O(1) through the layers.
    """
    g = torch.Generator().manual_seed(seed)
    for name, p in model.named_parameters():
        r = torch.randn(p.shape, generator=g, dtype=torch.float32)
        if p.ndim == 1:  # norms
            p.copy_(1 + 0.2 * r)
        elif name.endswith("gate.weight"):
            p.copy_(0.3 * r)
        elif "embed" in name:
            p.copy_(r)
        else:
            p.copy_(r * p.shape[-1] ** -0.5)
    for name, b in model.named_buffers():
        if name.endswith("gate.bias") or name.endswith("e_score_correction_bias"):
            b.copy_(bias_scale * torch.randn(b.shape, generator=g))


def hf_model(args: ModelArgs):
    """A randomly initialised transformers DeepseekV3ForCausalLM with these args, in eval mode."""
    from transformers import DeepseekV3Config, DeepseekV3ForCausalLM

    torch.manual_seed(0)
    return DeepseekV3ForCausalLM(DeepseekV3Config(**args.to_hf_config_dict())).eval()


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    assert torch.isfinite(out).all() and torch.isfinite(ref).all()
    return ((out.double() - ref.double()).abs().max() / ref.double().abs().max()).item()


def mtp_logits(model, x: torch.Tensor) -> torch.Tensor:
    """Depth-1 MTP logits [B, T, V] of the training path, written out: position i from the main model's final-norm
    h_i and the embedding of token i + 1 (the last position wraps around and is meaningless)."""
    emb = model.embed(x)
    cos, sin = model.rope(torch.arange(x.shape[1]), emb.dtype)
    h = emb
    for layer in model.layers:
        h, _ = layer(h, cos, sin)
    _, out, _ = model.mtp[0](model.norm(h), model.embed(x.roll(-1, dims=1)), cos, sin)
    return model.head(out)
