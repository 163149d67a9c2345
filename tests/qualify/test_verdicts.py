"""Ground truth: the shipped sim profiles (and cpu) come out with the verdicts their faults call for.

Every run also passes check_consistent: the verdict is re-derived from the numbers qualify.json holds.
"""

from __future__ import annotations

import json

import pytest

from tests.qualify.conftest import EAGER
from tests.qualify.consistency import check_consistent


@pytest.mark.dist  # the collectives stage starts two gloo ranks through torchrun
def test_cpu_is_train_ready_with_full_evidence(qualified):
    r, out = qualified("cpu", collectives=True)
    check_consistent(r)
    assert r["verdict"] == "train-ready" and r["target"] == "cpu" and r["reference"] == "cpu"
    assert all(st["status"] == "pass" for st in r["stages"].values()), {n: st["summary"] for n, st in
                                                                        r["stages"].items()}
    assert json.loads((out / "qualify.json").read_text())["verdict"] == "train-ready"
    ops = r["stages"]["ops"]["evidence"]
    assert ops["distinct_ops"] > 40 and not ops["failing"]
    uses = {u for o in ops["ops"] for u in o["uses"]}
    assert uses == {"forward", "backward", "inference"}
    col = r["stages"]["collectives"]["evidence"]
    assert len(col["ranks"]) == 2 and all(row["ok"] for rk in col["ranks"] for row in rk["results"])
    assert {row["op"] for row in col["ranks"][0]["results"]} == {"all_reduce", "all_gather", "reduce_scatter",
                                                                 "all_to_all", "all_to_all_ep"}
    assert col["bandwidth"]["busbw_GBps"] > 0 and col["exchange"]["algbw_GBps"] > 0
    perf = r["stages"]["perf"]["evidence"]
    assert perf["target_tokens_per_s"] > 0 and 0 < perf["mfu"] < 1 and perf["matmul_peak_flops"]["fp32"] > 1e8
    sdc = r["stages"]["sdc"]["evidence"]  # the short campaign: flips placed at random, none falsely alarmed
    assert sdc["flips"] == 24 and sdc["false_alarms"]["alarms"] == 0 and sdc["detected"] > 0
    assert len(sdc["by_op"]) >= 2  # more than one kind of product was hit


def test_sim_healthy_is_train_ready_and_reuses_the_golden_curve(qualified, golden_dir):
    cpu, _ = qualified("cpu", collectives=True)
    r, _ = qualified("sim:healthy")
    check_consistent(r)
    assert r["verdict"] == "train-ready"
    assert r["sim"]["injected"] == {}
    g_cpu = cpu["stages"]["training"]["evidence"]["golden"]
    g = r["stages"]["training"]["evidence"]["golden"]
    assert g["key"] == g_cpu["key"] and (g["reused"] or g_cpu["reused"])  # computed once, then reused
    assert any(golden_dir.glob(f"cpu-{g['key']}.json"))
    assert r["stages"]["training"]["evidence"]["target_loss"] == cpu["stages"]["training"]["evidence"]["target_loss"]


def test_bad_backward_is_inference_only_and_names_the_op_and_layers(qualified):
    r, _ = qualified("sim:bad-backward", EAGER)
    check_consistent(r)
    assert r["verdict"] == "inference-only"
    ops = r["stages"]["ops"]["evidence"]
    assert "_softmax_backward_data.default" in ops["failing"]
    assert ops["inference_pass"] and not ops["training_pass"]
    assert any("_softmax_backward_data" in x for x in r["reasons"])
    blocks = r["stages"]["blocks"]
    bad_layers = [row["group"] for row in blocks["evidence"]["layers"] if row["fail"]]
    assert {"layers.0", "layers.1", "layers.2"} <= set(bad_layers)
    assert blocks["evidence"]["error_grows_with_depth"]
    assert any("layers.0" in x and "grows" in x for x in r["reasons"])
    assert all(row["output_fail"] is None for row in blocks["evidence"]["blocks"])  # the forward is exact
    assert r["stages"]["training"]["status"] == "fail"
    assert r["sim"]["injected"].get("bad_backward", 0) > 0


def test_bad_backward_default_attention_is_inference_only(qualified):
    # the shipped profile also breaks the fused SDPA backward, the kernel the default attn_impl="sdpa" runs
    r, _ = qualified("sim:bad-backward")
    check_consistent(r)
    assert r["verdict"] == "inference-only"
    failing = {o["packet"] for o in r["stages"]["ops"]["evidence"]["ops"] if o.get("status") == "fail"}
    assert "_scaled_dot_product_flash_attention_for_cpu_backward" in failing


