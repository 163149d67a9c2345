"""ModelArgs: the flat description of a DeepSeek-V3-architecture model, its presets and its checks.

Field names follow DeepSeek's official inference code (`inference/model.py`); `to_hf_config_dict` /
`from_hf_config_dict` map them one-to-one to HF `DeepseekV3Config` (`config.json`), see hf_config.py.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

EXPERTS_IMPLS = ("grouped", "loop")
ATTN_IMPLS = ("sdpa", "eager", "blocked")
LOSS_IMPLS = ("fused", "plain")
NORM_IMPLS = ("fused", "explicit")
ROPE_TYPES = ("default", "yarn")
WEIGHT_LAYOUTS = ("out_in", "in_out")
#: fields that choose kernels or memory layouts; they never change what the model computes
KERNEL_FIELDS = ("experts_impl", "attn_impl", "loss_impl", "norm_impl", "weight_layout")


@dataclass
class ModelArgs:
    """Architecture, training coefficients and kernel choices of one model (defaults: the `tiny` preset)."""

    # shape
    vocab_size: int = 4096
    dim: int = 256
    inter_dim: int = 1024  # dense MLP width (layers < n_dense_layers)
    moe_inter_dim: int = 256  # per routed expert; shared experts are moe_inter_dim * n_shared_experts wide
    n_layers: int = 4  # main decoder blocks; MTP blocks come on top
    n_dense_layers: int = 1  # HF first_k_dense_replace
    n_heads: int = 8
    norm_eps: float = 1e-6  # attn_norm / ffn_norm / final norm; q_norm and kv_norm are fixed at 1e-6 as in HF
    tie_embeddings: bool = False
    # moe (noaux_tc routing with sigmoid scores)
    n_routed_experts: int = 8
    n_shared_experts: int = 1
    n_activated_experts: int = 2
    n_expert_groups: int = 1
    n_limited_groups: int = 1
    route_scale: float = 1.0
    norm_topk_prob: bool = True
    # mla
    q_lora_rank: int | None = 128  # None: a single wq [n_heads * qk_head_dim, dim]
    kv_lora_rank: int = 64
    qk_nope_head_dim: int = 32
    qk_rope_head_dim: int = 16
    v_head_dim: int = 32
    # rope / yarn (HF rope_parameters)
    max_seq_len: int = 4096  # HF max_position_embeddings
    rope_theta: float = 10000.0
    rope_type: str = "default"  # "default" | "yarn"
    rope_factor: float = 1.0
    original_seq_len: int = 4096  # yarn original_max_position_embeddings
    beta_fast: float = 32.0
    beta_slow: float = 1.0
    mscale: float | None = None
    mscale_all_dim: float | None = None
    rope_attention_factor: float | None = None  # yarn cos/sin multiplier; None: derived from mscale as HF does
    # tokens and init
    bos_token_id: int | None = 0
    eos_token_id: int | list[int] | None = 1
    pad_token_id: int | None = None
    init_std: float = 0.02  # HF initializer_range (the paper trained with 0.006)
    # training coefficients
    mtp_depth: int = 0  # D, HF num_nextn_predict_layers (DeepSeek-V3 uses 1)
    mtp_loss_weight: float = 0.3  # lambda
    aux_loss_alpha: float = 0.0  # sequence-wise balance loss alpha; 0 turns it off
    bias_update_speed: float = 0.001  # gamma of the aux-loss-free bias update; 0 disables it
    ignore_index: int = -100  # target value that carries no loss
    # kernel choices
    experts_impl: str = "grouped"  # "grouped": torch._grouped_mm over expert-sorted tokens; "loop": loop over experts
    # training path: "sdpa" (F.scaled_dot_product_attention) | "eager" (explicit softmax) | "blocked" (causal query
    # blocks with written-out backward, attention.py: fastest on CPU for short sequences)
    attn_impl: str = "sdpa"
    loss_impl: str = "fused"  # "fused": head matmul + cross-entropy in row chunks, no logits tensor | "plain"
    norm_impl: str = "fused"  # RMSNorm: "fused" (F.rms_norm) | "explicit" (written-out fp32 backward; faster on CPU)
    # storage of matmul weights: "out_in" row-major [out, in] (nn.Linear's) | "in_out": the same [out, in] tensors
    # stored input-major, which CPU BLAS reads faster for few-row (decode) matmuls
    weight_layout: str = "out_in"

    @property
    def qk_head_dim(self) -> int:
        return self.qk_nope_head_dim + self.qk_rope_head_dim

    @property
    def n_moe_layers(self) -> int:
        """MoE blocks in the main stack plus MoE MTP blocks (their layer index is n_layers + k)."""
        return max(self.n_layers - self.n_dense_layers, 0) + self.mtp_depth

    def validate(self) -> list[str]:
        """Every problem with these args, each naming its field; empty when the model can be built."""
        p = []
        for f in ("vocab_size", "dim", "inter_dim", "moe_inter_dim", "n_layers", "n_heads", "n_routed_experts",
                  "n_activated_experts", "n_expert_groups", "n_limited_groups", "kv_lora_rank", "qk_nope_head_dim",
                  "qk_rope_head_dim", "v_head_dim", "max_seq_len", "original_seq_len"):
            v = getattr(self, f)
            if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
                p.append(f"{f}={v!r} must be a positive int")
        for f in ("n_dense_layers", "n_shared_experts", "mtp_depth"):
            v = getattr(self, f)
            if not isinstance(v, int) or isinstance(v, bool) or v < 0:
                p.append(f"{f}={v!r} must be an int >= 0")
        for f in ("norm_eps", "rope_theta", "init_std"):
            if not getattr(self, f) > 0:
                p.append(f"{f}={getattr(self, f)!r} must be > 0")
        for f in ("mtp_loss_weight", "aux_loss_alpha", "bias_update_speed", "route_scale"):
            if not getattr(self, f) >= 0:
                p.append(f"{f}={getattr(self, f)!r} must be >= 0")
        if p:  # the checks below assume positive ints
            return p
        if self.q_lora_rank is not None and (not isinstance(self.q_lora_rank, int) or self.q_lora_rank <= 0):
            p.append(f"q_lora_rank={self.q_lora_rank!r} must be None or a positive int")
        if self.qk_rope_head_dim % 2:
            p.append(f"qk_rope_head_dim={self.qk_rope_head_dim} must be even (RoPE rotates adjacent pairs)")
        if self.n_dense_layers > self.n_layers:
            p.append(f"n_dense_layers={self.n_dense_layers} exceeds n_layers={self.n_layers}")
        E, G = self.n_routed_experts, self.n_expert_groups
        if E % G:
            p.append(f"n_routed_experts={E} is not divisible by n_expert_groups={G}")
        elif E // G < 2:
            p.append(f"n_expert_groups={G} leaves {E // G} expert per group; group scoring sums the top-2 of each group")
        if self.n_limited_groups > G:
            p.append(f"n_limited_groups={self.n_limited_groups} exceeds n_expert_groups={G}")
        elif E % G == 0 and self.n_activated_experts > self.n_limited_groups * (E // G):
            p.append(f"n_activated_experts={self.n_activated_experts} exceeds the {self.n_limited_groups * (E // G)} "
                     f"experts in n_limited_groups={self.n_limited_groups} groups")
        if self.rope_type not in ROPE_TYPES:
            p.append(f"rope_type={self.rope_type!r} is not one of {ROPE_TYPES}")
        elif self.rope_type == "yarn" and not self.rope_factor >= 1:
            p.append(f"rope_factor={self.rope_factor!r} must be >= 1 for yarn")
        if self.experts_impl not in EXPERTS_IMPLS:
            p.append(f"experts_impl={self.experts_impl!r} is not one of {EXPERTS_IMPLS}")
        if self.attn_impl not in ATTN_IMPLS:
            p.append(f"attn_impl={self.attn_impl!r} is not one of {ATTN_IMPLS}")
        if self.loss_impl not in LOSS_IMPLS:
            p.append(f"loss_impl={self.loss_impl!r} is not one of {LOSS_IMPLS}")
        if self.norm_impl not in NORM_IMPLS:
            p.append(f"norm_impl={self.norm_impl!r} is not one of {NORM_IMPLS}")
        if self.weight_layout not in WEIGHT_LAYOUTS:
            p.append(f"weight_layout={self.weight_layout!r} is not one of {WEIGHT_LAYOUTS}")
        return p

    def check(self) -> ModelArgs:
        """Raise ValueError listing every problem; return self when there is none."""
        problems = self.validate()
        if problems:
            raise ValueError("invalid ModelArgs: " + "; ".join(problems))
        return self

    def replace(self, **overrides) -> ModelArgs:
        """A copy with some fields changed; an unknown field raises ValueError naming it."""
        unknown = sorted(set(overrides) - {f.name for f in dataclasses.fields(self)})
        if unknown:
            raise ValueError(f"unknown ModelArgs field(s): {', '.join(unknown)}")
        return dataclasses.replace(self, **overrides)

    @classmethod
    def preset(cls, name: str, **overrides) -> ModelArgs:
        """A named preset (see PRESETS) with overrides applied, checked; bad names raise ValueError."""
        if name not in PRESETS:
            raise ValueError(f"unknown preset {name!r}; choose from {', '.join(PRESETS)}")
        return cls().replace(**PRESETS[name]).replace(**overrides).check()

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> ModelArgs:
        return cls().replace(**d)

    def to_hf_config_dict(self) -> dict:
        """HF DeepseekV3Config fields (a `config.json` body) for these args."""
        from .hf_config import to_hf_config_dict

        return to_hf_config_dict(self)

    @classmethod
    def from_hf_config_dict(cls, d: dict) -> ModelArgs:
        """Args from an HF `config.json` body; unsupported architectures or options raise ValueError."""
        from .hf_config import from_hf_config_dict

        return from_hf_config_dict(d)


# Presets are overrides of the ModelArgs defaults (which are `tiny`).
PRESETS: dict[str, dict] = {
    # ~1M params: unit tests; grouped routing (4 groups of 2, keep 2) and MTP switched on
    "debug": dict(vocab_size=1024, dim=128, inter_dim=384, moe_inter_dim=64, n_layers=3, n_dense_layers=1,
                  n_heads=4, n_routed_experts=8, n_shared_experts=1, n_activated_experts=2, n_expert_groups=4,
                  n_limited_groups=2, route_scale=2.5, q_lora_rank=64, kv_lora_rank=32, qk_nope_head_dim=16,
                  qk_rope_head_dim=8, v_head_dim=16, max_seq_len=512, mtp_depth=1),
    # 9.0M params: CPU demo default; the shape of local_probe.md's HF model (mtp_depth=1 adds a 2.1M MTP module)
    "tiny": dict(),
    # ~180M params: GPU runs
    "small": dict(vocab_size=32768, dim=768, inter_dim=3072, moe_inter_dim=384, n_layers=8, n_dense_layers=1,
                  n_heads=12, n_routed_experts=16, n_shared_experts=1, n_activated_experts=2, n_expert_groups=4,
                  n_limited_groups=2, route_scale=2.5, q_lora_rank=384, kv_lora_rank=256, qk_nope_head_dim=64,
                  qk_rope_head_dim=32, v_head_dim=64, max_seq_len=4096),
    # the released DeepSeek-V3 / R1 config.json
    "v3-671b": dict(vocab_size=129280, dim=7168, inter_dim=18432, moe_inter_dim=2048, n_layers=61, n_dense_layers=3,
                    n_heads=128, n_routed_experts=256, n_shared_experts=1, n_activated_experts=8, n_expert_groups=8,
                    n_limited_groups=4, route_scale=2.5, q_lora_rank=1536, kv_lora_rank=512, qk_nope_head_dim=128,
                    qk_rope_head_dim=64, v_head_dim=128, max_seq_len=163840, rope_type="yarn", rope_factor=40.0,
                    original_seq_len=4096, beta_fast=32.0, beta_slow=1.0, mscale=1.0, mscale_all_dim=1.0,
                    mtp_depth=1, aux_loss_alpha=0.0001),
}
