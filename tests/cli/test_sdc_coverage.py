"""`turnout sdc-coverage` end to end on a few debug steps: the figures add up, flips are placed by the campaign's
own draws, the page renders, and bad input is one line with exit 2."""

import json

import pytest

from turnout.cli.main import main

SMALL = ["--set", "train.batch_size=2", "--set", "train.seq_len=16", "--set", "model.preset='debug'"]


def test_campaign_writes_consistent_figures_and_a_page(tmp_path, capsys):
    out = tmp_path / "cov"
    assert main(["sdc-coverage", "--config", "configs/debug.toml", "--flips", "12", "--steps", "4", "--seed", "3",
                 "--out", str(out), *SMALL]) == 0
    r = json.loads((out / "sdc-coverage.json").read_text())
    assert r["flips"] == len(r["records"]) == 12 and r["steps"] == 4
    assert r["false_alarms"]["alarms"] == 0
    assert sum(c["flips"] for c in r["by_bit_class"].values()) == 12
    assert r["detected"] == sum(rec["detected"] for rec in r["records"])
    assert len({(rec["step"], rec["op"], rec["bit"]) for rec in r["records"]}) > 6  # spread, not one spot
    for rec in r["records"]:  # a flip that made a value non-finite or huge is never missed
        if rec["bit_class"] == "exponent" and abs(rec["after"] if isinstance(rec["after"], float) else 1e30) > 1e20:
            assert rec["detected"], rec
    page = (out / "sdc-coverage.html").read_text()
    assert "<svg" in page and "By bit class" in page
    assert "flips detected" in capsys.readouterr().out


def test_bad_input_is_one_line(tmp_path, capsys):
    assert main(["sdc-coverage", "--config", "configs/debug.toml", "--flips", "0", "--out", str(tmp_path)]) == 2
    assert main(["sdc-coverage", "--config", "configs/debug.toml", "--set", "health.checksums=false",
                 "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and "--flips" in err[0] and "health.checksums" in err[1]


def test_a_bf16_target_has_no_false_alarms_under_reordering_noise(tmp_path):
    """bf16 products: the campaign's reordering noise is float32's, rounded to bf16 (whole-bf16-ulp jitter would
    be a sloppier device than rounding, and every checked step failed under it); clean and jittered pass alike."""
    out = tmp_path / "cov"
    assert main(["sdc-coverage", "--config", "configs/debug.toml", "--target", "cpu:bf16", "--flips", "6", "--steps",
                 "6", "--seed", "1", "--out", str(out), *SMALL, "--set", "model.overrides={attn_impl='blocked'}"]) == 0
    r = json.loads((out / "sdc-coverage.json").read_text())
    assert r["dtype"] == "bfloat16" and r["false_alarms"]["alarms"] == 0 and r["flips"] == 6


@pytest.mark.dist
def test_two_ranks_flip_the_gradient_all_reduce_too_and_agree_on_every_figure(tmp_path, capsys):
    """--nproc 2: flips land on both ranks, a share of them in a gradient bucket's all-reduce result; the one
    report holds every rank's flips, and the conservation check catches each one that turned a value huge or
    non-finite, with no false alarm."""
    out = tmp_path / "cov"
    assert main(["sdc-coverage", "--config", "configs/debug.toml", "--flips", "24", "--steps", "6", "--seed", "5",
                 "--nproc", "2", "--out", str(out), *SMALL]) == 0
    r = json.loads((out / "sdc-coverage.json").read_text())
    assert r["flips"] == len(r["records"]) == 24 and r["false_alarms"]["alarms"] == 0
    assert r["ranks"] == 2 and "2 ranks (DDP)" in (out / "sdc-coverage.html").read_text()
    reduce = [rec for rec in r["records"] if rec["op"] == "c10d::allreduce"]
    assert reduce and r["by_op"]["c10d::allreduce"]["flips"] == len(reduce)
    assert any(rec["detected"] for rec in reduce)  # by the conservation check: no product saw these
    assert any(rec["op"] != "c10d::allreduce" for rec in r["records"])
    for rec in r["records"]:
        after = rec["after"] if isinstance(rec["after"], float) else float("inf")  # JSON spells inf and NaN so
        if rec["bit_class"] == "exponent" and not abs(after) <= max(1e3 * abs(rec["before"]), 1e-30):
            assert rec["detected"], rec
