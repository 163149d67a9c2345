"""The run report: `write_report(RUN)` turns a run directory into one self-contained RUN/report.html.

The page is built only from the files the training loop leaves in the run directory (metrics.jsonl,
events.jsonl, run.json, config.toml, checkpoints/*/manifest.json), so it can be rebuilt at any time --
mid-run, after a crash, or long after (`turnout report RUN`). Sections: a header with the headline numbers
(status, targets, steps, losses, wall and productive time, goodput ETTR), the loss curve with events and target
bands (#loss), the incident timeline (#timeline), training-health charts (#charts), and the config and
checkpoints (#config). A section that meets input it cannot handle says so instead of failing the page.

    from turnout.train.report import summarize_run, write_report
    path = write_report(Path("runs/demo"))      # -> runs/demo/report.html
    numbers = summarize_run(Path("runs/demo"))  # the header numbers as a dict, no HTML involved
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from turnout import atomic
from turnout.train.plots_svg import esc
from turnout.train.report_charts import charts_section, loss_section, target_colors
from turnout.train.report_data import RunData, load_run, read_jsonl, summarize, summarize_run
from turnout.train.report_html import (Html, fmt_count, fmt_dur, fmt_offset, fmt_pct, fmt_utc, fmt_value, h, nodata,
                                       page, table)

__all__ = ["read_jsonl", "render_report", "summarize_run", "write_report"]

_SHOWN_EVENT_KEYS = {"step", "time", "kind", "target", "detail"}


def _safe(render: Callable[..., str], *args) -> str:
    """A section's HTML, or a visible note when it raised: one odd record must not cost the whole report."""
    try:
        return render(*args)
    except Exception as exc:  # noqa: BLE001 -- deliberately broad; the note names the error
        return f'<p class="warn">Could not render this section: {esc(type(exc).__name__)}: {esc(exc)}</p>'


def _card(key: str, value: object, note: str = "") -> str:
    n = f'<div class="n">{h(note)}</div>' if note else ""
    return f'<div class="card"><div class="k">{esc(key)}</div><div class="v">{h(value)}</div>{n}</div>'


def _header(data: RunData, s: dict, colors: dict[str, str]) -> str:
    """Run name, status, and the headline numbers as cards."""
    status = s["status"]
    chips = Html("".join(f'<span class="chip" style="background:{esc(colors.get(t, "#fff"))}">{esc(t)}</span>'
                         for t in s["targets"]) or "\u2014")
    val_note = f"at step {s['final_val_step']}" if s["final_val_step"] is not None else "no eval yet"
    undetected = len(s["undetected_injections"])
    inc_note = f"{undetected} injected fault(s) not detected" if undetected else ""
    params = fmt_count(s["params"]) + (f" / {fmt_count(s['active_params'])} active" if s["active_params"] else "")
    cards = [
        _card("Status", Html(f'<span class="badge {esc(status)}">{esc(status)}</span>'), s["status_detail"]),
        _card("Targets", chips, ("fallback: " + ", ".join(map(str, s["fallback"]))) if s["fallback"] else ""),
        _card("Steps", s["steps"], f"{s['superseded_lines']} redone after rollbacks" if s["superseded_lines"] else ""),
        _card("Final loss", fmt_value(s["final_loss"])),
        _card("Held-out loss", fmt_value(s["final_val_loss"]), val_note),
        _card("Wall time", fmt_dur(s["wall_time"]), "last record \u2212 start"),
        _card("Productive time", fmt_dur(s["productive_time"]), "step time of surviving steps"),
        _card("Goodput (ETTR)", fmt_pct(s["ettr"]), "productive / wall time"),
        _card("Incidents", len(s["incidents"]), inc_note),
        _card("Throughput", fmt_value(s["tokens_per_s"], 3) + " tok/s" if s["tokens_per_s"] is not None
              else "\u2014", f"MFU {fmt_pct(s['mfu'])}, last 10% of steps"),
        _card("Parameters", params),
    ]
    warn = ""
    if s["skipped_lines"]:
        warn = (f'<p class="warn">{s["skipped_lines"]} unreadable line(s) in metrics.jsonl/events.jsonl were '
                "skipped (e.g. a last line cut short when the process was killed).</p>")
    nav = "".join(f'<a href="#{i}">{t}</a>' for i, t in (("loss", "Loss"), ("timeline", "Timeline"),
                                                          ("charts", "Charts"), ("config", "Config")))
    return (f"<h1>Run report: {esc(s['name'])}</h1>\n"
            f'<p class="sub">{esc(s["run_dir"])} \u00b7 started {esc(fmt_utc(s["started"]))}</p>\n'
            f"<nav>{nav}</nav>\n" + '<div class="cards">' + "".join(cards) + "</div>" + warn)


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


