"""Fine-tuning from a model someone else trained (`model.init`, `train --init`): its architecture, weights and
tokenizer; overrides that would change a shape refused; resumed bit for bit; exported and served with the model's
own tokenizer."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from turnout.cli import main
from turnout.config import ConfigError, load_config
from turnout.model import load_pretrained
from turnout.train.build import build_dataset, build_model, model_args
from turnout.train.dist import DistInfo

FAST = ["--set", "train.steps=6", "--set", "train.batch_size=2", "--set", "train.seq_len=32",
        "--set", "train.eval_interval=3", "--set", "train.eval_batches=1", "--set", "ckpt.interval=3",
        "--set", "train.warmup_steps=1"]


def _losses(run: Path) -> dict[int, float]:
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    return {m["step"]: m["loss"] for m in lines if m.get("kind") == "train"}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """A user's .parquet corpus: one text column."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from turnout.data import load_shakespeare

    path = tmp_path_factory.mktemp("corpus") / "plays.parquet"
    pq.write_table(pa.table({"text": [d.text for d in load_shakespeare()][:200]}), path)
    return path


def _config(init: Path, corpus: Path, *sets: str):
    return load_config("configs/debug.toml", [f"model.init={json.dumps(str(init))}",
                                              f"data.sources={json.dumps(str(corpus))}", *sets])


def test_weights_architecture_and_tokenizer_come_from_the_model(foreign_hf, corpus):
    cfg = _config(foreign_hf, corpus, "model.preset=\"tiny\"", "model.overrides.attn_impl=\"blocked\"")
    built = build_model(cfg, "cpu")
    ref = load_pretrained(foreign_hf)
    assert built.args == ref.args.replace(attn_impl="blocked")  # the preset is not used; a kernel choice is free
    theirs = ref.state_dict()
    for k, v in built.inner.state_dict().items():
        torch.testing.assert_close(v, theirs[k], rtol=0, atol=0, msg=k)
    ds = build_dataset(cfg, built.args, DistInfo(), None)
    assert ds.tokenizer.specials.stops == (2, 4) and ds.tokenizer.bos_id == 1
    assert ds.train_tokens[0] == 1  # documents framed as the model's tokenizer frames them: bos first


def test_a_fresh_mtp_module_starts_seeded_and_the_rest_is_the_models(foreign_hf, corpus):
    built = build_model(_config(foreign_hf, corpus, "model.overrides.mtp_depth=1"), "cpu")
    theirs = load_pretrained(foreign_hf).state_dict()
    ours = built.inner.state_dict()
    assert any(k.startswith("mtp.0.") for k in ours)
    assert all(torch.equal(v, theirs[k]) for k, v in ours.items() if not k.startswith("mtp."))


def test_an_override_that_changes_a_shape_is_refused_naming_the_key(foreign_hf, corpus):
    with pytest.raises(ConfigError, match=r"model.overrides.dim: 256 would change the shape of the model"):
        model_args(_config(foreign_hf, corpus, "model.overrides.dim=256"))
    with pytest.raises(ConfigError, match=r"model.overrides.n_routed_experts"):
        model_args(_config(foreign_hf, corpus, "model.overrides.n_routed_experts=4"))


def test_fine_tune_resume_export_serve_from_a_transformers_model(foreign_hf, corpus, tmp_path, capsys):
    straight, split = tmp_path / "straight", tmp_path / "split"
    base = ["train", "--config", "configs/debug.toml", "--init", str(foreign_hf), "--target", "cpu",
            "--set", f"data.sources={json.dumps(str(corpus))}", *FAST]
    assert main([*base, "--out", str(straight)]) == 0
    assert main([*base, "--out", str(split), "--until", "3"]) == 0
    assert main(["train", "--out", str(split), "--resume"]) == 0
    assert _losses(split) == _losses(straight) and len(_losses(straight)) == 6  # bit for bit
    ckpt = straight / "checkpoints" / "step-00000006"
    assert {"tokenizer.json", "tokenizer_config.json"} <= set(json.loads((ckpt / "manifest.json").read_text())["files"])

    from transformers import AutoTokenizer, DeepseekV3ForCausalLM

    out = tmp_path / "hf"
    assert main(["export", str(straight), "--hf", str(out)]) == 0
    cfg = json.loads((out / "config.json").read_text())
    assert (cfg["bos_token_id"], cfg["eos_token_id"]) == (1, [2, 4])
    assert json.loads((out / "generation_config.json").read_text())["eos_token_id"] == [2, 4]
    hf_tok, mine = AutoTokenizer.from_pretrained(out), AutoTokenizer.from_pretrained(foreign_hf)
    assert hf_tok("To be, or not").input_ids == mine("To be, or not").input_ids
    assert hf_tok.chat_template == mine.chat_template
    DeepseekV3ForCausalLM.from_pretrained(out)  # transformers loads what was fine-tuned

    from turnout.serve import Engine, SamplingParams, load_for_serving
    from turnout.serve.chat import render_template

    lm = load_for_serving(out, "cpu")
    assert lm.tokenizer.specials.chat_template == mine.chat_template
    eng = Engine(lm.model, lm.tokenizer, lm.backend, max_batch=2, max_context=64)
    chat = render_template(lm.tokenizer.specials.chat_template, [("user", "hi")], "<s>", "</s>")
    assert eng.encode_prompt(chat) == mine.apply_chat_template([{"role": "user", "content": "hi"}],
                                                                add_generation_prompt=True)["input_ids"]
    assert eng.encode_prompt("To be") == mine("To be").input_ids  # bos first, as the model was trained
    assert eng.stop_ids == {2, 4}
    done = eng.generate("To be", SamplingParams(max_tokens=4, temperature=0.0))
    assert done.finish_reason in ("stop", "length")


def test_bad_init_is_one_line_exit_2(tmp_path, foreign_hf, capsys):
    assert main(["train", "--config", "configs/debug.toml", "--init", str(tmp_path / "nothing"),
                 "--out", str(tmp_path / "r")]) == 2
    assert "model.init" in capsys.readouterr().err and not (tmp_path / "r").exists()
    bare = tmp_path / "bare"
    bare.mkdir()
    for name in ("config.json", "model.safetensors"):
        (bare / name).write_bytes((foreign_hf / name).read_bytes())
    assert main(["train", "--config", "configs/debug.toml", "--init", str(bare), "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no tokenizer.json beside the weights" in err and not (tmp_path / "r").exists()
