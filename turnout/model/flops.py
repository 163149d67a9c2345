"""Analytic parameter counts and training FLOPs per token (for MFU), from ModelArgs alone.

Counts follow DeepSeek's convention: the headline total (671B for V3) excludes the MTP module; the active count
(37B) includes the embedding and head, the shared experts and n_activated_experts routed experts per MoE layer.
Router biases and other buffers are not parameters.
"""

from __future__ import annotations

from .args import ModelArgs


def _attn_params(a: ModelArgs) -> int:
    qk = a.qk_head_dim
    q = a.dim * a.n_heads * qk if a.q_lora_rank is None else a.dim * a.q_lora_rank + a.q_lora_rank + a.q_lora_rank * a.n_heads * qk
    kv = a.dim * (a.kv_lora_rank + a.qk_rope_head_dim) + a.kv_lora_rank + a.kv_lora_rank * a.n_heads * (a.qk_nope_head_dim + a.v_head_dim)
    return q + kv + a.n_heads * a.v_head_dim * a.dim


def _expert_params(a: ModelArgs) -> int:
    return 3 * a.dim * a.moe_inter_dim


def _block_params(a: ModelArgs, moe: bool) -> tuple[int, int]:
    """(total, active) of one decoder block."""
    base = _attn_params(a) + 2 * a.dim
    if not moe:
        n = base + 3 * a.dim * a.inter_dim
        return n, n
    shared = a.n_shared_experts * _expert_params(a) + a.n_routed_experts * a.dim  # shared experts + gate
    return (base + shared + a.n_routed_experts * _expert_params(a),
            base + shared + a.n_activated_experts * _expert_params(a))


def mtp_params(args: ModelArgs) -> int:
    """Parameters of the MTP modules (not counting the embedding and head they share with the main model)."""
    blk, _ = _block_params(args, moe=True)
    return args.mtp_depth * (blk + 3 * args.dim + 2 * args.dim * args.dim)


def param_counts(args: ModelArgs, mtp: bool = False) -> tuple[int, int]:
    """(total, active per token) parameters; mtp=True adds the MTP modules (what `Transformer(args)` holds)."""
    a = args
    total = active = a.vocab_size * a.dim * (1 if a.tie_embeddings else 2) + a.dim  # embed, head, final norm
    for i in range(a.n_layers):
        t, act = _block_params(a, moe=i >= a.n_dense_layers)
        total, active = total + t, active + act
    if mtp and a.mtp_depth:
        n = mtp_params(a)
        blk_t, blk_a = _block_params(a, moe=True)
        total, active = total + n, active + n - a.mtp_depth * (blk_t - blk_a)
    return total, active


def _matmul_params(a: ModelArgs, moe: bool) -> int:
    """Weights a token multiplies through in one block (active experts only, no norms)."""
    attn = _attn_params(a) - a.kv_lora_rank - (a.q_lora_rank or 0)
    if not moe:
        return attn + 3 * a.dim * a.inter_dim
    return attn + (a.n_shared_experts + a.n_activated_experts) * _expert_params(a) + a.n_routed_experts * a.dim


def flops_per_token(args: ModelArgs, seq_len: int, training: bool = True, causal: bool = True,
                    mtp: bool = True) -> float:
    """FLOPs per token: 2 * (active matmul weights, head included, embedding lookup excluded) plus attention
    (2 * n_heads * (qk_head_dim + v_head_dim) per key per layer; causal averages (T+1)/2 keys per query),
    times 3 for training (forward + backward). mtp=True adds the MTP modules (block, eh_proj and another head).
    """
    a = args
    n = a.dim * a.vocab_size + sum(_matmul_params(a, i >= a.n_dense_layers) for i in range(a.n_layers))
    n_attn_layers = a.n_layers
    if mtp and a.mtp_depth:
        n += a.mtp_depth * (_matmul_params(a, True) + 2 * a.dim * a.dim + a.dim * a.vocab_size)
        n_attn_layers += a.mtp_depth
    keys = (seq_len + 1) / 2 if causal else seq_len
    attn = 2 * a.n_heads * (a.qk_head_dim + a.v_head_dim) * keys * n_attn_layers
    fwd = 2 * n + attn
    return 3 * fwd if training else fwd
