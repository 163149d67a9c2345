"""ModelArgs: presets, validation messages, HF config mapping."""

import pytest

from turnout.model import PRESETS, ModelArgs


def test_presets_listed_and_valid():
    assert list(PRESETS) == ["debug", "tiny", "small", "v3-671b"]
    for name in PRESETS:
        assert ModelArgs.preset(name).validate() == []


def test_tiny_preset_is_the_probe_shape():
    a = ModelArgs.preset("tiny")
    assert (a.dim, a.n_layers, a.n_heads, a.n_routed_experts, a.n_shared_experts, a.n_activated_experts) == (256, 4, 8, 8, 1, 2)
    assert (a.kv_lora_rank, a.q_lora_rank, a.qk_rope_head_dim, a.qk_nope_head_dim, a.v_head_dim) == (64, 128, 16, 32, 32)
    assert (a.vocab_size, a.n_dense_layers, a.inter_dim, a.moe_inter_dim) == (4096, 1, 1024, 256)
    assert ModelArgs() == a


def test_preset_errors_name_the_problem():
    with pytest.raises(ValueError, match="unknown preset 'huge'"):
        ModelArgs.preset("huge")
    with pytest.raises(ValueError, match="n_layer"):
        ModelArgs.preset("tiny", n_layer=3)
    with pytest.raises(ValueError, match="n_expert_groups"):
        ModelArgs.preset("tiny", n_expert_groups=3)


@pytest.mark.parametrize("overrides, field", [
    (dict(n_routed_experts=8, n_expert_groups=3), "n_expert_groups"),
    (dict(n_expert_groups=8, n_limited_groups=4), "expert per group"),  # HF's default grouping on 8 experts
    (dict(n_expert_groups=2, n_limited_groups=3), "n_limited_groups"),
    (dict(n_expert_groups=4, n_limited_groups=1, n_activated_experts=3), "n_activated_experts"),
    (dict(qk_rope_head_dim=15), "qk_rope_head_dim"),
    (dict(n_dense_layers=5), "n_dense_layers"),
    (dict(q_lora_rank=0), "q_lora_rank"),
    (dict(dim=0), "dim"),
    (dict(rope_type="llama3"), "rope_type"),
    (dict(experts_impl="magic"), "experts_impl"),
    (dict(attn_impl="flash"), "attn_impl"),
    (dict(mtp_loss_weight=-1.0), "mtp_loss_weight"),
])
def test_validate_names_field(overrides, field):
    problems = ModelArgs().replace(**overrides).validate()
    assert problems and any(field in p for p in problems), problems


@pytest.mark.parametrize("name", PRESETS)
def test_hf_config_round_trip(name):
    a = ModelArgs.preset(name, bias_update_speed=0.002, experts_impl="loop")
    d = a.to_hf_config_dict()
    assert d["model_type"] == "deepseek_v3" and d["architectures"] == ["DeepseekV3ForCausalLM"]
    assert ModelArgs.from_hf_config_dict(d) == a


def test_hf_config_is_accepted_by_transformers():
    from transformers import DeepseekV3Config

    a = ModelArgs.preset("v3-671b")
    c = DeepseekV3Config(**a.to_hf_config_dict())
    assert (c.hidden_size, c.n_group, c.topk_group, c.num_mtp_layers, c.first_k_dense_replace) == (7168, 8, 4, 1, 3)
    assert c.rope_parameters["rope_type"] == "yarn" and c.rope_parameters["factor"] == 40.0
    assert c.aux_loss_alpha == a.aux_loss_alpha
    # and back from what transformers writes
    assert ModelArgs.from_hf_config_dict(c.to_dict()) == a


def test_hf_config_legacy_and_aliases():
    base = {k: v for k, v in ModelArgs.preset("tiny").to_hf_config_dict().items() if k != "rope_parameters"}
    legacy = dict(base, rope_theta=5000.0, rope_scaling={"type": "yarn", "factor": 4.0,
                                                         "original_max_position_embeddings": 1024})
    a = ModelArgs.from_hf_config_dict(legacy)
    assert (a.rope_type, a.rope_theta, a.rope_factor, a.original_seq_len) == ("yarn", 5000.0, 4.0, 1024)
    assert ModelArgs.from_hf_config_dict(dict(base, rope_theta=20000.0)).rope_type == "default"
    alias = {k: v for k, v in base.items() if k != "num_nextn_predict_layers"}
    assert ModelArgs.from_hf_config_dict(dict(alias, num_mtp_layers=2)).mtp_depth == 2
    assert ModelArgs.from_hf_config_dict(dict(base, tie_word_embeddings=True)).tie_embeddings


@pytest.mark.parametrize("change, match", [
    (dict(model_type="llama"), "model_type='llama'"),
    (dict(architectures=["LlamaForCausalLM"]), "LlamaForCausalLM"),
    (dict(hidden_act="gelu"), "hidden_act"),
    (dict(scoring_func="softmax"), "scoring_func"),
    (dict(num_key_value_heads=2), "num_key_value_heads"),
    (dict(rope_parameters={"rope_type": "llama3", "rope_theta": 1e4}), "rope_type='llama3'"),
])
def test_hf_config_unsupported_is_named(change, match):
    d = dict(ModelArgs().to_hf_config_dict(), **change)
    with pytest.raises(ValueError, match=match):
        ModelArgs.from_hf_config_dict(d)
