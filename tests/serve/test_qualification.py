"""`turnout serve --qualification DIR`: the server says at start whether the target's verdict covers what it runs."""

from __future__ import annotations

import json

import pytest

from turnout.backend.spec import DTYPES
from turnout.serve import load_for_serving
from turnout.train.fingerprint import numerics_fingerprint

from .conftest import ServerProcess, cli


@pytest.mark.parametrize("matches", [True, False])
def test_server_says_whether_the_qualification_applies(random_hf, tmp_path, matches):
    lm = load_for_serving(random_hf, "cpu")  # as the server loads it: with the target's serving kernels
    dtype = next(n for n, d in DTYPES.items() if d == lm.dtype)
    fp = numerics_fingerprint(lm.model, lm.backend, dtype)
    if not matches:  # qualified with the training kernels: fused attention, where serving runs absorbed MLA
        fp = dict(fp, kernels={**fp["kernels"], "attn_impl": "blocked"})
    (tmp_path / "qualify.json").write_text(json.dumps({"verdict": "train-ready", "target": "cpu", "fingerprint": fp}))
    server = ServerProcess("--model", str(random_hf), "--target", "cpu", "--qualification", str(tmp_path))
    out = server.close()
    if matches:
        assert "train-ready of cpu" in out and " applies " in out, out
    else:
        assert "does NOT apply: kernel attn_impl=" in out and "(qualified with blocked)" in out, out


def test_an_unreadable_qualification_is_refused_before_loading(random_hf, tmp_path, capsys):
    assert cli(["serve", "--model", str(random_hf), "--qualification", str(tmp_path / "none.json")]) == 2
    err = capsys.readouterr().err
    assert "--qualification" in err and "none.json" in err
