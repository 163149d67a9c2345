"""HF interop: logits parity with transformers' DeepseekV3ForCausalLM in both directions, and checkpoint errors."""

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from turnout.errors import CheckpointError
from turnout.model import (ModelArgs, Transformer, from_hf_state_dict, load_pretrained,
                           save_pretrained, to_hf_state_dict)

from .oracle import hf_model, mtp_logits, randomize_, rel_err, small_args

transformers = pytest.importorskip("transformers")

CONFIGS = {
    # q_lora, 4 groups keep 2, one dense layer, default RoPE
    "base": dict(),
    # single wq, YaRN with mscale_all_dim (softmax scale changes), every layer MoE
    "no_qlora_yarn": dict(q_lora_rank=None, n_dense_layers=0, rope_type="yarn", rope_factor=4.0,
                          original_seq_len=64, mscale=1.0, mscale_all_dim=1.0, max_seq_len=256),
    # tied embeddings, 2 dense layers, YaRN with mscale only (cos/sin scaled), 2 groups keep 1, top-3
    "tied_dense2_yarn": dict(tie_embeddings=True, n_dense_layers=2, rope_type="yarn", rope_factor=8.0,
                             original_seq_len=32, mscale=0.707, n_expert_groups=2, n_limited_groups=1,
                             n_activated_experts=3, rope_theta=5000.0),
    # no grouping, no top-k normalisation, two shared experts
    "flat": dict(n_expert_groups=1, n_limited_groups=1, norm_topk_prob=False, route_scale=1.0, n_shared_experts=2),
}


def _tokens(args, B=2, T=40):
    return torch.randint(0, args.vocab_size, (B, T), generator=torch.Generator().manual_seed(7))


def _hf_from_pretrained(path):
    from transformers import DeepseekV3ForCausalLM

    model, info = DeepseekV3ForCausalLM.from_pretrained(path, output_loading_info=True, dtype=torch.float32)
    return model.eval(), info


@pytest.mark.parametrize("name", CONFIGS)
def test_hf_to_turnout_logits(name, tmp_path):
    args = small_args(**CONFIGS[name])
    hf = hf_model(args)
    randomize_(hf, seed=1)
    hf.save_pretrained(tmp_path)
    model = load_pretrained(tmp_path).eval()
    assert model.args == args
    tokens = _tokens(args)
    with torch.no_grad():
        ref, out = hf(tokens).logits, model(tokens)
        assert rel_err(out, ref) <= 1e-5
        # the router bias is large enough to change routing: zeroing it moves the logits well past tolerance
        for m in model.moe_layers():
            m.gate.bias.zero_()
        assert rel_err(model(tokens), ref) > 1e-3


@pytest.mark.parametrize("name", CONFIGS)
def test_turnout_to_hf_logits(name, tmp_path):
    args = small_args(**CONFIGS[name])
    model = Transformer(args).eval()
    randomize_(model, seed=2)
    save_pretrained(model, tmp_path)
    hf, info = _hf_from_pretrained(tmp_path)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"], info
    tokens = _tokens(args)
    with torch.no_grad():
        assert rel_err(model(tokens), hf(tokens).logits) <= 1e-5


def test_mtp_layers_saved_under_hf_names_and_round_trip(tmp_path):
    args = small_args(mtp_depth=2)
    model = Transformer(args)
    randomize_(model, seed=3)
    save_pretrained(model, tmp_path)
    keys = set(load_file(tmp_path / "model.safetensors"))
    L = args.n_layers
    for k in range(2):
        p = f"model.layers.{L + k}."
        for suffix in ("enorm.weight", "hnorm.weight", "eh_proj.weight", "shared_head.norm.weight",
                       "shared_head.head.weight", "embed_tokens.weight", "input_layernorm.weight",
                       "self_attn.kv_b_proj.weight", "mlp.gate.e_score_correction_bias",
                       "mlp.experts.7.down_proj.weight", "mlp.shared_experts.up_proj.weight"):
            assert p + suffix in keys
    assert json.loads((tmp_path / "config.json").read_text())["num_nextn_predict_layers"] == 2
    assert load_pretrained(tmp_path, mtp_depth=1).args.mtp_depth == 1  # dropping MTP modules is explicit
    loaded = load_pretrained(tmp_path)
    for k, v in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k
    tokens = _tokens(args)
    model.train(), loaded.train()
    a, b = model(tokens[:, :-1], targets=tokens[:, 1:]), loaded(tokens[:, :-1], targets=tokens[:, 1:])
    assert torch.equal(a.loss, b.loss) and a.mtp > 0

    # HF ignores MTP layers only at V3's index 61: here it must report exactly the MTP keys as unexpected
    hf, info = _hf_from_pretrained(tmp_path)
    assert not info["missing_keys"] and not info["mismatched_keys"]
    assert info["unexpected_keys"] and all(k.startswith((f"model.layers.{L}.", f"model.layers.{L + 1}."))
                                           for k in info["unexpected_keys"])
    with torch.no_grad():
        assert rel_err(model.eval()(tokens), hf(tokens).logits) <= 1e-5


