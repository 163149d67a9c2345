"""The demo's one page: verdicts, the run (loss curve with events and targets), the parity certificate, completions,
each linking to its full report. Self-contained HTML beside the files it links."""

from __future__ import annotations

import json
from pathlib import Path

from turnout import atomic
from turnout.train.report_charts import loss_section, target_colors
from turnout.train.report_data import load_run, summarize
from turnout.train.report_html import Html, fmt_dur, fmt_pct, fmt_value, nodata, page, table


def _link(href: str, text: str) -> Html:
    return Html(f'<a href="{href}">{text}</a>')


def _qualify(out: Path, story: dict) -> str:
    rows = []
    for target, q in story.get("qualify", {}).items():
        report = Path(q["dir"]) / "report.html"
        reasons = "; ".join(q.get("reasons") or []) or "\u2014"
        rows.append([target, (q.get("verdict") or "not run").upper(), reasons,
                     _link(str(report), "report") if (out / report).is_file() else "\u2014"])
    return table(["target", "verdict", "reasons", "evidence"], rows) if rows else nodata("qualification skipped")


def _run(out: Path) -> str:
    run_dir = out / "run"
    if not (run_dir / "metrics.jsonl").is_file():
        return nodata("no training run")
    data = load_run(run_dir)
    s = summarize(data)
    colors = target_colors(s["targets"] or [])
    incidents = [[i["step"], i["kind"], i["target"], fmt_dur(i.get("ttd")), fmt_dur(i.get("ttr")),
                  "\u2014" if i.get("steps_lost") is None else i["steps_lost"],
                  ", ".join(a["kind"] for a in i.get("actions", [])) or "\u2014"] for i in s["incidents"]]
    facts = table(["steps", "targets", "final loss", "held-out loss", "wall time", "goodput (ETTR)"],
                  [[s["steps"], " \u2192 ".join(s["targets"]), fmt_value(s["final_loss"]),
                    fmt_value(s["final_val_loss"]), fmt_dur(s["wall_time"]), fmt_pct(s["ettr"])]])
    return (facts + loss_section(data, colors) + "<h3>Incidents</h3>" +
            (table(["step", "detected", "target", "time to detect", "time to recover", "steps lost", "action"],
                   incidents, numeric=(0, 5)) if incidents else nodata("no incidents")) +
            f"<p>{_link('run/report.html', 'Full run report')} (timeline, all events, training-health charts)</p>")


def _certificate(out: Path, story: dict) -> str:
    name = story.get("certificate")
    if not name:
        return nodata("no parity certificate")
    cert = json.loads((out / "run" / name).read_text())
    rows = [[c["name"], fmt_value(c["value"]), c["rule"], "ok" if c["ok"] else "FAIL"] for c in cert["checks"]]
    head = (f"<p><b>{'PASS' if cert['passed'] else 'FAIL'}</b>: {cert['a']['target']} vs {cert['b']['target']} "
            f"on weights sha256 {cert['model']['sha256'][:16]}\u2026 (trained on {cert['model'].get('trained_on')}); "
            f"{_link('run/' + name, 'certificate JSON')}</p>")
    return head + table(["check", "value", "rule", "result"], rows)


def _completions(story: dict) -> str:
    rows = [[c["prompt"], c["completion"]] for c in story.get("completions", [])]
    where = f"served on {story['target']} through /v1/completions"
    return (f"<p>{where}</p>" + table(["prompt", "completion"], rows)) if rows else nodata("not served")


def write_story(out: Path, story: dict) -> Path:
    """Write OUT/index.html for the demo and return its path (atomic)."""
    body = (f"<h1>turnout demo: training on an unproven accelerator</h1>"
            f"<p>The emulated chip <b>{story['target']}</b> was qualified, trained on anyway with "
            f"<b>{story['fallback']}</b> as fallback, and used to serve the model once a parity certificate "
            f"proved it computes the trained model's logits like {story['fallback']} does.</p>"
            f'<section id="qualify"><h2>1. Qualification</h2>{_qualify(out, story)}</section>'
            f'<section id="run"><h2>2. Training with failover</h2>{_run(out)}</section>'
            f'<section id="parity"><h2>3. Parity certificate</h2>{_certificate(out, story)}</section>'
            f'<section id="serve"><h2>4. Serving</h2>{_completions(story)}</section>')
    path = atomic.write_text(out / "index.html", page("turnout demo", body))
    atomic.write_json(out / "story.json", story)
    return path
