"""QDIR/report.html: the qualification for a person, drawn from the qualify.json dict alone.

One self-contained page in the run report's style: the verdict and the reasons that decided it, a row per
stage, then each stage's evidence (the per-op error chart, block and per-layer gradient charts, the loss curve
inside its tolerance band, collectives, performance) and the rules the stages applied.
"""

from __future__ import annotations

from pathlib import Path

from markupsafe import Markup

from turnout import atomic
from turnout.report import qualify_charts as charts
from turnout.report.pages import Guarded, environment, guard, render
from turnout.report.rundir import QualifyDir

VERDICT_CLASS = {"train-ready": "finished", "inference-only": "stopped", "unfit": "failed"}


def _chart(draw, *args) -> Guarded:
    g = guard(draw, *args)
    return Guarded(Markup(g.value)) if g.error is None else g


def _evidence_charts(r: dict) -> dict[str, dict[str, Guarded]]:
    """Every stage's charts, drawn up front so one bad number costs its chart only."""
    st = r.get("stages", {})
    rules = r.get("rules", {})
    out: dict[str, dict[str, Guarded]] = {}
    ops = st.get("ops", {}).get("evidence", {}).get("ops")
    if ops:
        out["ops"] = {"errors": _chart(charts.op_error_chart, ops)}
    ev = st.get("blocks", {}).get("evidence", {})
    out["blocks"] = {}
    if ev.get("blocks"):
        out["blocks"]["blocks"] = _chart(charts.block_chart, ev["blocks"], rules.get("norm_factor"))
    if ev.get("layers"):
        out["blocks"]["ratio"] = _chart(charts.layer_ratio_chart, ev["layers"])
        out["blocks"]["error"] = _chart(charts.layer_error_chart, ev["layers"])
    ev = st.get("training", {}).get("evidence", {})
    if "reference_loss" in ev:
        out["training"] = {"loss": _chart(charts.loss_chart, ev), "gap": _chart(charts.loss_gap_chart, ev)}
    ev = st.get("perf", {}).get("evidence", {})
    if ev.get("matmul_peak_flops"):
        out["perf"] = {"peak": _chart(charts.peak_chart, ev["matmul_peak_flops"])}
    return out


def render_qualify_report(r: dict) -> str:
    """The page's HTML for a qualify.json dict; a stage whose evidence the page cannot read says so alone."""
    rules, charts_by_stage = r.get("rules", {}), _evidence_charts(r)
    stage = environment().get_template("qualify_stage.html.j2")
    sections = [(name, guard(lambda name=name, st=st: Markup(stage.render(
        name=name, st=st, rules=rules, charts=charts_by_stage, shown_zero=charts.SHOWN_ZERO,
        missing_at=charts.MISSING_SHOWN_AT)))) for name, st in r.get("stages", {}).items()]
    model = r.get("model") if isinstance(r.get("model"), dict) else {}
    what = f" for {model['architecture']}" if model.get("architecture") else ""
    return render("qualify.html.j2", title=f"turnout qualify: {r.get('target')}{what} \u2014 {r.get('verdict')}", r=r,
                  rules=rules, sections=sections, verdict_class=VERDICT_CLASS,
                  golden_name=lambda p: Path(p).name if p else "")


def write_qualify_report(qdir: QualifyDir | Path | str, result: dict) -> Path:
    """Write QDIR/report.html atomically and return its path; `result` is the qualify.json dict."""
    qdir = qdir if isinstance(qdir, QualifyDir) else QualifyDir(qdir)
    return atomic.write_text(qdir.report, render_qualify_report(result))