def _timeline(data: RunData, s: dict) -> str:
    """Incident table (detection, cause, time to detect/recover, steps lost, action) and the full event log."""
    t0 = s["started"]
    out = []
    if s["incidents"]:
        rows = [[fmt_value(i["step"]), i["kind"], i["target"], i["detail"],
                 f"{i['injected_fault']} @ step {fmt_value(i['injected_step'])}" if i["injected_fault"] else "\u2014",
                 fmt_dur(i["ttd"]), fmt_dur(i["ttr"]), fmt_value(i["steps_lost"]), _actions_text(i)]
                for i in s["incidents"]]
        out.append(table(["Step", "Detected", "Target", "Detail", "Injected fault", "Time to detect",
                          "Time to recover", "Steps lost", "Action taken"], rows, numeric=(0, 5, 6, 7)))
        out.append('<p class="sub">Time to detect: detection \u2212 the injected fault of the same kind before it. '
                   "Time to recover: first train step after the recovery \u2212 detection. Steps lost: detection "
                   "step \u2212 the step training resumed from.</p>")
    elif data.events:
        out.append(nodata("no incidents: no detection events were recorded"))
    else:
        out.append(nodata("no data: events.jsonl is missing or empty"))
    if s["undetected_injections"]:
        out.append('<h3>Injected faults without a matching detection</h3>')
        out.append(table(["Step", "Time", "Fault", "Target", "Detail"],
                         [[fmt_value(u["step"]), fmt_offset(u["time"], t0), str(u["fault"]), u["target"],
                           u["detail"]] for u in s["undetected_injections"]], numeric=(0,)))
    if data.events:
        rows = []
        for e in data.events:
            extra = {k: v for k, v in e.items() if k not in _SHOWN_EVENT_KEYS}
            rows.append([fmt_value(e["step"]), fmt_offset(e["time"], t0), e["kind"], e["target"],
                         str(e.get("detail", "") or ""), json.dumps(extra, default=str) if extra else ""])
        out.append(f"<details><summary>All events ({len(data.events)})</summary>"
                   + table(["Step", "Time", "Kind", "Target", "Detail", "Other fields"], rows, numeric=(0,))
                   + "</details>")
    return "\n".join(out)


def _config(data: RunData, s: dict) -> str:
    """The run's config and run.json (collapsed) and its checkpoints."""
    out = []
    if data.config_text is not None:
        out.append(f"<details><summary>config.toml</summary><pre>{esc(data.config_text)}</pre></details>")
    else:
        out.append(nodata("no data: config.toml is missing"))
    if data.info:
        text = json.dumps(data.info, indent=2, default=str)
        out.append(f"<details><summary>run.json</summary><pre>{esc(text)}</pre></details>")
    out.append('<h3 id="checkpoints">Checkpoints</h3>')
    if data.checkpoints:
        t0 = s["started"] if s else None
        out.append(table(["Step", "Time", "Target", "Samples", "Path", "Manifest"],
                         [[c["step"], fmt_offset(c["time"], t0), c["target"], fmt_value(c["samples"]), c["path"],
                           c["manifest"]] for c in data.checkpoints], numeric=(0, 3)))
    else:
        out.append(nodata("no checkpoints"))
    return "\n".join(out)


def _section(sid: str, title: str, body: str) -> str:
    return f'<section id="{sid}">\n<h2>{esc(title)}</h2>\n{body}\n</section>'


def render_report(run_dir: Path | str, now: float | None = None) -> str:
    """The report's HTML for a run directory (write_report saves it); never raises on odd run files."""
    run_dir = Path(run_dir)
    try:
        data = load_run(run_dir)
    except Exception:  # noqa: BLE001 -- an unreadable directory still gets a page that says "no data"
        data = RunData(run_dir=run_dir)
    try:
        s = summarize(data, now)
    except Exception:  # noqa: BLE001 -- the header and timeline sections then report the problem themselves
        s = None
    colors = target_colors(s["targets"] if s else [])
    name = s["name"] if s else run_dir.name
    header = _safe(_header, data, s, colors)
    body = "\n".join([
        f'<header id="summary">\n{header}\n</header>',
        _section("loss", "Loss", _safe(loss_section, data, colors)),
        _section("timeline", "Incident timeline", _safe(_timeline, data, s)),
        _section("charts", "Training health", _safe(charts_section, data, colors)),
        _section("config", "Config and checkpoints", _safe(_config, data, s)),
        "<footer>Built by turnout from the files in this run directory only; rebuild it any time with "
        "<code>turnout report RUN</code>.</footer>",
    ])
    return page(f"turnout run report: {name}", body)


def write_report(run_dir: Path | str, now: float | None = None) -> Path:
    """Write RUN/report.html atomically (temp file + os.replace) and return its path.

    Missing or partial run files give "no data" sections, never an exception; only a run directory that does
    not exist (nowhere to write) raises FileNotFoundError. `now` fixes the clock for the running/failed status.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"run directory not found: {run_dir}")
    text = render_report(run_dir, now)
    return atomic.write_text(run_dir / "report.html", text)
