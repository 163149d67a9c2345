"""Re-derive a qualification's verdict from the numbers in its qualify.json: the verdict must follow from them."""

from __future__ import annotations

from turnout.qualify.stage import Finding
from turnout.qualify.verdict import LEVELS, decide
from turnout.qualify.stage import StageResult

STAGES = ["capabilities", "ops", "blocks", "determinism", "training", "sdc", "collectives", "perf"]


def num(v):
    return float(v) if not isinstance(v, str) else float(v.replace("inf", "Infinity"))


def check_consistent(r: dict) -> None:
    """Assert that qualify.json agrees with itself: schema, op scores vs failures, band vs steps, verdict vs
    findings."""
    assert {"target", "reference", "verdict", "reasons", "stages", "findings", "warnings"} <= set(r)
    assert list(r["stages"]) == STAGES
    for name, st in r["stages"].items():
        assert st["status"] in ("pass", "fail", "skipped"), name
        assert {"title", "status", "seconds", "summary", "reasons", "evidence"} <= set(st)
        assert (st["status"] == "fail") == bool(st["findings"]), name
    ops = r["stages"]["ops"]["evidence"].get("ops", [])
    for o in ops:
        for key in ("forward", "backward"):
            side = o.get(key)
            if side:  # the rule's verdict and its score agree: fail exactly when the error exceeds the allowance
                assert (num(side["score"]) > 1) == bool(side["fail"]), (o["op"], key, side)
        if o["status"] == "pass":
            assert o["inference_ok"] and o["training_ok"]
    if ops:
        ev = r["stages"]["ops"]["evidence"]
        assert ev["inference_pass"] == all(o["inference_ok"] for o in ops)
        assert ev["training_pass"] == all(o["training_ok"] for o in ops)
    sdc = r["stages"]["sdc"]["evidence"]
    if sdc.get("by_bit_class"):  # the coverage tables add up, and false alarms are what decided, if anything
        assert sum(c["flips"] for c in sdc["by_bit_class"].values()) == sdc["flips"]
        assert sum(c["detected"] for c in sdc["by_op"].values()) == sdc["detected"]
        assert bool(sdc["false_alarms"]["alarms"]) == bool(r["stages"]["sdc"]["findings"])
    tr = r["stages"]["training"]["evidence"]
    if "band" in tr:
        outside = [i + 1 for i, (t, ref, w) in enumerate(zip(tr["target_loss"], tr["reference_loss"], tr["band"]))
                   if not abs(num(t) - num(ref)) <= num(w)]
        assert outside == tr["loss_outside"]
    for f in r["findings"]:
        assert f["kind"] in LEVELS, f
    stages = []
    for name in STAGES:
        st = StageResult(name, r["stages"][name]["title"])
        st.findings = [Finding(f["kind"], f["message"], name) for f in r["findings"] if f["stage"] == name]
        st.status = r["stages"][name]["status"]
        stages.append(st)
    verdict, reasons = decide(stages, r["target"])
    assert verdict == r["verdict"]
    assert reasons == r["reasons"]
