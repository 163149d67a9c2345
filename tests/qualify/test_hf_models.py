"""`turnout qualify --model hf:DIR`: transformers causal LMs of several architectures, each with its own traced op
set, generic block parity over its decoder layers, training parity, and a verdict that depends on the model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

transformers = pytest.importorskip("transformers")

from turnout.cli.main import main  # noqa: E402
from turnout.config import load_config  # noqa: E402
from turnout.qualify.run import qualify  # noqa: E402
from turnout.qualify.workload import Settings  # noqa: E402
from turnout.train.fingerprint import differences  # noqa: E402

# vocab 1024: the debug preset's, so the tokenised corpus is shared with the other qualification tests
COMMON = dict(vocab_size=1024, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2, max_position_embeddings=128)
ARCHS = {
    "llama": ("LlamaConfig", "LlamaForCausalLM", {}),
    "qwen3": ("Qwen3Config", "Qwen3ForCausalLM", {"head_dim": 16}),
    "mixtral": ("MixtralConfig", "MixtralForCausalLM", {"num_local_experts": 4, "num_experts_per_tok": 2}),
    "gemma": ("GemmaConfig", "GemmaForCausalLM", {"head_dim": 16}),  # gelu_pytorch_tanh MLP
    "deepseek_v3": ("DeepseekV3Config", "DeepseekV3ForCausalLM", {
        "num_key_value_heads": 4, "moe_intermediate_size": 32, "first_k_dense_replace": 1, "n_routed_experts": 4,
        "num_experts_per_tok": 2, "n_group": 1, "topk_group": 1, "q_lora_rank": 32, "kv_lora_rank": 16,
        "qk_rope_head_dim": 8, "qk_nope_head_dim": 8, "v_head_dim": 8}),
}
FAST = dict(steps=8, sdc_steps=3, sdc_flips=6, collectives=False)


@pytest.fixture(scope="session")
def hf_dirs(tmp_path_factory) -> dict[str, Path]:
    """One config-only folder (random init) per architecture."""
    root = tmp_path_factory.mktemp("hf-models")
    out = {}
    for name, (cfg_cls, arch, extra) in ARCHS.items():
        cfg = getattr(transformers, cfg_cls)(**{**COMMON, **extra})
        cfg.architectures = [arch]
        cfg.save_pretrained(root / name)
        out[name] = root / name
    return out


@pytest.fixture(scope="session")
def hf_qualified(hf_dirs, golden_dir, tmp_path_factory):
    """run(arch, target) -> qualify.json dict; cached for the session."""
    cache: dict = {}

    def run(arch: str, target: str) -> dict:
        if (arch, target) not in cache:
            out = tmp_path_factory.mktemp(f"q-{arch}")
            settings = Settings(golden_dir=str(golden_dir), **FAST)
            cache[arch, target] = qualify(load_config(None, []), target, out, settings=settings, log=None,
                                          model=f"hf:{hf_dirs[arch]}")
            cache[arch, target]["out"] = out
        return cache[arch, target]

    return run


@pytest.mark.parametrize("arch", ["llama", "qwen3", "mixtral", "deepseek_v3"])
def test_cpu_is_train_ready_for_each_architecture(hf_qualified, arch):
    r = hf_qualified(arch, "cpu")
    assert r["verdict"] == "train-ready", r["reasons"]
    cov = r["covers"]
    assert cov["model"]["architecture"] == ARCHS[arch][1]
    assert cov["model"]["blocks"] == 2
    assert r["stages"]["blocks"]["evidence"]["blocks"], "block parity found the decoder layers"
    groups = {row["group"] for row in r["stages"]["blocks"]["evidence"]["layers"]}
    assert {"embed", "layers.0", "layers.1", "head"} <= groups
    assert "mm" in cov["ops"]["training"] and cov["ops"]["inference"]
    assert cov["kernels"]["attn_implementation"] == "sdpa"
    page = (r["out"] / "report.html").read_text()
    assert ARCHS[arch][1] in page and "What this verdict covers" in page
    assert json.loads((r["out"] / "qualify.json").read_text())["fingerprint"]["model"]["architecture"] == ARCHS[arch][1]


def test_moe_models_report_their_experts_kernel(hf_qualified):
    assert hf_qualified("mixtral", "cpu")["covers"]["kernels"]["experts_implementation"] == "grouped_mm"
    assert "experts_implementation" not in hf_qualified("llama", "cpu")["covers"]["kernels"]


def test_broken_attention_backward_is_inference_only(hf_qualified):
    r = hf_qualified("llama", "sim:bad-backward")
    assert r["verdict"] == "inference-only", r["reasons"]
    assert any("_scaled_dot_product_flash_attention_for_cpu_backward" in x for x in r["reasons"])


def test_a_fault_in_one_architectures_op_gives_different_verdicts(hf_qualified):
    """sim:bad-gelu breaks gelu's backward only: Gemma (GELU MLP) cannot train there, Llama (SiLU) can."""
    gemma, llama = hf_qualified("gemma", "sim:bad-gelu"), hf_qualified("llama", "sim:bad-gelu")
    assert gemma["verdict"] == "inference-only", gemma["reasons"]
    assert any("gelu_backward" in x for x in gemma["reasons"])
    assert "gelu_backward" in gemma["covers"]["ops"]["training"]
    assert llama["verdict"] == "train-ready", llama["reasons"]
    assert "gelu_backward" not in llama["covers"]["ops"]["training"]


