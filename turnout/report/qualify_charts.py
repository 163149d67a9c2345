"""The qualification page's charts, each drawn from one stage's evidence in qualify.json.

Failing bars are red, passing ones blue; dashed red lines are the pass bars the stages applied (recorded in
qualify.json's "rules"), so a reader sees how far from the line each op, block or step is.
"""

from __future__ import annotations

import math

from turnout.report.charts import Envelope, Marker, Series, bar_chart, line_chart
from turnout.report.values import as_float

PASS_COLOR, FAIL_COLOR, REF_COLOR, TARGET_COLOR = "#1f77b4", "#d62728", "#1f77b4", "#ff7f0e"
SHOWN_ZERO = 1e-4  # exact results (score 0) are drawn at this height on the log axis (said in the caption)
MISSING_SHOWN_AT = 10.0  # missing ops and ops that raised are drawn at this multiple of the allowed error


def _num(v: object) -> float:
    f = as_float(v)
    return f if math.isfinite(f) else (math.inf if str(v) == "inf" else math.nan)


def op_error_chart(ops: list[dict]) -> str:
    """Per op (worst over shapes, draws, forward and gradient): the target's error as a multiple of what the rule
    allows it; above 1 fails (red). Missing ops and ops that raised are drawn red at MISSING_SHOWN_AT."""
    worst: dict[str, tuple[float, bool]] = {}
    for row in ops:
        if row.get("view"):
            continue
        vals = [_num(row[k]["score"]) for k in ("forward", "backward") if row.get(k) and "score" in row[k]]
        v = max(vals, default=math.nan)
        bad = row["status"] in ("fail", "missing", "error")
        if row["status"] in ("missing", "error"):
            v = MISSING_SHOWN_AT
        old = worst.get(row["op"])
        worst[row["op"]] = (max(v, old[0]) if old and math.isfinite(old[0]) else v, bad or (old[1] if old else False))
    names = sorted(worst, key=lambda n: (not worst[n][1], -(worst[n][0] if math.isfinite(worst[n][0]) else 0), n))
    values = [max(worst[n][0], SHOWN_ZERO) if math.isfinite(worst[n][0]) else math.nan for n in names]
    colors = [FAIL_COLOR if worst[n][1] else PASS_COLOR for n in names]
    # One row per op, names in full: 60 ops' names rotated under narrow bars could not be read.
    return bar_chart(names, values, title="Op error on the target, as a multiple of the allowed error",
                     y_label="error / allowed (worst over shapes, forward and gradient)", log_y=True, threshold=1.0,
                     threshold_label="limit", colors=colors, horizontal=True, width=900)


def block_chart(blocks: list[dict], norm_factor: float) -> str:
    """Per block: target's gradient error over the reference's (both against float64); failing ones red."""
    labels = [b["block"] for b in blocks]
    vals = []
    for b in blocks:
        t, r = _num(b["grad"]["target"]["err"]), _num(b["grad"]["reference"]["err"])
        vals.append(t / r if r > 0 else (1.0 if t == 0 else math.inf))
    colors = [FAIL_COLOR if b.get("grad_fail") or b.get("output_fail") else PASS_COLOR for b in blocks]
    return bar_chart(labels, [max(v, 1e-3) if math.isfinite(v) else math.nan for v in vals],
                     title="Block parameter-gradient error, target / reference (vs float64)", y_label="x reference",
                     log_y=True, threshold=norm_factor if math.isfinite(_num(norm_factor)) else None,
                     threshold_label="limit", colors=colors, horizontal=len(blocks) > 8)


def layer_ratio_chart(layers: list[dict]) -> str:
    """Whole-model gradient norm per layer group, target / reference, in backprop order."""
    return bar_chart([r["group"] for r in layers], [_num(r["norm_ratio"]) for r in layers],
                     title="Per-layer gradient norm, target / reference (backprop order: head first)",
                     y_label="norm ratio", colors=[FAIL_COLOR if r.get("fail") else PASS_COLOR for r in layers],
                     horizontal=True)


def layer_error_chart(layers: list[dict]) -> str:
    """Whole-model relative gradient error per layer group, target and reference, both against float64."""
    xs = list(range(1, len(layers) + 1))
    return line_chart([Series("target", xs, [_num(r["target_err"]) for r in layers], TARGET_COLOR, dots=True),
                       Series("reference", xs, [_num(r["reference_err"]) for r in layers], REF_COLOR, dashed=True,
                              dots=True)],
                      title="Per-layer gradient error vs float64", x_label="layer group, in backprop order",
                      y_label="||g - g64|| / ||g64||", log_y=True)


def loss_chart(ev: dict) -> str:
    """Target and reference loss with the reference's tolerance band; incidents as markers."""
    n = ev.get("completed", len(ev.get("target_loss", [])))
    steps = ev["steps"]
    ref = [_num(v) for v in ev["reference_loss"]]
    band = [_num(v) for v in ev["band"]]
    env = Envelope(steps, [a - w for a, w in zip(ref, band)], [a + w for a, w in zip(ref, band)], REF_COLOR,
                   "reference band")
    marks = [Marker(i["step"], i["kind"].replace("_", " "), FAIL_COLOR, "solid", i.get("error", ""))
             for i in ev.get("incidents", [])]
    return line_chart([Series("reference", steps, ref, REF_COLOR),
                       Series("target", steps[:n], [_num(v) for v in ev["target_loss"]], TARGET_COLOR, dots=True)],
                      title="Training loss: target over the reference and its tolerance band", x_label="step",
                      y_label="loss", envelopes=[env], markers=marks, width=900, height=300)


def loss_gap_chart(ev: dict) -> str:
    """|target - reference| against the band's half-width, per step (log scale: the gap can span decades)."""
    n = ev.get("completed", len(ev.get("target_loss", [])))
    steps = ev["steps"]
    gap = [abs(_num(t) - _num(r)) for t, r in zip(ev["target_loss"], ev["reference_loss"])]
    spread = [abs(_num(a) - _num(b)) for a, b in zip(ev["reference_loss"], ev["perturbed_loss"])]
    return line_chart([Series("|target - reference|", steps[:n], gap, TARGET_COLOR, dots=True),
                       Series("band half-width", steps, [_num(v) for v in ev["band"]], FAIL_COLOR, dashed=True),
                       Series("|reference - perturbed reference|", steps, spread, REF_COLOR)],
                      title="Loss gap against the tolerance band", x_label="step", y_label="absolute difference",
                      log_y=True, width=900)


def peak_chart(peaks: dict[str, float]) -> str:
    """Measured dense matmul peak per dtype, with the perf-cliff line at 10% of fp32."""
    names = list(peaks)
    vals = [_num(peaks[n]) / 1e9 for n in names]
    base = _num(peaks.get("fp32")) if peaks.get("fp32") else max((v * 1e9 for v in vals if math.isfinite(v)),
                                                                  default=0.0)
    colors = [FAIL_COLOR if base and v * 1e9 < 0.1 * base else PASS_COLOR for v in vals]
    return bar_chart(names, vals, title="Dense matmul peak per dtype", y_label="GFLOP/s", log_y=True,
                     threshold=0.1 * base / 1e9 if base else None, threshold_label="10% of fp32", colors=colors,
                     width=520)
