"""The run report's charts: loss with an event lane per target and target bands, and the training-health charts.

All curves use the surviving train lines (see run_data), so steps redone after a rollback show once. Shaded
bands say which target ran which steps. Events sit in the lane of the target that recorded them (a device
error on the chip stays in the chip's lane even when the step was later redone on cpu): detections red,
rollbacks and resumes blue, failovers green, injected faults grey, other actions orange.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from markupsafe import Markup

from turnout.report.charts import Band, LaneEvent, Series, bar_chart, event_timeline, heatmap, line_chart
from turnout.report.incidents import ACTIONS, DETECTIONS
from turnout.report.run_data import RunData
from turnout.report.values import as_float

# Light fills so curves stay readable on top; the first two match the usual sim-then-cpu story (blue, green).
TARGET_COLORS = ("#dbeafe", "#dcfce7", "#fef3c7", "#fce7f3", "#ede9fe", "#ccfbf1", "#ffedd5", "#e5e7eb")
# (colour, marker symbol, draw a line through the loss axes) per class of event
EVENT_STYLE = {"detection": ("#d62728", "v", True), "rollback": ("#1f77b4", "<", False),
               "failover": ("#2ca02c", "D", True), "injected": ("#7f7f7f", "x", False),
               "action": ("#ff7f0e", "s", False)}
MAX_EVENTS = 300  # past this the lane turns into a barcode; the events table still lists everything


@dataclass
class Fig:
    """One chart for a template: its SVG, a caption, or why there is nothing to draw."""

    svg: Markup | None = None
    caption: str = ""
    missing: str = ""


def _fig(svg: str, caption: str = "") -> Fig:
    return Fig(Markup(svg), caption)


def target_colors(targets: list[str]) -> dict[str, str]:
    """A fill colour per target, by order of first use (stable across regenerations of one run)."""
    return {t: TARGET_COLORS[i % len(TARGET_COLORS)] for i, t in enumerate(targets)}


def target_bands(rows: list[dict], colors: dict[str, str]) -> list[Band]:
    """Consecutive surviving steps on the same target as one band each; neighbours meet half-way between steps."""
    groups: list[list] = []  # [target, first step, last step]
    for m in rows:
        if groups and groups[-1][0] == m["target"]:
            groups[-1][2] = m["step"]
        else:
            groups.append([m["target"], m["step"], m["step"]])
    bands = []
    for i, (target, first, last) in enumerate(groups):
        x0 = first if i == 0 else (groups[i - 1][2] + first) / 2
        x1 = last if i == len(groups) - 1 else (last + groups[i + 1][1]) / 2
        bands.append(Band(x0, x1, target or "?", colors.get(target, TARGET_COLORS[-1])))
    return bands


_CLASS = {"failover": "failover", "rollback": "rollback", "resume": "rollback", "injected": "injected",
          **{k: "detection" for k in DETECTIONS}, **{k: "action" for k in ACTIONS - {"failover", "rollback", "resume"}}}


def _event_class(e: dict) -> str | None:
    """detection, rollback, failover, injected or action; None for what is not worth a mark (checkpoints,
    starts, ends, a loss check that agreed)."""
    if e["kind"] == "loss_check":
        return "action" if e.get("ok") is False else None
    return _CLASS.get(e["kind"])


def lane_events(events: list[dict]) -> list[LaneEvent]:
    """The events worth seeing on the loss chart, each in its target's lane, once per (kind, step, target)."""
    out, seen = [], set()
    for e in events:
        cls = _event_class(e)
        if cls is None or e["step"] is None:
            continue
        label = f"injected {e.get('fault', '?')}" if cls == "injected" else e["kind"]
        key = (label, e["step"], e["target"])
        if key in seen:
            continue
        seen.add(key)
        color, symbol, line = EVENT_STYLE[cls]
        out.append(LaneEvent(e["step"], e["target"] or "?", label, color, symbol, str(e.get("detail", "") or ""),
                             line=line))
    return out[:MAX_EVENTS]


def _xy(rows: list[dict], key: str, scale: float = 1.0) -> tuple[list, list]:
    """Steps and one metric's values (NaN where missing) from metric rows."""
    return [m["step"] for m in rows], [as_float(m.get(key)) * scale for m in rows]


def _used(ys: list) -> bool:
    """Whether a series carries information: some finite value other than zero (unused loss parts are 0)."""
    return any(math.isfinite(y) and y != 0 for y in ys)


def _spans_decades(ys: list) -> bool:
    """Whether positive values span more than ~a decade: a log axis over less shows one tick and flattens
    the curve, a linear one reads better."""
    pos = [y for y in ys if math.isfinite(y) and y > 0]
    return bool(pos) and max(pos) / min(pos) > 20


def loss_figure(data: RunData, colors: dict[str, str]) -> Fig:
    """Train and held-out loss over steps, target bands, and the event lanes above."""
    if not data.final_train and not data.final_evals:
        return Fig(missing="no data: metrics.jsonl has no train or eval lines yet")
    xs, ys = _xy(data.final_train, "loss")
    vx, vy = _xy(data.final_evals, "val_loss")
    series = [Series("train loss", xs, ys)]
    if _used(vy):
        series.append(Series("held-out loss", vx, vy, color="#ff7f0e", dots=True))
    svg = event_timeline(series, lanes=list(colors), events=lane_events(data.events),
                         bands=target_bands(data.final_train, colors), title="Loss", x_label="step",
                         y_label="loss")
    rolled = len(data.train) - len(data.final_train)
    return _fig(svg, f"{rolled} train line(s) were superseded by rollbacks and are not drawn." if rolled else "")