def test_bad_backward_kernel_the_model_never_calls_does_not_matter(qualified, tmp_path_factory):
    # with attn_impl="sdpa" attention runs the fused CPU flash kernel: _softmax_backward_data is not in the op set
    prof = tmp_path_factory.mktemp("profiles") / "softmax-only.toml"
    prof.write_text('[profile]\ndescription = "softmax backward only"\n[[fault]]\nkind = "bad_backward"\n'
                    'ops = ["_softmax_backward_data"]\nerror = 0.05\n')
    r, _ = qualified(f"sim:{prof}")
    check_consistent(r)
    assert r["verdict"] == "train-ready"
    assert not any(o["packet"] == "_softmax_backward_data" for o in r["stages"]["ops"]["evidence"]["ops"])
    # the faulty kernel ran only in the three dtype probes of stage 1 (a softmax and its backward per dtype)
    assert r["sim"]["counts"] == {"bad_backward": {"_softmax_backward_data": 3}}


def test_lossy_accum_verdict_follows_from_its_errors(qualified):
    r, _ = qualified("sim:lossy-accum")
    check_consistent(r)
    ops = r["stages"]["ops"]["evidence"]
    failing_fwd = [o for o in ops["ops"] if "inference" in o["uses"] and o["forward"] and o["forward"]["fail"]]
    assert {o["packet"] for o in failing_fwd} >= {"mm", "bmm"}
    # matmuls in fp32 with bf16 rounding: ~all elements outside fp32 tolerance, where the cpu reference has ~none
    mm = next(o for o in failing_fwd if o["packet"] == "mm")
    assert float(mm["forward"]["target"]["ratio"]) > 0.5 > 10 * float(mm["forward"]["reference"]["ratio"])
    assert "mm.default" in ops["bf16_like"]  # and exactly as exact as the cpu computing in bf16
    assert r["verdict"] == "unfit"  # an op serving needs fails: forward conformance decides
    assert any("mm" in x and "inference use" in x for x in r["reasons"])
    assert r["stages"]["training"]["evidence"]["loss_outside"]  # and training visibly drifts from step 1
    assert r["stages"]["training"]["evidence"]["loss_outside"][0] == 1
    # products rounded to bf16 cannot meet float32 checksums: a checked run there would flag every clean step
    sdc = r["stages"]["sdc"]
    assert [f["kind"] for f in sdc["findings"]] == ["checksum_false_alarms"]
    assert sdc["evidence"]["false_alarms"]["alarms"] == 2 * sdc["evidence"]["steps"]


@pytest.mark.parametrize("target, overrides", [("sim:no-bf16", ('train.dtype="bf16"',)), ("sim:no-bf16:bf16", ())])
def test_no_bf16_with_a_bf16_config_is_refused(qualified, target, overrides):
    r, out = qualified(target, *overrides)
    check_consistent(r)
    assert r["verdict"] == "unfit"
    caps = r["stages"]["capabilities"]
    assert caps["status"] == "fail" and not caps["evidence"]["dtypes"]["bf16"]["works"]
    assert any("bf16" in x and "refuses" in x for x in r["reasons"])
    assert all(st["status"] == "skipped" for n, st in r["stages"].items() if n != "capabilities")
    assert (out / "report.html").is_file()


def test_flaky_is_inference_only_device_lost_at_step_25(qualified):
    """Its forward stages are clean; only training loses the device: it may serve, not train."""
    r, _ = qualified("sim:flaky")
    check_consistent(r)
    assert r["verdict"] == "inference-only"
    assert any("device lost during training parity at step 25" in x for x in r["reasons"])
    inc = r["stages"]["training"]["evidence"]["incidents"]
    assert [i["step"] for i in inc] == [25] and inc[0]["retried_ok"]
    assert r["stages"]["training"]["summary"].startswith("device error at step 25 (its re-run passed); 30 steps;")
    assert r["sim"]["injected"].get("device_error") == 1


def test_nondeterministic_is_unfit(qualified):
    r, _ = qualified("sim:nondeterministic")
    check_consistent(r)
    assert r["verdict"] == "unfit"
    det = r["stages"]["determinism"]
    assert det["status"] == "fail" and not det["evidence"]["plain"]["bitwise"]
    assert det["evidence"]["deterministic_mode"] and not det["evidence"]["deterministic_mode"]["bitwise"]
    assert 0 < det["evidence"]["plain"]["max_ulp"] < 1e4  # rounding-level, not corruption
    assert any("not bit-reproducible" in x for x in r["reasons"])
    # ulp-level jitter is what a correct but differently-rounding device does: training parity stays in band
    assert r["stages"]["training"]["status"] == "pass"


@pytest.mark.dist  # the collectives stage starts two gloo ranks through torchrun
def test_bad_allreduce_is_unfit_by_its_collectives_alone(qualified):
    """Compute on the device is healthy; only the all_reduce results come back corrupted, on both ranks."""
    r, _ = qualified("sim:bad-allreduce", collectives=True)
    check_consistent(r)
    assert r["verdict"] == "unfit"
    stages = r["stages"]
    assert {n for n, st in stages.items() if st["status"] == "fail"} == {"collectives"}
    bad = [(row["op"], row["rank"]) for rk in stages["collectives"]["evidence"]["ranks"] for row in rk["results"]
           if not row["ok"]]
    assert {op for op, _ in bad} == {"all_reduce"} and {rank for _, rank in bad} == {0, 1}
    assert r["reasons"] and all("all_reduce" in x and "wrong values" in x for x in r["reasons"])
