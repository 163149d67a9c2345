"""State-dict conversion turnout <-> HF DeepseekV3 (`DeepseekV3ForCausalLM` key names).

turnout keys follow DeepSeek's inference code: `layers.{i}.attn.wkv_a.weight`, `layers.{i}.ffn.gate.bias`,
`layers.{i}.ffn.experts.w13` [E, 2I, dim] (w1 rows then w3 rows) and `.w2` [E, dim, I], `mtp.{k}.eh_proj.weight`.
HF keys are the on-disk ones: per-expert `model.layers.{i}.mlp.experts.{e}.{gate,up,down}_proj.weight`, MTP module k
at `model.layers.{n_layers + k}.*` with `shared_head.norm` and copies of `embed_tokens` / `shared_head.head`.
Loading also accepts transformers>=5's fused in-memory `mlp.experts.gate_up_proj` / `mlp.experts.down_proj`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import torch

from turnout.errors import CheckpointError

from .args import ModelArgs


TOP = {"embed.weight": "model.embed_tokens.weight", "norm.weight": "model.norm.weight", "head.weight": "lm_head.weight"}
BLOCK = {
    "attn_norm.weight": "input_layernorm.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
    "attn.wq.weight": "self_attn.q_proj.weight",
    "attn.wq_a.weight": "self_attn.q_a_proj.weight",
    "attn.q_norm.weight": "self_attn.q_a_layernorm.weight",
    "attn.wq_b.weight": "self_attn.q_b_proj.weight",
    "attn.wkv_a.weight": "self_attn.kv_a_proj_with_mqa.weight",
    "attn.kv_norm.weight": "self_attn.kv_a_layernorm.weight",
    "attn.wkv_b.weight": "self_attn.kv_b_proj.weight",
    "attn.wo.weight": "self_attn.o_proj.weight",
    "ffn.w1.weight": "mlp.gate_proj.weight",
    "ffn.w2.weight": "mlp.down_proj.weight",
    "ffn.w3.weight": "mlp.up_proj.weight",
    "ffn.gate.weight": "mlp.gate.weight",
    "ffn.gate.bias": "mlp.gate.e_score_correction_bias",
    "ffn.shared_experts.w1.weight": "mlp.shared_experts.gate_proj.weight",
    "ffn.shared_experts.w2.weight": "mlp.shared_experts.down_proj.weight",
    "ffn.shared_experts.w3.weight": "mlp.shared_experts.up_proj.weight",
    # MTP modules only
    "enorm.weight": "enorm.weight",
    "hnorm.weight": "hnorm.weight",
    "eh_proj.weight": "eh_proj.weight",
    "norm.weight": "shared_head.norm.weight",
}
# copies of the shared embedding / head stored with each MTP module on disk
MTP_COPIES = ("embed_tokens.weight", "shared_head.head.weight")
_BLOCK_KEY = re.compile(r"(layers|mtp)\.(\d+)\.(.+)")


def _split(key: str, args: ModelArgs) -> tuple[str, str]:
    """turnout key -> (HF prefix 'model.layers.{n}.', key inside the block); TOP keys -> ('', key)."""
    m = _BLOCK_KEY.fullmatch(key)
    if not m:
        return "", key
    n = int(m.group(2)) + (args.n_layers if m.group(1) == "mtp" else 0)
    return f"model.layers.{n}.", m.group(3)


def hf_key(key: str, args: ModelArgs) -> str:
    """HF name of a (non-expert) turnout key."""
    prefix, rest = _split(key, args)
    table = BLOCK if prefix else TOP
    if rest not in table:
        raise KeyError(f"no HF name for turnout key {key!r}")
    return prefix + table[rest]


def to_hf_state_dict(sd: Mapping[str, torch.Tensor], args: ModelArgs) -> dict[str, torch.Tensor]:
    """turnout state dict -> HF on-disk state dict (per-expert keys, MTP copies; lm_head dropped when tied).

    Values may be views of `sd`'s tensors; clone before writing them where shared storage matters.
    """
    out = {}
    I = args.moe_inter_dim
    for key, t in sd.items():
        prefix, rest = _split(key, args)
        if rest == "ffn.experts.w13":
            for e in range(t.shape[0]):
                out[f"{prefix}mlp.experts.{e}.gate_proj.weight"] = t[e, :I]
                out[f"{prefix}mlp.experts.{e}.up_proj.weight"] = t[e, I:]
        elif rest == "ffn.experts.w2":
            for e in range(t.shape[0]):
                out[f"{prefix}mlp.experts.{e}.down_proj.weight"] = t[e]
        elif key == "head.weight" and args.tie_embeddings:
            continue
        else:
            out[hf_key(key, args)] = t
    for k in range(args.mtp_depth):
        prefix = f"model.layers.{args.n_layers + k}."
        out[prefix + "embed_tokens.weight"] = sd["embed.weight"]
        out[prefix + "shared_head.head.weight"] = sd["embed.weight" if args.tie_embeddings else "head.weight"]
    return out


def _shape(src, key: str) -> tuple[int, ...]:
    return tuple(src.shape(key)) if hasattr(src, "shape") and callable(src.shape) else tuple(src[key].shape)


def from_hf_state_dict(src: Mapping[str, torch.Tensor], args: ModelArgs,
                       shapes: Mapping[str, tuple[int, ...]] | None = None) -> dict[str, torch.Tensor]:
    """HF state dict (on-disk per-expert or in-memory fused experts) -> turnout state dict.

    `shapes` maps each turnout key to its expected shape (default: those of `Transformer(args)`). `src` needs
    `keys()` and `[key]`; a `shape(key)` method, when present, lets shapes be checked before reading. Every
    missing, mis-shaped or unexpected tensor raises CheckpointError naming the key.
    """
    if shapes is None:
        shapes = expected_shapes(args)
    available = set(src.keys())
    used: set[str] = set()

    def take(hf: str, shape: tuple[int, ...], what: str) -> torch.Tensor:
        if hf not in available:
            raise CheckpointError(f"missing tensor {hf!r} (for {what})")
        got = _shape(src, hf)
        if got != tuple(shape):
            raise CheckpointError(f"tensor {hf!r} has shape {list(got)}, expected {list(shape)} (for {what})")
        used.add(hf)
        return src[hf]

    out = {}
    I, E = args.moe_inter_dim, args.n_routed_experts
    for key, shape in shapes.items():
        prefix, rest = _split(key, args)
        if rest == "ffn.experts.w13":
            fused = prefix + "mlp.experts.gate_up_proj"
            if fused in available:
                out[key] = take(fused, shape, key)
            else:
                dim = shape[2]
                out[key] = torch.stack([torch.cat([
                    take(f"{prefix}mlp.experts.{e}.gate_proj.weight", (I, dim), key),
                    take(f"{prefix}mlp.experts.{e}.up_proj.weight", (I, dim), key)]) for e in range(E)])
        elif rest == "ffn.experts.w2":
            fused = prefix + "mlp.experts.down_proj"
            if fused in available:
                out[key] = take(fused, shape, key)
            else:
                out[key] = torch.stack([take(f"{prefix}mlp.experts.{e}.down_proj.weight", shape[1:], key)
                                        for e in range(E)])
        elif key == "head.weight" and args.tie_embeddings:
            continue  # filled from embed.weight below; an lm_head on disk is accepted and ignored
        else:
            out[key] = take(hf_key(key, args), shape, key)
    if args.tie_embeddings:
        out["head.weight"] = out["embed.weight"]
        used.add("lm_head.weight")
    for k in range(args.mtp_depth):
        used.update(f"model.layers.{args.n_layers + k}.{c}" for c in MTP_COPIES)
    unexpected = sorted(available - used)
    if unexpected:
        more = f" and {len(unexpected) - 5} more" if len(unexpected) > 5 else ""
        raise CheckpointError(f"unexpected tensor(s) {', '.join(map(repr, unexpected[:5]))}{more}")
    return out


def expected_shapes(args: ModelArgs) -> dict[str, tuple[int, ...]]:
    """turnout state-dict keys and shapes of `Transformer(args)`, built on the meta device (no memory)."""
    from .transformer import Transformer

    with torch.device("meta"):
        model = Transformer(args)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}
