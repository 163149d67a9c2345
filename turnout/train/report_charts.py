"""The report's charts: the loss curve with event markers and target bands, and the training-health charts.

All curves use the surviving train lines (see report_data), so steps redone after a rollback show once, as
redone. Shaded bands say which accelerator target ran which steps; vertical markers place the events:
detections red, rollbacks/resumes blue, failovers green, injected faults grey dashed, other actions orange dotted.
"""

from __future__ import annotations

import math

from turnout.train.plots import Band, Marker, Series, bar_chart, heatmap, line_chart
from turnout.train.plots_svg import as_float, esc
from turnout.train.report_data import RunData
from turnout.train.report_html import nodata, swatch
from turnout.train.report_incidents import ACTIONS, DETECTIONS

# Light fills so curves stay readable on top; the first two match the usual sim-then-cpu story (blue, green).
TARGET_COLORS = ("#dbeafe", "#dcfce7", "#fef3c7", "#fce7f3", "#ede9fe", "#ccfbf1", "#ffedd5", "#e5e7eb")
DETECT_COLOR, ROLLBACK_COLOR, FAILOVER_COLOR = "#d62728", "#1f77b4", "#2ca02c"
INJECT_COLOR, ACTION_COLOR = "#7f7f7f", "#ff7f0e"
MAX_MARKERS = 300  # past this the loss chart turns into a barcode; the events table still lists everything


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


def event_markers(events: list[dict]) -> list[Marker]:
    """Markers for the events worth seeing on a curve (not checkpoints, starts or ends)."""
    out = []
    for e in events:
        kind, step = e["kind"], e["step"]
        if step is None:
            continue
        detail = " ".join(p for p in (e["target"] and f"[{e['target']}]", str(e.get("detail", "") or "")) if p)
        if kind in DETECTIONS:
            out.append(Marker(step, kind, DETECT_COLOR, "solid", detail))
        elif kind == "failover":
            out.append(Marker(step, kind, FAILOVER_COLOR, "solid", detail))
        elif kind in ("rollback", "resume"):
            out.append(Marker(step, kind, ROLLBACK_COLOR, "solid", detail))
        elif kind == "injected":
            out.append(Marker(step, f"injected {e.get('fault', '?')}", INJECT_COLOR, "dashed", detail))
        elif kind in ACTIONS or (kind == "loss_check" and e.get("ok") is False):
            out.append(Marker(step, kind, ACTION_COLOR, "dotted", detail))
    return out[:MAX_MARKERS]


def _xy(rows: list[dict], key: str, scale: float = 1.0) -> tuple[list, list]:
    """Steps and one metric's values (NaN where missing) from metric rows."""
    return [m["step"] for m in rows], [as_float(m.get(key)) * scale for m in rows]


def _has(ys: list) -> bool:
    return any(math.isfinite(y) for y in ys)


def _figure(svg: str, caption: str = "") -> str:
    cap = f"<figcaption>{esc(caption)}</figcaption>" if caption else ""
    return f"<figure>{svg}{cap}</figure>"


def _legend_html(colors: dict[str, str]) -> str:
    targets = " ".join(f"{swatch(c)}{esc(t)}" for t, c in colors.items())
    marks = " ".join(f'<span style="color:{c}">\u2502</span>{esc(n)}' for n, c in (
        ("detection", DETECT_COLOR), ("rollback/resume", ROLLBACK_COLOR), ("failover", FAILOVER_COLOR),
        ("injected fault", INJECT_COLOR), ("other action", ACTION_COLOR)))
    return f'<p class="sub">Targets: {targets}. Markers: {marks}.</p>'


def loss_section(data: RunData, colors: dict[str, str]) -> str:
    """Inner HTML of the loss section: train and held-out loss over steps with events and target bands."""
    if not data.final_train and not data.final_evals:
        return nodata("no data: metrics.jsonl has no train or eval lines yet")
    xs, ys = _xy(data.final_train, "loss")
    vx, vy = _xy(data.final_evals, "val_loss")
    series = [Series("train loss", xs, ys)]
    if _has(vy):
        series.append(Series("held-out loss", vx, vy, color="#ff7f0e", dots=True))
    svg = line_chart(series, title="Loss", x_label="step", y_label="loss", markers=event_markers(data.events),
                     bands=target_bands(data.final_train, colors), height=320)
    rolled = len(data.train) - len(data.final_train)
    note = f"{rolled} train line(s) were superseded by rollbacks and are not drawn." if rolled else ""
    return _legend_html(colors) + _figure(svg, note)