def test_sharded_checkpoints_both_ways(tmp_path):
    args = small_args()
    hf = hf_model(args)
    randomize_(hf, seed=4)
    hf.save_pretrained(tmp_path / "hf", max_shard_size="200KB")
    assert (tmp_path / "hf" / "model.safetensors.index.json").exists()
    model = load_pretrained(tmp_path / "hf").eval()
    save_pretrained(model, tmp_path / "ours", max_shard_bytes=200_000)
    index = json.loads((tmp_path / "ours" / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1
    hf2, info = _hf_from_pretrained(tmp_path / "ours")
    assert not info["missing_keys"] and not info["unexpected_keys"]
    tokens = _tokens(args)
    with torch.no_grad():
        ref = hf(tokens).logits
        assert rel_err(model(tokens), ref) <= 1e-5
        assert rel_err(hf2(tokens).logits, ref) <= 1e-5


def test_fused_in_memory_expert_names_load(tmp_path):
    args = small_args()
    hf = hf_model(args)
    randomize_(hf, seed=5)
    sd = {k: v.contiguous() for k, v in hf.state_dict().items()}
    assert any(k.endswith("mlp.experts.gate_up_proj") for k in sd)
    save_file(sd, str(tmp_path / "model.safetensors"))
    (tmp_path / "config.json").write_text(json.dumps(args.to_hf_config_dict()))
    model = load_pretrained(tmp_path).eval()
    tokens = _tokens(args)
    with torch.no_grad():
        assert rel_err(model(tokens), hf(tokens).logits) <= 1e-5


def test_state_dict_conversion_round_trip():
    args = small_args(mtp_depth=1, tie_embeddings=True)
    model = Transformer(args)
    sd = model.state_dict()
    hf_sd = to_hf_state_dict(sd, args)
    assert "lm_head.weight" not in hf_sd and "model.layers.1.mlp.experts.3.up_proj.weight" in hf_sd
    back = from_hf_state_dict(hf_sd, args)
    assert set(back) == set(sd) and all(torch.equal(back[k], sd[k]) for k in sd)


def test_fp8_block_scaled_weights_are_dequantised(tmp_path):
    args = small_args()
    save_pretrained(Transformer(args), tmp_path)
    sd = load_file(tmp_path / "model.safetensors")
    key = "model.layers.1.self_attn.kv_b_proj.weight"  # [128, 32]: 1 x 1 blocks of 128
    w = sd[key]
    scale = (w.abs().amax() / 448).reshape(1, 1)
    sd[key] = (w / scale).to(torch.float8_e4m3fn)
    sd[key + "_scale_inv"] = scale
    save_file(sd, str(tmp_path / "model.safetensors"))
    model = load_pretrained(tmp_path)
    want = sd[key].float() * scale
    assert torch.equal(model.layers[1].attn.wkv_b.weight, want)
    assert not torch.equal(want, w)  # the quantisation was real


def _saved(tmp_path, **kw):
    args = small_args(**kw)
    save_pretrained(Transformer(args), tmp_path)
    return load_file(tmp_path / "model.safetensors")


def test_missing_tensor_is_named(tmp_path):
    sd = _saved(tmp_path)
    del sd["model.layers.2.mlp.experts.5.up_proj.weight"]
    save_file(sd, str(tmp_path / "model.safetensors"))
    with pytest.raises(CheckpointError, match=r"model\.layers\.2\.mlp\.experts\.5\.up_proj\.weight"):
        load_pretrained(tmp_path)


def test_misshaped_tensor_is_named(tmp_path):
    sd = _saved(tmp_path)
    sd["model.layers.0.self_attn.q_b_proj.weight"] = torch.zeros(3, 48)
    save_file(sd, str(tmp_path / "model.safetensors"))
    with pytest.raises(CheckpointError, match=r"model\.layers\.0\.self_attn\.q_b_proj\.weight.*\[3, 48\]"):
        load_pretrained(tmp_path)


def test_unexpected_tensor_is_named(tmp_path):
    sd = _saved(tmp_path)
    sd["model.layers.0.self_attn.extra.weight"] = torch.zeros(2)
    save_file(sd, str(tmp_path / "model.safetensors"))
    with pytest.raises(CheckpointError, match=r"model\.layers\.0\.self_attn\.extra\.weight"):
        load_pretrained(tmp_path)


def test_unknown_model_type_is_named(tmp_path):
    _saved(tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg["model_type"] = "llama"
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="model_type='llama'"):
        load_pretrained(tmp_path)


def test_missing_files_raise(tmp_path):
    with pytest.raises(CheckpointError, match="config.json"):
        load_pretrained(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps(small_args().to_hf_config_dict()))
    with pytest.raises(CheckpointError, match="no safetensors"):
        load_pretrained(tmp_path)


def test_save_replaces_atomically(tmp_path):
    a, b = Transformer(small_args()), Transformer(small_args(n_layers=2))
    save_pretrained(a, tmp_path / "ckpt")
    save_pretrained(b, tmp_path / "ckpt")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]  # no temp or old directories left
    assert load_pretrained(tmp_path / "ckpt").args.n_layers == 2


def test_overrides_and_dtype_on_load(tmp_path):
    save_pretrained(Transformer(small_args()), tmp_path)
    model = load_pretrained(tmp_path, dtype=torch.bfloat16, experts_impl="loop")
    assert model.args.experts_impl == "loop" and model.embed.weight.dtype == torch.bfloat16
    with pytest.raises(ValueError, match="no_such_field"):
        load_pretrained(tmp_path, no_such_field=1)


def test_v3_config_maps_to_preset():
    cfg = ModelArgs.preset("v3-671b").to_hf_config_dict()
    # the released config.json spells RoPE the legacy way
    legacy = {k: v for k, v in cfg.items() if k not in ("rope_parameters", "turnout", "aux_loss_alpha")}
    legacy.update(rope_theta=10000, rope_scaling={"type": "yarn", "factor": 40, "beta_fast": 32, "beta_slow": 1,
                                                  "mscale": 1.0, "mscale_all_dim": 1.0,
                                                  "original_max_position_embeddings": 4096})
    got = ModelArgs.from_hf_config_dict(legacy)
    assert got == ModelArgs.preset("v3-671b", aux_loss_alpha=0.0)


def test_mtp_matches_hf_mtp_layer_at_v3_depth(tmp_path):
    """At V3's depth (61 layers, MTP at index 61) HF ignores the MTP keys when loading the main model and its
    MtpModel loads them from our files (shared_head.norm -> post_norm etc.); depth-1 logits must agree.
    n_dense_layers=0 because HF builds its MTP block with layer index 0 (dense if first_k_dense_replace > 0)."""
    from transformers.modeling_layers import MtpModel

    args = small_args(mtp_depth=1, n_layers=61, n_dense_layers=0)
    model = Transformer(args).eval()
    randomize_(model, seed=6)
    save_pretrained(model, tmp_path)
    hf, info = _hf_from_pretrained(tmp_path)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    mtp = MtpModel.from_pretrained(hf).eval()
    x = _tokens(args, T=20)
    with torch.no_grad():
        h = hf.model(x).last_hidden_state
        hf_logits = mtp._project_to_logits(mtp.forward_layer(0, h[:, :-1], torch.arange(1, 20)[None], None,
                                                             input_ids=x[:, 1:]))
        ours = mtp_logits(model, x)[:, :-1]
        assert rel_err(ours, hf_logits) <= 2e-5


def _hf_default_style(tmp_path, seed=8):
    """A tiny DeepseekV3ForCausalLM built from transformers' own config defaults (num_nextn_predict_layers = 1)
    and saved by transformers: config.json declares one MTP layer, the safetensors hold none."""
    from transformers import DeepseekV3Config, DeepseekV3ForCausalLM

    cfg = DeepseekV3Config(vocab_size=512, hidden_size=64, intermediate_size=192, moe_intermediate_size=32,
                           num_hidden_layers=3, first_k_dense_replace=1, num_attention_heads=4,
                           num_key_value_heads=4, n_routed_experts=8, num_experts_per_tok=2, n_group=4, topk_group=2,
                           q_lora_rank=48, kv_lora_rank=32, qk_nope_head_dim=16, qk_rope_head_dim=8, v_head_dim=16,
                           max_position_embeddings=256)
    torch.manual_seed(0)
    hf = DeepseekV3ForCausalLM(cfg).eval()
    assert sum(p.numel() for p in hf.parameters()) < 10_000_000
    randomize_(hf, seed=seed)
    hf.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["num_nextn_predict_layers"] == 1
    assert not any(k.startswith("model.layers.3.") for k in load_file(tmp_path / "model.safetensors"))
    return hf


def test_hf_saved_default_config_loads_without_mtp(tmp_path, caplog):
    hf = _hf_default_style(tmp_path)
    with caplog.at_level("WARNING", logger="turnout.model.hf"):
        model = load_pretrained(tmp_path).eval()
    assert model.args.mtp_depth == 0 and len(model.mtp) == 0
    notes = [r.getMessage() for r in caplog.records if r.name == "turnout.model.hf"]
    assert len(notes) == 1 and "\n" not in notes[0] and "mtp_depth 0" in notes[0], notes
    tokens = _tokens(model.args)
    with torch.no_grad():
        assert rel_err(model(tokens), hf(tokens).logits) <= 1e-5


def test_declared_mtp_that_is_partly_stored_or_forced_is_refused(tmp_path):
    _hf_default_style(tmp_path)
    # asking for the declared module explicitly does not silently drop it
    with pytest.raises(CheckpointError, match=r"missing tensor 'model\.layers\.3\."):
        load_pretrained(tmp_path, mtp_depth=1)
    # a module with some of its tensors on disk is a damaged checkpoint, not an absent one
    args = small_args(mtp_depth=1)
    save_pretrained(Transformer(args), tmp_path / "mtp")
    sd = load_file(tmp_path / "mtp" / "model.safetensors")
    del sd["model.layers.3.eh_proj.weight"]
    save_file(sd, str(tmp_path / "mtp" / "model.safetensors"))
    with pytest.raises(CheckpointError, match=r"model\.layers\.3\.eh_proj\.weight"):
        load_pretrained(tmp_path / "mtp")