def _layer_norms(rows: list[dict]) -> list[Fig]:
    """Per-layer gradient norms: bars for the last step that logged them, lines over time when few layers."""
    rows = [m for m in rows if isinstance(m.get("grad_norm_layers"), dict) and m["grad_norm_layers"]]
    if not rows:
        return [Fig(missing="per-layer gradient norm: no data (the run logged no grad_norm_layers)")]
    last = rows[-1]
    names = [str(k) for k in last["grad_norm_layers"]]  # the loop writes them in model order; keep it
    vals = [as_float(last["grad_norm_layers"].get(k)) for k in names]
    # Log bars only when the norms span decades; over a narrow range log bars exaggerate small differences.
    figs = [_fig(bar_chart(names, vals, title=f"Gradient norm per layer, step {last['step']}",
                           y_label="grad norm", log_y=_spans_decades(vals), horizontal=True))]
    if len(names) <= 20:
        series = [Series(n, [m["step"] for m in rows], [as_float(m["grad_norm_layers"].get(n)) for m in rows])
                  for n in names]
        log_y = _spans_decades([y for s in series for y in s.ys])
        figs.append(_fig(line_chart(series, title="Gradient norm per layer over steps", x_label="step",
                                    y_label="grad norm", log_y=log_y)))
    return figs


def _expert_load(rows: list[dict]) -> list[Fig]:
    """Mean expert load per MoE layer x expert over the last 10% of steps that logged it, and its CV over time."""
    logged = [m for m in rows if isinstance(m.get("expert_load"), list) and m["expert_load"]]
    figs = []
    if logged:
        tail = logged[-max(1, math.ceil(len(logged) * 0.1)):]
        n_layers = max(len(m["expert_load"]) for m in tail)
        n_exp = max((len(r) for m in tail for r in m["expert_load"] if isinstance(r, list)), default=0)
        grid = []
        for li in range(n_layers):
            line = []
            for ei in range(n_exp):
                vals = [as_float(m["expert_load"][li][ei]) for m in tail if li < len(m["expert_load"])
                        and isinstance(m["expert_load"][li], list) and ei < len(m["expert_load"][li])]
                vals = [v for v in vals if math.isfinite(v)]
                line.append(sum(vals) / len(vals) if vals else math.nan)
            grid.append(line)
        steps = f"steps {tail[0]['step']}\u2013{tail[-1]['step']}" if len(tail) > 1 else f"step {tail[0]['step']}"
        figs.append(_fig(heatmap([f"MoE layer {i}" for i in range(n_layers)], [f"e{j}" for j in range(n_exp)],
                                 grid, title=f"Mean expert load ({steps})", fmt=".3f", x_label="expert",
                                 y_label="layer", vmin=0.0),
                         f"Fraction of routed tokens per expert; uniform routing is {1 / max(n_exp, 1):.3f}."))
    else:
        figs.append(Fig(missing="expert load: no data (the run logged no expert_load)"))
    xs, cv = _xy(rows, "expert_load_cv")
    if _used(cv):
        figs.append(_fig(line_chart([Series("expert load CV", xs, cv)], title="Expert load imbalance (CV)",
                                    x_label="step", y_label="coefficient of variation")))
    return figs


def health_figures(data: RunData, colors: dict[str, str]) -> dict[str, list[Fig]]:
    """The training-health charts, grouped under headings: optimiser and speed, gradients, expert routing."""
    rows = data.final_train
    if not rows:
        return {}
    bands = target_bands(rows, colors)
    general: list[Fig] = []

    def line(key: str, title: str, y_label: str, scale: float = 1.0, log_y: bool = False,
             optional: bool = False) -> None:
        xs, ys = _xy(rows, key, scale)
        if not (_used(ys) if optional else any(math.isfinite(y) for y in ys)):
            if not optional:
                general.append(Fig(missing=f"{title}: no data"))
            return
        general.append(_fig(line_chart([Series(title, xs, ys)], title=title, x_label="step", y_label=y_label,
                                       log_y=log_y and _spans_decades(ys), bands=bands)))

    line("lr", "Learning rate", "lr")
    line("grad_norm", "Global gradient norm", "grad norm", log_y=True)
    line("tokens_per_s", "Throughput", "tokens / s")
    line("mfu", "Model FLOPs utilisation", "MFU (%)", scale=100.0)
    line("step_time", "Step time", "seconds", optional=True)
    parts = [Series(k, *_xy(rows, k)) for k in ("ce", "mtp", "balance")]
    parts = [s for s in parts if _used(s.ys)]  # a part the model does not use is all zeros: no flat line
    if len(parts) > 1:
        general.append(_fig(line_chart(parts, title="Loss components", x_label="step", y_label="loss",
                                       bands=bands)))
    line("memory", "Accelerator memory (peak allocated)", "GiB", scale=1 / 2**30, optional=True)
    return {"Optimiser and speed": general, "Gradients per layer": _layer_norms(rows),
            "Expert routing": _expert_load(rows)}
