"""The run report: `write_run_report(RUN)` turns a run folder into one self-contained RUN/report.html.

The page is built only from the files the run leaves in its folder (see RunDir), so it can be rebuilt at any
time: mid-run, after a crash, or long after (`turnout report RUN`). Sections: the headline numbers (status,
targets, steps, losses, wall and productive time, goodput), the loss chart with event lanes and target bands
(#loss), the incident timeline (#timeline), training-health charts (#charts), and config and checkpoints
(#config). A section that meets input it cannot handle says so instead of failing the page.
"""

from __future__ import annotations

import json
from pathlib import Path

from turnout import atomic
from turnout.report.pages import guard, render
from turnout.report.run_charts import health_figures, loss_figure, target_colors
from turnout.report.run_data import RunData, load_run, summarize
from turnout.report.rundir import RunDir
from turnout.report.values import DASH, fmt_dur, fmt_value

_SHOWN_EVENT_KEYS = {"step", "time", "kind", "target", "detail"}


def _actions_text(inc: dict) -> str:
    """What the loop did about an incident, in one line."""
    parts = []
    for a in inc["actions"]:
        text = a["kind"] + (f" [{a['target']}]" if a["target"] else "")
        if a.get("to_step") is not None:
            text += f" to step {a['to_step']}"
        if a["detail"]:
            text += f": {a['detail']}"
        parts.append(text)
    if inc["loss_check_ok"] is not None:
        parts.append("loss check " + ("ok" if inc["loss_check_ok"] else "FAILED"))
    return "; ".join(parts) or "none recorded"


def _incidents(s: dict) -> list[dict]:
    """Incident rows: the short facts in columns, the detection's detail and the actions' text beneath."""
    rows = []
    for i in s["incidents"]:
        kinds = [a["kind"] for a in i["actions"]] + ([] if i["loss_check_ok"] is None else ["loss_check"])
        rows.append({"step": fmt_value(i["step"]), "kind": i["kind"], "target": i["target"],
                     "injected": f"{i['injected_fault']} @ {fmt_value(i['injected_step'])}"
                     if i["injected_fault"] else DASH,
                     "ttd": fmt_dur(i["ttd"]), "ttr": fmt_dur(i["ttr"]), "lost": fmt_value(i["steps_lost"]),
                     "action": " \u2192 ".join(dict.fromkeys(kinds)) or DASH, "detail": i["detail"],
                     "actions_text": _actions_text(i)})
    return rows


def _events(data: RunData) -> list[dict]:
    return [{"step": fmt_value(e["step"]), "time": e["time"], "kind": e["kind"], "target": e["target"],
             "detail": str(e.get("detail", "") or ""),
             "other": json.dumps({k: v for k, v in e.items() if k not in _SHOWN_EVENT_KEYS}, default=str)}
            for e in data.events]


def render_run_report(run_dir: Path | str, now: float | None = None) -> str:
    """The report's HTML for a run folder (write_run_report saves it); never raises on odd run files."""
    run = RunDir(run_dir)
    loaded = guard(load_run, run)
    data = loaded.value if loaded.error is None else RunData(run_dir=run.root)
    s = guard(summarize, data, now)
    colors = target_colors(s.value["targets"] if s.error is None else [])
    return render("run.html.j2", title=f"turnout run report: {s.value['name'] if s.error is None else run.root.name}",
                  s=s, data=data, colors=colors, load_error=loaded.error,
                  loss=guard(loss_figure, data, colors), health=guard(health_figures, data, colors),
                  incidents=guard(_incidents, s.value) if s.error is None else s, events=_events(data),
                  info_json=json.dumps(data.info, indent=2, default=str) if data.info else "")


def write_run_report(run_dir: Path | str, now: float | None = None) -> Path:
    """Write RUN/report.html atomically and return its path.

    Missing or partial run files give "no data" sections, never an exception; only a run folder that does
    not exist (nowhere to write) raises FileNotFoundError. `now` fixes the clock for the running/failed status.
    """
    run = RunDir(run_dir)
    if not run.root.is_dir():
        raise FileNotFoundError(f"run directory not found: {run.root}")
    return atomic.write_text(run.report, render_run_report(run.root, now))