def _layer_norms(data: RunData) -> str:
    """Per-layer gradient norms: a bar chart for the last step that logged them, lines over time if few layers."""
    rows = [m for m in data.final_train if isinstance(m.get("grad_norm_layers"), dict) and m["grad_norm_layers"]]
    if not rows:
        return _figure(nodata("per-layer gradient norm: no data (the run logged no grad_norm_layers)"))
    last = rows[-1]
    names = [str(k) for k in last["grad_norm_layers"]]  # the loop writes them in model order; keep it
    vals = [as_float(last["grad_norm_layers"].get(k)) for k in names]
    finite = [v for v in vals if math.isfinite(v)]
    # Log bars only when the norms span decades; over a narrow range log bars exaggerate small differences.
    log_y = bool(finite) and min(finite) > 0 and max(finite) / min(finite) > 20
    parts = [_figure(bar_chart(names, vals, title=f"Gradient norm per layer, step {last['step']}",
                               y_label="grad norm", log_y=log_y, horizontal=len(names) > 24))]
    if len(names) <= 16:
        series = [Series(n, [m["step"] for m in rows], [as_float(m["grad_norm_layers"].get(n)) for m in rows])
                  for n in names]
        parts.append(_figure(line_chart(series, title="Gradient norm per layer over steps", x_label="step",
                                        y_label="grad norm", log_y=True)))
    return "".join(parts)


def _expert_load(data: RunData) -> str:
    """Mean expert load per MoE layer x expert over the last 10% of steps that logged it, and its CV over time."""
    rows = [m for m in data.final_train if isinstance(m.get("expert_load"), list) and m["expert_load"]]
    parts = []
    if rows:
        tail = rows[-max(1, math.ceil(len(rows) * 0.1)):]
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
        parts.append(_figure(heatmap([f"MoE layer {i}" for i in range(n_layers)], [f"e{j}" for j in range(n_exp)],
                                     grid, title=f"Mean expert load ({steps})", fmt=".3f", x_label="expert",
                                     vmin=0.0),
                             f"Fraction of routed tokens per expert; uniform routing is {1 / max(n_exp, 1):.3f}."))
    else:
        parts.append(_figure(nodata("expert load: no data (the run logged no expert_load)")))
    xs, cv = _xy(data.final_train, "expert_load_cv")
    if _has(cv):
        parts.append(_figure(line_chart([Series("expert load CV", xs, cv)], title="Expert load imbalance (CV)",
                                        x_label="step", y_label="coefficient of variation")))
    return "".join(parts)


def charts_section(data: RunData, colors: dict[str, str]) -> str:
    """Inner HTML of the charts section: optimiser, throughput, gradients and routing health."""
    rows = data.final_train
    if not rows:
        return nodata("no data: metrics.jsonl has no train lines yet")
    bands = target_bands(rows, colors)
    marks = event_markers(data.events)
    parts = []

    def line(key: str, title: str, y_label: str, scale: float = 1.0, log_y: bool = False, markers=(),
             optional: bool = False) -> None:
        xs, ys = _xy(rows, key, scale)
        if not _has(ys):
            if not optional:
                parts.append(_figure(nodata(f"{title}: no data")))
            return
        parts.append(_figure(line_chart([Series(title, xs, ys)], title=title, x_label="step", y_label=y_label,
                                        log_y=log_y, markers=markers, bands=bands)))

    line("lr", "Learning rate", "lr")
    line("grad_norm", "Global gradient norm", "grad norm (log)", log_y=True, markers=marks)
    line("tokens_per_s", "Throughput", "tokens / s")
    line("mfu", "Model FLOPs utilisation", "MFU (%)", scale=100.0)
    line("step_time", "Step time", "seconds", optional=True)
    comp = [Series(k, *_xy(rows, k)) for k in ("ce", "mtp", "balance")]
    comp = [s for s in comp if _has(s.ys)]
    if comp:
        parts.append(_figure(line_chart(comp, title="Loss components", x_label="step", y_label="loss",
                                        bands=bands)))
    line("memory", "Accelerator memory", "GiB", scale=1 / 2**30, optional=True)
    parts.append("<h3>Gradients per layer</h3>" + _layer_norms(data))
    parts.append("<h3>Expert routing</h3>" + _expert_load(data))
    return "\n".join(parts)
