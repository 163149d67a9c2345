"""ModelArgs <-> HF `DeepseekV3Config` (`config.json`) mapping.

Reads both the transformers>=5 `rope_parameters` and the legacy `rope_scaling` + `rope_theta` keys, and both
`num_nextn_predict_layers` (DeepSeek's name) and `num_mtp_layers` (transformers 5.24's alias). Fields HF does not
know travel under a `"turnout"` key, which HF keeps as a plain attribute.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .args import ModelArgs

ARCHITECTURE = "DeepseekV3ForCausalLM"
MODEL_TYPE = "deepseek_v3"

# (ModelArgs field, HF key, HF default): a config.json that omits a key gets DeepseekV3Config's default.
FIELD_MAP = (
    ("vocab_size", "vocab_size", 129280),
    ("dim", "hidden_size", 7168),
    ("inter_dim", "intermediate_size", 18432),
    ("moe_inter_dim", "moe_intermediate_size", 2048),
    ("n_layers", "num_hidden_layers", 61),
    ("n_dense_layers", "first_k_dense_replace", 3),
    ("n_heads", "num_attention_heads", 128),
    ("norm_eps", "rms_norm_eps", 1e-6),
    ("tie_embeddings", "tie_word_embeddings", False),
    ("n_routed_experts", "n_routed_experts", 256),
    ("n_shared_experts", "n_shared_experts", 1),
    ("n_activated_experts", "num_experts_per_tok", 8),
    ("n_expert_groups", "n_group", 8),
    ("n_limited_groups", "topk_group", 4),
    ("route_scale", "routed_scaling_factor", 2.5),
    ("norm_topk_prob", "norm_topk_prob", True),
    ("q_lora_rank", "q_lora_rank", 1536),
    ("kv_lora_rank", "kv_lora_rank", 512),
    ("qk_nope_head_dim", "qk_nope_head_dim", 128),
    ("qk_rope_head_dim", "qk_rope_head_dim", 64),
    ("v_head_dim", "v_head_dim", 128),
    ("max_seq_len", "max_position_embeddings", 4096),
    ("bos_token_id", "bos_token_id", 0),
    ("eos_token_id", "eos_token_id", 1),
    ("pad_token_id", "pad_token_id", None),
    ("init_std", "initializer_range", 0.02),
    ("aux_loss_alpha", "aux_loss_alpha", 0.0),
)
# fields HF has no key for; they ride along under "turnout"
TURNOUT_ONLY = ("mtp_loss_weight", "bias_update_speed", "ignore_index", "experts_impl", "attn_impl", "loss_impl",
                "norm_impl", "weight_layout")
# (HF key, the only value we implement); None in the file means "not set", which is fine
REQUIRED = (
    ("hidden_act", "silu"),
    ("attention_bias", False),
    ("rope_interleave", True),
    ("topk_method", "noaux_tc"),
    ("scoring_func", "sigmoid"),
    ("moe_layer_freq", 1),
)


def to_hf_config_dict(args: ModelArgs) -> dict:
    """The `config.json` body HF `DeepseekV3ForCausalLM.from_pretrained` reads for these args."""
    d = {"architectures": [ARCHITECTURE], "model_type": MODEL_TYPE}
    for field, key, _ in FIELD_MAP:
        d[key] = getattr(args, field)
    d["num_key_value_heads"] = args.n_heads
    d["num_nextn_predict_layers"] = args.mtp_depth
    d["rope_parameters"] = _rope_parameters(args)
    d.update({k: v for k, v in REQUIRED})
    d["attention_dropout"] = 0.0
    d["turnout"] = {f: getattr(args, f) for f in TURNOUT_ONLY}
    return d


def _rope_parameters(args: ModelArgs) -> dict:
    rp = {"rope_type": args.rope_type, "rope_theta": args.rope_theta}
    if args.rope_type == "yarn":
        rp.update(factor=args.rope_factor, original_max_position_embeddings=args.original_seq_len,
                  beta_fast=args.beta_fast, beta_slow=args.beta_slow)
        for key, v in (("mscale", args.mscale), ("mscale_all_dim", args.mscale_all_dim),
                       ("attention_factor", args.rope_attention_factor)):
            if v is not None:
                rp[key] = v
    return rp


def from_hf_config_dict(d: dict) -> ModelArgs:
    """ModelArgs from a `config.json` body; anything this model does not implement raises ValueError naming it."""
    from .args import ModelArgs

    if d.get("model_type") != MODEL_TYPE:
        raise ValueError(f"config model_type={d.get('model_type')!r}: only {MODEL_TYPE!r} is supported")
    archs = d.get("architectures") or [ARCHITECTURE]
    bad = [a for a in archs if a not in (ARCHITECTURE, "DeepseekV3Model")]
    if bad:
        raise ValueError(f"config architectures={bad!r}: only {ARCHITECTURE!r} is supported")
    for key, want in REQUIRED:
        if d.get(key) is not None and d[key] != want:
            raise ValueError(f"config {key}={d[key]!r} is not supported (only {want!r})")
    kw = {}
    for field, key, default in FIELD_MAP:
        kw[field] = d.get(key, default)
    # HF keeps None for "unset" in a few of these; DeepseekV3Config treats them as follows
    if kw["n_expert_groups"] is None:
        kw["n_expert_groups"] = 1
    if kw["n_limited_groups"] is None:
        kw["n_limited_groups"] = 1
    if kw["n_dense_layers"] is None:
        kw["n_dense_layers"] = 0
    if kw["norm_topk_prob"] is None:
        kw["norm_topk_prob"] = False
    if kw["v_head_dim"] is None:
        raise ValueError("config v_head_dim=None is not supported")
    nkv = d.get("num_key_value_heads")
    if nkv is not None and nkv != kw["n_heads"]:
        raise ValueError(f"config num_key_value_heads={nkv} differs from num_attention_heads={kw['n_heads']}; "
                         "MLA has one latent shared by all heads")
    mtp = d.get("num_nextn_predict_layers", d.get("num_mtp_layers", 0))
    kw["mtp_depth"] = int(mtp or 0)
    kw["aux_loss_alpha"] = float(kw["aux_loss_alpha"] or 0.0)
    kw.update(_rope_fields(d))
    for f, v in (d.get("turnout") or {}).items():
        if f in TURNOUT_ONLY:
            kw[f] = v
    return ModelArgs().replace(**kw)


def _rope_fields(d: dict) -> dict:
    rp = dict(d.get("rope_parameters") or d.get("rope_scaling") or {})
    if "rope_parameters" in d and d["rope_parameters"] and any(isinstance(v, dict) for v in rp.values()):
        raise ValueError("config rope_parameters per layer type is not supported")
    rtype = rp.get("rope_type", rp.get("type", "default"))
    theta = rp.get("rope_theta", d.get("rope_theta", 10000.0))
    if rtype not in ("default", "yarn"):
        raise ValueError(f"config rope_type={rtype!r} is not supported (only 'default' and 'yarn')")
    if rp.get("partial_rotary_factor", 1.0) != 1.0:
        raise ValueError(f"config partial_rotary_factor={rp['partial_rotary_factor']} is not supported")
    out = {"rope_type": rtype, "rope_theta": float(theta)}
    if rtype == "yarn":
        if rp.get("truncate", True) is not True:
            raise ValueError("config rope_parameters.truncate=False is not supported")
        max_pos = d.get("max_position_embeddings", 4096)
        orig = rp.get("original_max_position_embeddings", d.get("original_max_position_embeddings", max_pos))
        out.update(
            original_seq_len=int(orig),
            rope_factor=float(rp.get("factor") or max_pos / orig),
            beta_fast=float(rp.get("beta_fast") or 32),
            beta_slow=float(rp.get("beta_slow") or 1),
            mscale=rp.get("mscale"),
            mscale_all_dim=rp.get("mscale_all_dim"),
            rope_attention_factor=rp.get("attention_factor"),
        )
    return out
