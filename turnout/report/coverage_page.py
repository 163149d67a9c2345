"""The sdc-coverage page: detection rate by bit class and by op, escaped and harmful flips, false alarms."""

from __future__ import annotations

from pathlib import Path

from markupsafe import Markup

from turnout import atomic
from turnout.report.charts import bar_chart
from turnout.report.pages import guard, render
from turnout.report.rundir import CoverageDir


def _rate_chart(table: dict, title: str) -> Markup:
    labels = list(table)
    return Markup(bar_chart(labels, [100.0 * (table[k]["rate"] or 0.0) for k in labels], title=title,
                     y_label="detected, %", threshold=99.0, threshold_label="99%"))


def write_coverage_report(out: Path | str, result: dict) -> Path:
    """Write OUT/sdc-coverage.html from a campaign's result (atomic) and return its path."""
    folder = CoverageDir(out)
    text = render("coverage.html.j2", title=f"sdc coverage: {result.get('target', '')}", r=result,
                  bits=guard(_rate_chart, result.get("by_bit_class", {}), "Flips detected, by bit class"),
                  ops=guard(_rate_chart, result.get("by_op", {}), "Flips detected, by op (all bits)"))
    atomic.write_text(folder.report, text)
    return folder.report
