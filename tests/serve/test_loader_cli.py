"""Loading onto a target (checkpoint or HF directory), weight identities, and the generate command."""

from __future__ import annotations

import shutil

import pytest
import torch

from turnout.backend import TargetError
from turnout.errors import CheckpointError
from turnout.model import ModelArgs, Transformer, save_pretrained
from turnout.serve import Engine, SamplingParams, load_for_serving, model_identity

from .conftest import cli


def test_checkpoint_and_its_hf_export_load_and_agree(trained_run, tmp_path):
    ck = load_for_serving(trained_run, "cpu")
    assert ck.identity.kind == "checkpoint" and ck.identity.trained_on == "cpu"
    assert ck.identity.certificate_dir == trained_run and not ck.model.training
    assert model_identity(trained_run).sha256 == ck.identity.sha256  # stable
    folder = ck.identity.folder
    assert model_identity(folder).certificate_dir == folder.parent  # never inside the verified folder
    hf = tmp_path / "export"
    save_pretrained(ck.model, hf)
    shutil.copyfile(folder / "tokenizer.json", hf / "tokenizer.json")
    lm = load_for_serving(hf, "sim:healthy", trained_on="cpu")
    assert lm.identity.kind == "hf" and lm.identity.trained_on == "cpu" and lm.identity.certificate_dir == hf
    tokens = torch.tensor([ck.tokenizer.encode("ROMEO: soft, what light")])
    with torch.inference_mode():
        assert torch.allclose(ck.model(tokens), lm.model(tokens), atol=1e-6, rtol=0)


def test_identity_follows_the_weights(random_hf, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(random_hf, copy)
    assert model_identity(copy).sha256 == model_identity(random_hf).sha256
    (copy / "model.safetensors").write_bytes((copy / "model.safetensors").read_bytes()[:-4] + b"\0\0\0\1")
    assert model_identity(copy).sha256 != model_identity(random_hf).sha256


def test_refusals(random_hf, trained_run, tmp_path):
    with pytest.raises(CheckpointError, match="no such model"):
        load_for_serving(tmp_path / "nope", "cpu")
    with pytest.raises(TargetError):
        load_for_serving(random_hf, "cpu:int4")
    bare = tmp_path / "bare"
    shutil.copytree(random_hf, bare)
    (bare / "tokenizer.json").unlink()
    with pytest.raises(CheckpointError, match="tokenizer.json"):
        load_for_serving(bare, "cpu")
    with pytest.raises(CheckpointError, match="trained on cpu"):
        load_for_serving(trained_run, "cpu", trained_on="sim:healthy")
    with pytest.raises(TargetError, match="device 'tpu'"):
        load_for_serving(trained_run, "cpu", trained_on="tpu")


def test_serve_refuses_a_bad_trained_on_spec_in_one_line(tmp_path, capsys):
    assert cli(["serve", "--model", str(tmp_path), "--target", "cpu", "--trained-on", "cpu:int4"]) == 2
    err = capsys.readouterr().err
    assert "bad dtype in target 'cpu:int4'" in err and "valid forms" in err and len(err.strip().splitlines()) == 1


def test_generate_streams_the_continuation(random_hf, capsys):
    assert cli(["generate", "--model", str(random_hf), "--target", "cpu", "--prompt", "ROMEO:", "--max-tokens", "12",
                "--temperature", "0"]) == 0
    out, err = capsys.readouterr()
    lm = load_for_serving(random_hf, "cpu")
    ref = Engine(lm.model, lm.tokenizer, lm.backend, max_batch=1).generate(
        "ROMEO:", SamplingParams(max_tokens=12, temperature=0.0))
    assert out == "ROMEO:" + ref.text + "\n"
    assert "tok/s" in err and "480 B/token" in err
    assert cli(["generate", "--model", str(random_hf), "--target", "sim:healthy", "--prompt", "x", "--max-tokens",
                "5", "--seed", "3", "--top-k", "20", "--top-p", "0.9", "--quiet"]) == 0


def test_generate_speculative_gives_the_same_text(random_hf, tmp_path, capsys):
    argv = ["generate", "--model", str(random_hf), "--target", "cpu", "--prompt", "ROMEO:", "--max-tokens", "12",
            "--temperature", "0"]
    assert cli(argv) == 0
    plain = capsys.readouterr().out
    assert cli(argv + ["--speculative"]) == 0
    out, err = capsys.readouterr()
    assert out == plain and "MTP drafts kept" in err and "640 B/token" in err  # the MTP layer's cache row too
    no_mtp = tmp_path / "no-mtp"
    save_pretrained(Transformer(ModelArgs.preset("debug", mtp_depth=0)), no_mtp)
    shutil.copy(random_hf / "tokenizer.json", no_mtp)
    assert cli(argv[:2] + [str(no_mtp)] + argv[3:] + ["--speculative"]) == 2
    err = capsys.readouterr().err
    assert "--speculative" in err and "no MTP module" in err and len(err.strip().splitlines()) == 1
    # serve refuses it the same way, before it starts serving
    assert cli(["serve", "--model", str(no_mtp), "--target", "cpu", "--port", "0", "--speculative"]) == 2
    err = capsys.readouterr().err
    assert "--speculative" in err and "no MTP module" in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("argv, message", [
    (["--prompt", "word " * 600], "context is 512"),
    (["--prompt", "x", "--top-p", "0"], "--top-p"),
    (["--prompt", "x", "--max-tokens", "0"], "--max-tokens"),
    (["--prompt", "x", "--target", "tpu"], "unknown target"),
])
def test_generate_refuses_in_one_line(random_hf, capsys, argv, message):
    assert cli(["generate", "--model", str(random_hf), *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


def test_serve_and_parity_argument_errors(random_hf, capsys):
    assert cli(["serve", "--model", str(random_hf), "--target", "cpu", "--port", "70000"]) == 2
    assert cli(["parity", "--model", str(random_hf), "--a", "cpu", "--b", "cpu", "--sequences", "0"]) == 2
    err = capsys.readouterr().err
    assert "--port" in err and "--sequences" in err
