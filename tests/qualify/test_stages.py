"""Determinism and training-parity stages on faults placed where they run (a few steps, no full qualification)."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from turnout.backend import get_backend
from turnout.config import load_config
from turnout.qualify.determinism import determinism
from turnout.qualify.training import run_curve, training_parity
from turnout.qualify.workload import Settings, Workload, qualify_config
from turnout.train.build import model_args

from tests.qualify.conftest import DEBUG


@pytest.fixture(scope="module")
def work():
    settings = Settings(steps=3, hang_timeout=1.0)
    cfg = qualify_config(load_config(DEBUG), settings)
    args = model_args(cfg)
    gen = torch.Generator().manual_seed(0)
    batches = [(x, x.roll(-1, 1)) for x in (torch.randint(0, args.vocab_size, (2, 32), generator=gen)
                                            for _ in range(4))]
    return Workload(cfg, args, batches, "random", settings)


def _sim(tmp_path, body: str):
    p = tmp_path / "p.toml"
    p.write_text(body)
    return get_backend(f"sim:{p}")


def test_a_loud_bit_flip_on_a_rerun_step_is_corruption(work, tmp_path):
    flip = _sim(tmp_path, '[[fault]]\nkind = "sdc"\nops = ["mm"]\nat_steps = [7]\nbit = 30\n')
    st = determinism(work, flip, step=7)  # the first run of step 7 is hit, the re-runs are clean
    assert st.status == "fail" and st.findings[0].kind == "corrupt"
    assert not st.evidence["plain"]["bitwise"] and st.evidence["plain"]["max_rel"] > 1e-3


def test_a_deterministic_target_passes(work):
    st = determinism(work, get_backend("sim:healthy"), step=7)
    assert st.status == "pass" and st.evidence["plain"]["bitwise"] and "deterministic_mode" not in st.evidence


def test_a_hung_step_is_released_by_the_watchdog_and_recorded(work, tmp_path):
    hang = _sim(tmp_path, '[[fault]]\nkind = "hang"\nat_steps = [2]\nseconds = 3600\n')
    curve = run_curve(work, hang, watchdog=work.settings.hang_timeout)
    assert len(curve.loss) == 3 and not curve.aborted
    assert [(i["step"], i["kind"]) for i in curve.incidents] == [(2, "hang")]


def test_a_device_lost_twice_aborts_the_curve(work, tmp_path):
    lost = _sim(tmp_path, '[[fault]]\nkind = "device_error"\nat_steps = [2]\nrepeat = true\n')
    curve = run_curve(work, lost)
    assert len(curve.loss) == 1 and "step 2 failed twice" in curve.aborted
    assert [i["kind"] for i in curve.incidents] == ["device_error", "device_error"]


@pytest.fixture(scope="module")
def fresh_work(work):
    """`work` without golden files: the cpu reference's two 3-step runs are computed, never read or stored."""
    return dataclasses.replace(work, settings=dataclasses.replace(work.settings, use_golden=False))


def test_a_device_error_leads_the_training_summary(fresh_work, tmp_path):
    # every step ran and matched the reference: the band figures are true, but they are not why the stage failed
    blip = _sim(tmp_path, '[[fault]]\nkind = "device_error"\nat_steps = [2]\n')
    st = training_parity(fresh_work, blip, get_backend("cpu"), "fp32")
    assert st.status == "fail" and [f.kind for f in st.findings] == ["training_device_error"]
    assert st.summary.startswith("device error at step 2 (its re-run passed); 3 steps; loss within the band at 3 of "
                                 "3 steps"), st.summary


def test_an_incomplete_training_run_quotes_the_band_only_for_steps_that_ran(fresh_work, tmp_path):
    lost = _sim(tmp_path, '[[fault]]\nkind = "device_error"\nat_steps = [2]\nrepeat = true\n')
    st = training_parity(fresh_work, lost, get_backend("cpu"), "fp32")
    assert st.status == "fail" and st.evidence["completed"] == 1
    assert st.summary.startswith("did not complete: step 2 failed twice: SimDeviceError: "), st.summary
    assert "; 1 of 3 steps ran; loss within the band at 1 of 1 steps" in st.summary and "3 of 3" not in st.summary