def test_fingerprints_name_what_differs(hf_qualified):
    a, b = hf_qualified("llama", "cpu")["fingerprint"], hf_qualified("gemma", "sim:bad-gelu")["fingerprint"]
    assert differences(a, a) == []
    why = differences(a, b)
    assert any("GemmaForCausalLM" in w and "LlamaForCausalLM" in w for w in why)
    assert any(w.startswith("device sim:bad-gelu") for w in why)


def test_weights_in_the_folder_are_used(hf_dirs, golden_dir, tmp_path):
    """A folder with weights qualifies those weights (not a random init): the traced model holds them."""
    from turnout.model.foreign import load_hf_causal_lm

    src = load_hf_causal_lm(hf_dirs["llama"], seed=3)
    src.hf.save_pretrained(tmp_path / "llama-w")
    again = load_hf_causal_lm(tmp_path / "llama-w", seed=99)
    for (n, p), (_, q) in zip(src.named_parameters(), again.named_parameters()):
        assert (p == q).all(), n


def _cli(*argv: str) -> int:
    return main(list(argv))


def test_unknown_architecture_is_one_line_exit_2(tmp_path, capsys):
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.json").write_text(json.dumps({"model_type": "no-such-arch", "hidden_size": 8}))
    code = _cli("qualify", "--model", f"hf:{tmp_path / 'm'}", "--target", "cpu", "--out", str(tmp_path / "out"))
    err = capsys.readouterr().err
    assert code == 2 and "no-such-arch" in err and "config.json" in err and "Traceback" not in err
    assert not (tmp_path / "out").exists(), "nothing written"


@pytest.mark.parametrize("spec", ["hf:/nonexistent/dir", "llama"])
def test_bad_model_spec_is_one_line_exit_2(tmp_path, capsys, spec):
    code = _cli("qualify", "--model", spec, "--target", "cpu", "--out", str(tmp_path / "out"))
    err = capsys.readouterr().err
    assert code == 2 and "--model" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_mis_shaped_tensor_is_one_line_exit_2(hf_dirs, tmp_path, capsys):
    from turnout.model.foreign import load_hf_causal_lm

    m = load_hf_causal_lm(hf_dirs["llama"])
    m.hf.save_pretrained(tmp_path / "w")
    cfg = json.loads((tmp_path / "w" / "config.json").read_text())
    cfg["intermediate_size"] = 96  # the saved MLP weights are 128 wide
    (tmp_path / "w" / "config.json").write_text(json.dumps(cfg))
    code = _cli("qualify", "--model", f"hf:{tmp_path / 'w'}", "--target", "cpu", "--out", str(tmp_path / "out"))
    err = capsys.readouterr().err
    assert code == 2 and str(tmp_path / "w") in err and "mlp" in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_a_tokenizer_that_does_not_fit_is_one_line_exit_2(hf_dirs, tmp_path, capsys):
    """The folder's tokenizer.json has more tokens than the model's vocabulary: named, both sizes, nothing run."""
    import shutil

    from turnout.data import Tokenizer

    folder = tmp_path / "llama-tok"
    shutil.copytree(hf_dirs["llama"], folder)
    cfg = json.loads((folder / "config.json").read_text())
    cfg["vocab_size"] = 256  # fewer than the 256 bytes plus special tokens of any turnout BPE
    (folder / "config.json").write_text(json.dumps(cfg))
    Tokenizer.train(["to be or not to be, that is the question " * 200], 320).save(folder / "tokenizer.json")
    code = _cli("qualify", "--model", f"hf:{folder}", "--target", "cpu", "--out", str(tmp_path / "out"))
    err = capsys.readouterr().err
    assert code == 2 and "tokenizer.json" in err and "vocab_size 256" in err, err
    assert not (tmp_path / "out").exists()
