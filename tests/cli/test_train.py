"""`turnout train --fallback`: every target is checked before the first step, and a run left without a target exits
88 as the README's exit codes say."""

import json

from turnout.cli import main

# steps=2: were a check missing, the run this starts would stay short
ARGS = ["--config", "configs/debug.toml", "--set", "train.steps=2", "--set", "train.warmup_steps=0"]


def test_a_fallback_whose_sim_profile_does_not_exist_is_refused_before_anything_starts(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", *ARGS, "--out", str(run), "--target", "cpu", "--fallback", "cpu,sim:doesnotexist"]) == 2
    out, err = capsys.readouterr()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert err.startswith("turnout train: error: unknown sim profile 'doesnotexist'; shipped profiles: ")
    assert not run.exists()  # no supervisor, no worker, no config written


def test_a_fallback_profile_file_that_does_not_load_is_refused_naming_the_file(tmp_path, capsys):
    prof = tmp_path / "chip.toml"
    prof.write_text('[[fault]]\nkind = "sdcc"\n')
    run = tmp_path / "run"
    assert main(["train", *ARGS, "--out", str(run), "--target", "cpu", "--fallback", f"sim:{prof}"]) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and f"sim profile {prof}" in err and "unknown kind 'sdcc'" in err
    assert not run.exists()


def test_no_target_left_to_run_on_exits_88(tmp_path, capsys):
    """Every target refuses the config (fp16 training needs loss scaling, which no target has): the supervisor
    records each refusal and ends with the README's 'cannot continue on any target' code, not 1."""
    run = tmp_path / "run"
    code = main(["train", *ARGS, "--set", "train.dtype=fp16", "--out", str(run), "--target", "cpu",
                 "--fallback", "sim:healthy"])
    assert code == 88
    assert "no target left to run on" in capsys.readouterr().out
    events = [json.loads(line) for line in (run / "events.jsonl").read_text().splitlines()]
    assert [(e["kind"], e["target"]) for e in events] == [("target_refused", "cpu"), ("target_refused", "sim:healthy")]
    assert not (run / "checkpoints").exists()


def test_a_reference_target_that_does_not_build_is_refused_before_anything_starts(tmp_path, capsys):
    """health.reference re-executes suspect steps; a bad spec there would otherwise surface at the first one."""
    run = tmp_path / "run"
    assert main(["train", *ARGS, "--out", str(run), "--target", "cpu", "--set", "health.reference=tpu"]) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and err.startswith("turnout train: error: health.reference: unknown target 'tpu'")
    assert not run.exists()
    assert main(["train", *ARGS, "--out", str(run), "--target", "cpu", "--fallback", "cpu",
                 "--set", "health.reference=sim:doesnotexist"]) == 2
    assert "health.reference: unknown sim profile 'doesnotexist'" in capsys.readouterr().err
