"""`turnout export`: an HF directory that transformers and turnout both load, with the same logits."""

import json

import pytest
import torch

from turnout.cli import main


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    run = tmp_path_factory.mktemp("export") / "run"
    assert main(["train", "--config", "configs/debug.toml", "--out", str(run), "--set", "train.steps=3",
                 "--set", "train.seq_len=32", "--set", "train.eval_interval=0", "--set", "model.overrides.mtp_depth=0",
                 "--target", "cpu"]) == 0
    return run


def test_export_loads_in_transformers_and_turnout(run, tmp_path):
    from transformers import AutoTokenizer, DeepseekV3ForCausalLM

    from turnout.ckpt.restore import load_model
    from turnout.model import load_pretrained

    out = tmp_path / "hf"
    assert main(["export", str(run), "--hf", str(out)]) == 0
    hf, info = DeepseekV3ForCausalLM.from_pretrained(out, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    tok = AutoTokenizer.from_pretrained(out)
    ids = tok("To be, or not to be").input_ids
    x = torch.tensor([ids])
    ours, _, _ = load_model(run)
    with torch.no_grad():
        ref = ours(x)
        torch.testing.assert_close(hf(x).logits, ref, rtol=1e-5, atol=1e-5 * ref.abs().max().item())
        torch.testing.assert_close(load_pretrained(out)(x), ref, rtol=0, atol=0)
    prov = json.loads((out / "turnout_checkpoint.json").read_text())
    assert prov["step"] == 3 and prov["target"] == "cpu"


def test_export_refuses_to_overwrite_other_files(run, tmp_path, capsys):
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "notes.txt").write_text("keep me")
    assert main(["export", str(run), "--hf", str(tmp_path / "x")]) == 2
    assert (tmp_path / "x" / "notes.txt").read_text() == "keep me"
    assert main(["export", str(tmp_path / "nothing"), "--hf", str(tmp_path / "y")]) == 2
    assert "neither a run folder nor a checkpoint folder" in capsys.readouterr().err


def test_export_says_which_checkpoint_and_why_it_skipped_a_newer_one(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--config", "configs/debug.toml", "--out", str(run), "--set", "train.steps=2",
                 "--set", "train.seq_len=32", "--set", "train.eval_interval=0", "--set", "ckpt.interval=1",
                 "--target", "cpu"]) == 0
    shard = next((run / "checkpoints" / "step-00000002").glob("*.distcp"))
    shard.write_bytes(shard.read_bytes()[:-1])
    capsys.readouterr()
    assert main(["export", str(run), "--hf", str(tmp_path / "hf")]) == 0
    out, err = capsys.readouterr()
    assert "step-00000002: skipped" in err and "sha256 mismatch" in err
    assert "step-00000001 (step 1)" in out
    assert json.loads((tmp_path / "hf" / "turnout_checkpoint.json").read_text())["step"] == 1
    assert (run / "checkpoints" / "step-00000002").is_dir()  # a reader moves nothing
