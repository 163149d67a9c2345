"""The demo's one page: verdicts, the run (loss chart with event lanes), the parity certificate and the
completions served, each linking to its full report. Self-contained HTML beside the files it links."""

from __future__ import annotations

from pathlib import Path

from turnout import atomic
from turnout.report.pages import guard, render
from turnout.report.run_charts import loss_figure, target_colors
from turnout.report.run_data import load_run, summarize
from turnout.report.rundir import DemoDir, read_json_object


def _qualifications(demo: DemoDir, story: dict) -> list[dict]:
    rows = []
    for target, q in story.get("qualify", {}).items():
        report = demo.qualification(target).report
        rows.append({"target": target, "verdict": (q.get("verdict") or "not run").upper(),
                     "reasons": "; ".join(q.get("reasons") or []) or "\u2014",
                     "href": str(report.relative_to(demo.root)) if report.is_file() else None})
    return rows


def _run(demo: DemoDir) -> dict | None:
    run = demo.run
    if not run.metrics.is_file():
        return None
    data = load_run(run)
    s = summarize(data)
    colors = target_colors(s["targets"] or [])
    return {"s": s, "loss": guard(loss_figure, data, colors), "href": str(run.report.relative_to(demo.root))}


def write_story(out: Path | str, story: dict) -> Path:
    """Write DEMO/index.html and DEMO/story.json (both atomic) and return the page's path."""
    demo = DemoDir(out)
    cert_path = demo.run.root / story["certificate"] if story.get("certificate") else None
    cert = read_json_object(cert_path) if cert_path else None
    text = render("demo.html.j2", title="turnout demo", story=story, qualify=_qualifications(demo, story),
                  run=guard(_run, demo), cert=cert, cert_href=str(cert_path.relative_to(demo.root)) if cert else "")
    atomic.write_json(demo.story, story)
    return atomic.write_text(demo.index, text)
