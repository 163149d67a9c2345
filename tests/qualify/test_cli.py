"""`turnout qualify` through the real command table: exit codes, one-line errors, --require, a user's profile."""

from __future__ import annotations

import importlib
import json

import pytest

from tests.qualify.conftest import DEBUG
from turnout.cli import qualify as qualify_cli

cli_main = importlib.import_module("turnout.cli.main")


@pytest.fixture
def turnout(monkeypatch):
    """main(argv) with `qualify` in the command table (the lead registers it in cli/main.py)."""
    monkeypatch.setitem(cli_main.COMMANDS, "qualify", (qualify_cli.HELP, qualify_cli.add_arguments, qualify_cli.run))
    return cli_main.main


def _err_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err
    assert len(err.splitlines()) == 1, err
    return err


def test_cli_module_shape():
    assert isinstance(qualify_cli.HELP, str) and qualify_cli.HELP
    assert callable(qualify_cli.add_arguments) and callable(qualify_cli.run)


@pytest.mark.parametrize("argv, needle", [
    (["--target", "cuda:int4"], "valid forms"),
    (["--target", "sim:no-such-profile"], "unknown sim profile"),
    (["--target", "sim:healthy", "--reference", "tpu"], "unknown target"),
    (["--target", "sim:healthy", "--set", "train.lr=-1"], "train.lr"),
    (["--target", "sim:healthy", "--set", "model.preset=huge"], "model.preset"),
    (["--target", "sim:healthy", "--steps", "1"], "--steps"),
    (["--target", "cpu", "--reference", "sim:no-bf16", "--set", 'train.dtype="bf16"'], "reference sim:no-bf16 refuses"),
])
def test_bad_input_exits_2_in_one_line(turnout, capsys, tmp_path, argv, needle):
    rc = turnout(["qualify", "--config", str(DEBUG), "--out", str(tmp_path / "q"), *argv])
    assert rc == 2
    assert needle in _err_line(capsys)


def test_refusal_is_a_verdict_not_an_error_and_require_gates_it(turnout, capsys, tmp_path, golden_dir):
    base = ["qualify", "--target", "sim:no-bf16:bf16", "--config", str(DEBUG), "--golden", str(golden_dir),
            "--skip-collectives", "--quiet"]
    assert turnout([*base, "--out", str(tmp_path / "a")]) == 0
    out = capsys.readouterr().out
    assert "verdict: unfit" in out and "bf16" in out
    assert turnout([*base, "--out", str(tmp_path / "b"), "--require", "inference"]) == 1
    assert "--require inference not met" in capsys.readouterr().out


def test_user_profile_file_is_qualified_like_a_shipped_one(turnout, capsys, tmp_path, golden_dir):
    # a backward-only kernel of the default (sdpa) model, 5% off: the fused attention's gradient
    profile = tmp_path / "my-chip.toml"
    profile.write_text('[profile]\ndescription = "my chip: flash-attention backward 5% off"\n\n'
                       '[[fault]]\nkind = "bad_backward"\n'
                       'ops = ["_scaled_dot_product_flash_attention_for_cpu_backward"]\nerror = 0.05\n')
    out = tmp_path / "q"
    rc = turnout(["qualify", "--target", f"sim:{profile}", "--config", str(DEBUG), "--out", str(out),
                  "--golden", str(golden_dir), "--skip-collectives", "--require", "train"])
    printed = capsys.readouterr().out
    assert rc == 1 and "--require train not met" in printed
    assert "qualify [5/8] training parity" in printed  # progress: a line per stage
    r = json.loads((out / "qualify.json").read_text())
    assert r["verdict"] == "inference-only" and r["target"] == f"sim:{profile}"
    assert "_scaled_dot_product_flash_attention_for_cpu_backward.default" in r["stages"]["ops"]["evidence"]["failing"]
    assert r["stages"]["ops"]["evidence"]["inference_pass"]
    assert r["stages"]["collectives"]["status"] == "skipped"
    assert r["sim"]["profile"] == str(profile)
    html = (out / "report.html").read_text()
    assert "inference-only" in html and "<svg" in html
