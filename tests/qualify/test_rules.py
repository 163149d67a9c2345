"""Verdict table, --require, golden files and the training band (pure functions)."""

from __future__ import annotations

import json

import pytest

from turnout.qualify.golden import find_golden, golden_key, save_golden
from turnout.qualify.stage import StageResult
from turnout.qualify.training import FLOOR_ULPS, SAFETY, band
from turnout.qualify.verdict import LEVELS, decide, satisfies


def _stage(name, *kinds):
    st = StageResult(name, name.title())
    for k in kinds:
        st.find(k, f"{k} happened")
    return st


def test_no_findings_is_train_ready():
    v, reasons = decide([_stage("ops"), _stage("training")], "sim:x")
    assert v == "train-ready" and "sim:x passes" in reasons[0]


@pytest.mark.parametrize("kinds, verdict", [
    (("backward_conformance",), "inference-only"), (("training_parity", "model_gradients"), "inference-only"),
    (("too_slow",), "inference-only"), (("forward_conformance",), "unfit"), (("refused",), "unfit"),
    (("device_error", "training_parity"), "unfit"), (("nondeterministic",), "unfit"), (("whatever_new",), "unfit"),
    (("training_device_error", "training_parity"), "inference-only"),
])
def test_worst_finding_decides_and_names_its_reasons(kinds, verdict):
    v, reasons = decide([_stage("ops", *kinds)], "t")
    assert v == verdict
    assert reasons == [f"ops: {k} happened" for k in kinds if LEVELS.get(k, "unfit") == verdict]


def test_require():
    assert satisfies("train-ready", "train") and not satisfies("inference-only", "train")
    assert satisfies("inference-only", "inference") and not satisfies("unfit", "inference")
    assert satisfies("unfit", None)


def test_band_is_a_safety_factor_times_the_running_spread_plus_a_floor():
    ref = [10.0, 9.0, 8.0, 7.0]
    other = [10.0, 9.001, 8.0, 7.0005]
    w = band(ref, other)
    eps = 2.0 ** -23
    assert w[0] == pytest.approx(FLOOR_ULPS * eps * 10)
    assert w[1] == pytest.approx(SAFETY * 1e-3 + FLOOR_ULPS * eps * 9, rel=1e-6)
    assert w[2] == pytest.approx(SAFETY * 1e-3 + FLOOR_ULPS * eps * 8, rel=1e-6)  # the spread never shrinks back
    assert w[3] == pytest.approx(SAFETY * 1e-3 + FLOOR_ULPS * eps * 7, rel=1e-6)


def test_golden_roundtrip_and_key(tmp_path):
    work = {"config": {"model": {"preset": "debug"}}, "dataset": "abc", "steps": 30}
    key, ident = golden_key(work, "cpu", "fp32")
    assert key == golden_key(json.loads(json.dumps(work)), "cpu", "fp32")[0]
    assert key != golden_key({**work, "steps": 31}, "cpu", "fp32")[0]
    assert key != golden_key(work, "sim:healthy", "fp32")[0] and key != golden_key(work, "cpu", "bf16")[0]
    assert find_golden(tmp_path, "cpu", key) is None
    path = save_golden(tmp_path, "cpu", key, ident, {"reference": {"loss": [1.0]}})
    data, found = find_golden(tmp_path, "cpu", key)
    assert found == path and data["reference"]["loss"] == [1.0] and data["ident"]["torch"]
    path.write_text("{broken")
    assert find_golden(tmp_path, "cpu", key) is None
