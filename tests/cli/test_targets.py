import json
import subprocess
import sys

from turnout.cli import main


def test_targets_json(capsys):
    assert main(["targets", "--json", "cpu", "cuda"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["spec"] for r in rows] == ["cpu", "cuda"]
    for r in rows:
        assert {"spec", "device", "available", "dtypes", "collective"} <= set(r)
    assert rows[0]["available"] and "fp32" in rows[0]["dtypes"]


def test_targets_table_lists_everything(capsys):
    assert main(["targets"]) == 0
    out = capsys.readouterr().out
    for spec in ("cpu", "cuda", "npu", "xpu", "mps"):
        assert spec in out


def test_targets_peak(capsys):
    assert main(["targets", "--json", "--peak", "cpu"]) == 0
    row = json.loads(capsys.readouterr().out)[0]
    assert row["peak_flops"]["fp32"] > 1e8


def test_bad_spec_exit_2_one_line():
    r = subprocess.run([sys.executable, "-m", "turnout", "targets", "cpu:int4"], capture_output=True,
                       text=True)
    assert r.returncode == 2
    assert "valid forms" in r.stderr and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
