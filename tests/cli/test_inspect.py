"""`turnout inspect`: what a model folder holds, read without loading it, for HF directories and checkpoints."""

from __future__ import annotations

import json

import torch
from safetensors.torch import load_file, save_file

from turnout.cli import main
from turnout.model import ModelArgs, Transformer, save_pretrained
from turnout.model.flops import mtp_params, param_counts
from turnout.model.hf import pretrained_args


def _inspect(capsys, path) -> dict:
    assert main(["inspect", str(path), "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_a_transformers_model_with_its_own_tokenizer(foreign_hf, capsys):
    d = _inspect(capsys, foreign_hf)
    args = pretrained_args(foreign_hf)
    assert d["kind"] == "hf" and d["architectures"] == ["DeepseekV3ForCausalLM"]
    assert (d["params"]["total"], d["params"]["active"]) == param_counts(args)
    assert sum(p.numel() for p in Transformer(args).parameters()) == d["params"]["total"]
    assert d["mtp"] == {"declared": 1, "present": 0}  # transformers writes no MTP tensors
    assert d["dtypes"] == {"float32": 91}
    assert d["kv_cache_bytes_per_token"] == {"bf16": (32 + 8) * 3 * 2, "fp32": (32 + 8) * 3 * 4}
    tok = d["tokenizer"]
    assert tok["own"] == "the model's" and tok["vocab_size"] == 900 and tok["fits"]
    assert tok["special"] == {"bos": "<s>", "eos": "</s>", "pad": None} and tok["stop_ids"] == [2, 4]
    assert tok["add_bos"] and tok["chat_template"]
    cpu = next(t for t in d["targets"] if t["target"] == "cpu")
    assert cpu == {"target": "cpu", "dtype": "fp32", "train": [], "serve": []}
    assert main(["inspect", str(foreign_hf)]) == 0
    text = capsys.readouterr().out
    assert "0 module(s) of 1 declared" in text and "stops at [2, 4]" in text and "cpu" in text


def test_fp8_release_weights_and_mtp(tmp_path, capsys):
    args = ModelArgs.preset("debug", mtp_depth=1)
    save_pretrained(Transformer(args), tmp_path)
    sd = load_file(tmp_path / "model.safetensors")
    key = "model.layers.1.self_attn.kv_b_proj.weight"
    scale = (sd[key].abs().amax() / 448).reshape(1, 1)
    sd[key], sd[key + "_scale_inv"] = (sd[key] / scale).to(torch.float8_e4m3fn), scale
    save_file(sd, str(tmp_path / "model.safetensors"))
    d = _inspect(capsys, tmp_path)
    assert d["dtypes"]["float8_e4m3fn"] == 1 and d["mtp"] == {"declared": 1, "present": 1}
    assert d["params"]["mtp"] == mtp_params(args) and d["tokenizer"] == {"present": False}


def test_a_checkpoint_and_bad_folders(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--config", "configs/debug.toml", "--out", str(run), "--target", "cpu", "--set",
                 "train.steps=2", "--set", "train.warmup_steps=0", "--set", "train.seq_len=32"]) == 0
    capsys.readouterr()
    d = _inspect(capsys, run)
    assert d["kind"] == "checkpoint" and d["step"] == 2 and d["trained_on"] == "cpu"
    assert d["model"]["dim"] == 128 and d["tokenizer"]["own"] == "turnout" and list(d["dtypes"]) == ["float32"]
    assert main(["inspect", str(tmp_path / "none")]) == 2
    assert "no such model folder" in capsys.readouterr().err
    shard = next((run / "checkpoints" / "step-00000002").glob("*.distcp"))
    shard.write_bytes(b"garbage")
    assert main(["inspect", str(run / "checkpoints" / "step-00000002")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") <= 2 and "error" in err
