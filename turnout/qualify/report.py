"""DIR/report.html: the qualification for a person, drawn from the qualify.json dict alone.

One self-contained page (inline CSS and SVG, nothing fetched) in the run report's style: the verdict and the
reasons that decided it, a row per stage, then each stage's evidence -- the per-op error chart, block and
per-layer gradient charts, the loss curve inside its tolerance band, collectives, performance -- and the rules.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

from turnout import atomic
from turnout.qualify import report_charts as charts
from turnout.qualify.numerics import MAXREL_FACTOR, NORM_FACTOR, RATIO_FACTOR, RATIO_FLOOR
from turnout.qualify.training import FLOOR_ULPS, NOISE_ULPS, SAFETY
from turnout.train.plots_svg import esc
from turnout.train.report_html import Html, fmt_dur, fmt_utc, fmt_value, nodata, page, table

VERDICT_STYLE = {"train-ready": "background:#dcfce7;color:#166534", "inference-only":
                 "background:#fef3c7;color:#92400e", "unfit": "background:#fee2e2;color:#991b1b"}
STATUS_CLASS = {"pass": "ok", "fail": "bad", "skipped": "sub"}


def _safe(fn: Callable[..., str], *args) -> str:
    try:
        return fn(*args)
    except Exception as e:  # noqa: BLE001 - one odd number must not cost the whole page
        return f'<p class="warn">Could not draw this: {esc(type(e).__name__)}: {esc(e)}</p>'


def _fig(svg: str, caption: str) -> str:
    return f"<figure>{svg}<figcaption>{esc(caption)}</figcaption></figure>"


def _status(s: str) -> Html:
    return Html(f'<span class="{STATUS_CLASS.get(s, "")}">{esc(s)}</span>')


def _header(r: dict) -> str:
    v = r["verdict"]
    badge = f'<span class="badge" style="{VERDICT_STYLE.get(v, "")};font-size:18px">{esc(v)}</span>'
    reasons = "".join(f"<li>{esc(x)}</li>" for x in r["reasons"])
    rows = [[Html(f'<a href="#{n}">{esc(st["title"])}</a>'), _status(st["status"]), fmt_dur(st["seconds"]),
             st["summary"]] for n, st in r["stages"].items()]
    warn = ""
    if r.get("warnings"):
        warn = "<h3>Warnings (reported, not deciding)</h3><ul>" + "".join(
            f"<li>{esc(w)}</li>" for w in r["warnings"]) + "</ul>"
    golden = r["stages"].get("training", {}).get("evidence", {}).get("golden")
    gline = ""
    if golden:
        gline = (f" \u00b7 reference curve {'reused from golden file' if golden.get('reused') else 'computed'}"
                 f"{' (' + Path(golden['path']).name + ')' if golden.get('path') else ''}")
    return (f"<h1>Qualification: {esc(r['target'])}</h1>\n"
            f'<p class="sub">against {esc(r["reference"])} and float64 \u00b7 {esc(fmt_utc(r["started"]))} \u00b7 '
            f'{esc(fmt_dur(r["seconds"]))} \u00b7 torch {esc(r["torch"])} \u00b7 {esc(r["host"])}{esc(gline)}</p>\n'
            f"<p>Verdict: {badge}</p><ul>{reasons}</ul>\n"
            + table(["Stage", "Status", "Time", "Summary"], rows, numeric=(2,)) + warn)


def _caps(st: dict) -> str:
    ev = st["evidence"]
    if not ev.get("dtypes"):
        return nodata(st["summary"] or "no data")
    rows = [[d, "yes" if v["works"] else "no", v["error"] or ""] for d, v in ev["dtypes"].items()]
    mem = ev.get("memory", {})
    facts = table(["Key", "Value"], [["device", ev.get("device_name")], ["compute dtype", ev.get("compute_dtype")],
                                     ["collective backend", ev.get("collective")],
                                     ["model parameters", fmt_value(ev.get("params"))],
                                     ["memory total (bytes)", fmt_value(mem.get("total"))],
                                     ["refusals", "; ".join(ev.get("refusals", [])) or "none"]])
    return table(["dtype", "runs", "error"], rows) + facts


def _ops(st: dict) -> str:
    ev = st["evidence"]
    ops = ev.get("ops")
    if not ops:
        return nodata(st["summary"] or "no data")
    out = [_fig(_safe(charts.op_error_chart, ops),
                f"Bars: the target's error against float64 divided by what the rule allows it: error ratio over "
                f"max({RATIO_FACTOR:g} x the reference's ratio, {RATIO_FLOOR:g}), or max relative error over "
                f"max({MAXREL_FACTOR:g} x the reference's, rtol), whichever is larger. Above the dashed line (1) "
                f"the op fails (red); missing ops are drawn at 10, exact results at {charts.SHOWN_ZERO:g}.")]
    bad = [o for o in ops if o["status"] != "pass"]
    if bad:
        rows = []
        for o in bad[:60]:
            f, b = o.get("forward") or {}, o.get("backward") or {}
            rows.append([o["op"], ", ".join(o["uses"]), o["args"], o["status"],
                         fmt_value((f.get("target") or {}).get("ratio")), fmt_value((f.get("reference") or {}).get(
                             "ratio")), fmt_value((f.get("target") or {}).get("max_rel")),
                         fmt_value((b.get("target") or {}).get("ratio")),
                         f.get("fail") or b.get("fail") or o.get("error") or ""])
        out.append("<h3>Ops that do not pass</h3>" + table(
            ["Op", "Use", "Inputs", "Status", "Ratio (target)", "Ratio (ref)", "Max rel (target)", "Grad ratio",
             "Why"], rows, numeric=(4, 5, 6, 7)))
    rows = [[o["op"], ", ".join(o["uses"]), o["args"], o["status"],
             fmt_value(((o.get("forward") or {}).get("target") or {}).get("max_rel")),
             fmt_value(((o.get("forward") or {}).get("reference") or {}).get("max_rel")),
             fmt_value(o.get("seconds_target")), fmt_value(o.get("seconds_reference"))] for o in ops]
    out.append(f"<details><summary>All {len(ops)} traced calls</summary>" + table(
        ["Op", "Use", "Inputs", "Status", "Max rel (target)", "Max rel (ref)", "s (target)", "s (ref)"], rows,
        numeric=(4, 5, 6, 7)) + "</details>")
    return "\n".join(out)


def _blocks(st: dict) -> str:
    ev = st["evidence"]
    out = []
    if ev.get("blocks"):
        out.append(_fig(_safe(charts.block_chart, ev["blocks"]),
                        f"Each block alone, same weights, input and upstream gradient. A block fails when its "
                        f"error exceeds max({NORM_FACTOR:g} x the reference's, a dtype floor)."))
        out.append(table(["Block", "Output err (target)", "Output err (ref)", "Grad err (target)", "Grad err (ref)",
                          "Grad norm ratio", "Cosine", "Worst parameter"],
                         [[b["block"], fmt_value(b["output"]["target"]["err"]), fmt_value(b["output"]["reference"]
                                                                                          ["err"]),
                           fmt_value(b["grad"]["target"]["err"]), fmt_value(b["grad"]["reference"]["err"]),
                           fmt_value(b["grad_norm_ratio"], 7), fmt_value(b["grad_cosine_vs_reference"], 7),
                           b["worst_param"] or ""] for b in ev["blocks"]], numeric=(1, 2, 3, 4, 5, 6)))
    if ev.get("layers"):
        out.append(_fig(_safe(charts.layer_ratio_chart, ev["layers"]),
                        "Whole model, one step from identical weights and batch (StepRunner.compute on both)."))
        out.append(_fig(_safe(charts.layer_error_chart, ev["layers"]),
                        "Gradient error growing along the backprop order is the signature of a bad backward "
                        "kernel (Ascend/pytorch#107)."))
    return "\n".join(out) or nodata(st["summary"] or "no data")


def _determinism(st: dict) -> str:
    ev = st["evidence"]
    if "plain" not in ev:
        return nodata(st["summary"] or "no data")
    rows = [["plain", ev["plain"]["runs"], "yes" if ev["plain"]["bitwise"] else "no",
             fmt_value(ev["plain"]["max_ulp"]), fmt_value(ev["plain"]["max_rel"])]]
    d = ev.get("deterministic_mode")
    if d:
        rows.append(["use_deterministic_algorithms(True)", d["runs"], "yes" if d["bitwise"] else "no",
                     fmt_value(d["max_ulp"]), fmt_value(d["max_rel"])])
    return table(["Mode", "Runs", "Bitwise identical", "Max ulp", "Max relative"], rows, numeric=(1, 3, 4))


def _training(st: dict) -> str:
    ev = st["evidence"]
    if "reference_loss" not in ev:
        return nodata(st["summary"] or "no data")
    g = ev.get("golden", {})
    note = (f"Reference curve {'reused from' if g.get('reused') else 'computed and stored in'} "
            f"{g.get('path') or '(not stored)'} (key {g.get('key')}).")
    out = [f'<p class="sub">{esc(note)}</p>',
           _fig(_safe(charts.loss_chart, ev), f"Band: reference \u00b1 ({SAFETY:g} x the running max of |reference - "
                f"perturbed reference| + {FLOOR_ULPS:g} ulp of the loss). The perturbed reference moves every op "
                f"result by up to {NOISE_ULPS} ulp, as a correct device that rounds differently would."),
           _fig(_safe(charts.loss_gap_chart, ev), "The target passes while its gap stays under the dashed line.")]
    if ev.get("layers"):
        out.append(table(["Layer group", "Steps outside band", "Max gap / band", "Fails"],
                         [[r["group"], r["outside"], fmt_value(r["max_excess"]), "yes" if r["fail"] else "no"]
                          for r in ev["layers"]], numeric=(1, 2)))
    if ev.get("incidents"):
        out.append("<h3>Incidents</h3>" + table(["Step", "Kind", "Error", "Re-run ok"], [
            [i["step"], i["kind"], i["error"], fmt_value(i.get("retried_ok"))] for i in ev["incidents"]],
            numeric=(0,)))
    return "\n".join(out)


def _collectives(st: dict) -> str:
    ev = st["evidence"]
    if not ev.get("ranks"):
        return nodata(st["summary"] or "no data")
    rows = [[r["op"], r["numel"], r["rank"], "yes" if r.get("ok") else "NO", fmt_value(r.get("seconds")),
             r.get("error", "")] for rk in ev["ranks"] for r in rk["results"]]
    bw = ev.get("bandwidth") or {}
    extra = (f'<p class="sub">all_reduce of {fmt_value(bw.get("bytes"))} bytes: {fmt_value(bw.get("seconds"))} s, '
             f'bus bandwidth {fmt_value(bw.get("busbw_GBps"))} GB/s</p>') if bw else ""
    return extra + table(["Collective", "Elements", "Rank", "Correct", "Seconds", "Error"], rows, numeric=(1, 2, 4))


def _perf(st: dict) -> str:
    ev = st["evidence"]
    if not ev.get("matmul_peak_flops"):
        return nodata(st["summary"] or "no data")
    out = [_fig(_safe(charts.peak_chart, ev["matmul_peak_flops"]), "A dtype below the dashed line is a perf cliff.")]
    out.append(table(["Measure", "Target", "Reference"], [
        ["tokens/s", fmt_value(ev["target_tokens_per_s"]), fmt_value(ev["reference_tokens_per_s"])],
        ["step seconds", fmt_value(ev["target_step_seconds"]), fmt_value(ev["reference_step_seconds"])],
        ["MFU (vs measured peak)", fmt_value(ev.get("mfu")), ""]], numeric=(1, 2)))
    if ev.get("op_cliffs"):
        out.append("<h3>Slow ops</h3>" + table(["Op", "Inputs", "s (target)", "s (ref)", "Ratio", "Host fallback"], [
            [c["op"], c["args"], fmt_value(c["seconds_target"]), fmt_value(c["seconds_reference"]),
             fmt_value(c["ratio"]), "yes" if c["fallback"] else ""] for c in ev["op_cliffs"][:40]],
            numeric=(2, 3, 4)))
    return "\n".join(out)


def _sim(r: dict) -> str:
    sim = r.get("sim")
    if not sim:
        return ""
    rows = [[fmt_value(e["step"]), e["kind"], e["op"] or "", e["detail"]] for e in sim["events"]]
    body = (f'<p class="sub">{esc(sim["description"])} ({esc(sim["profile"])}). Injected during qualification: '
            f'{esc(json.dumps(sim["injected"]) if sim["injected"] else "nothing")}.</p>'
            + (table(["Step", "Kind", "Op", "Detail"], rows, numeric=(0,)) if rows else ""))
    return f'<section id="sim"><h2>Emulated faults (ground truth)</h2>\n{body}</section>'


_SECTIONS = {"capabilities": _caps, "ops": _ops, "blocks": _blocks, "determinism": _determinism,
             "training": _training, "collectives": _collectives, "perf": _perf}


def render_report(r: dict) -> str:
    """The report's HTML for a qualify.json dict."""
    parts = [f'<header id="summary">{_safe(_header, r)}</header>']
    for name, st in r["stages"].items():
        body = _safe(_SECTIONS[name], st) if name in _SECTIONS and st["status"] != "skipped" else ""
        extra = "".join(f'<p class="warn">{esc(w)}</p>' for w in st.get("warnings", []))
        reasons = "".join(f'<p class="bad">{esc(x)}</p>' for x in st.get("reasons", []))
        parts.append(f'<section id="{esc(name)}"><h2>{esc(st["title"])} \u2014 {_status(st["status"])}</h2>'
                     f'<p class="sub">{esc(st["summary"])}</p>{reasons}{extra}\n{body}</section>')
    parts.append(_sim(r))
    parts.append(f"<footer>Written by <code>turnout qualify</code>; the numbers are in qualify.json next to this "
                 f"file. Rules: op error ratio \u2264 max({RATIO_FACTOR:g} x reference, {RATIO_FLOOR:g}); max "
                 f"relative error \u2264 {MAXREL_FACTOR:g} x reference or \u2264 rtol; block and layer gradient "
                 f"error \u2264 max({NORM_FACTOR:g} x reference, dtype floor); training loss within reference "
                 f"\u00b1 ({SAFETY:g} x perturbation spread + {FLOOR_ULPS:g} ulp).</footer>")
    return page(f"turnout qualify: {r['target']} \u2014 {r['verdict']}", "\n".join(parts))


def write_report(out_dir: Path | str, result: dict) -> Path:
    """Write OUT/report.html atomically and return its path."""
    out = Path(out_dir)
    text = render_report(json.loads(json.dumps(result, default=str)))
    return atomic.write_text(out / "report.html", text)
