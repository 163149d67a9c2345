"""Inline-SVG bar charts: per-op errors against a tolerance, per-layer gradient norms, anything labelled.

Vertical bars rotate and thin out their labels when there are many (60 ops fit in 720 px); horizontal bars
grow the chart downwards instead, one readable row per label. NaN values and (on a log axis) non-positive
values get no bar but a small grey cross with a tooltip, so a missing measurement is visible, not silent.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from turnout.train.plots_svg import (AXIS, GRID, MUTED, Scale, as_float, axis_lines, color_at, esc, fmt_num,
                                     linear_ticks, log_ticks, placeholder, px, svg_open, svg_title, text_width,
                                     truncate, x_axis_label, y_axis_label)

THRESHOLD_COLOR = "#c0392b"


def bar_chart(labels: Sequence[str], values: Sequence[float], *, title: str, y_label: str = "",
              log_y: bool = False, threshold: float | None = None, threshold_label: str = "threshold",
              colors: str | Sequence[str] | None = None, horizontal: bool = False,
              width: int = 720, height: int = 260) -> str:
    """An SVG bar chart of values by label, optionally with a dashed threshold line (e.g. a tolerance).

    colors: None (one palette colour), one colour for all bars, or one per bar (e.g. red where failing).
    horizontal=True lays bars out as rows, which suits long labels or many bars; the chart then grows taller
    than `height` as needed. Values missing past the end of `values` count as NaN.
    """
    width = max(int(width), 240)  # below this the axes no longer fit
    labels = [str(v) for v in labels]
    vals = [as_float(values[i]) if i < len(values) else math.nan for i in range(len(labels))]
    usable = [v for v in vals if math.isfinite(v) and (v > 0 or not log_y)]
    thr = as_float(threshold)
    has_thr = math.isfinite(thr) and (thr > 0 or not log_y)
    if not labels or not usable:
        why = "no positive values to plot on a log scale" if log_y and any(map(math.isfinite, vals)) else "no data"
        return placeholder(title, why, width)
    span = usable + ([thr] if has_thr else [])
    if log_y:
        d0, d1, ticks, tick_labels = log_ticks(min(span), max(span))
    else:
        d0, d1, ticks, tick_labels = linear_ticks(min(0.0, *span), max(0.0, *span), target=5)
    # Bars share one colour unless told otherwise; a per-bar list may leave gaps (None) for "default".
    per_bar = [] if colors is None or isinstance(colors, str) else list(colors)
    bar_colors = [per_bar[i] if i < len(per_bar) and per_bar[i] else color_at(colors if isinstance(colors, str)
                  else None, 0) for i in range(len(labels))]
    args = (title, y_label, labels, vals, bar_colors, d0, d1, ticks, tick_labels, log_y,
            thr if has_thr else None, threshold_label, width, height)
    return _horizontal(*args) if horizontal else _vertical(*args)


def _tip(label: str, v: float) -> str:
    return f"<title>{esc(label)}: {esc(fmt_num(v))}</title>"


def _missing_mark(x: float, y: float, label: str, v: float) -> str:
    """A small grey cross where a bar would start, for NaN or unplottable values."""
    return (f"<g>{_tip(label, v)}<path d=\"M{px(x - 3)},{px(y - 3)} L{px(x + 3)},{px(y + 3)} "
            f'M{px(x - 3)},{px(y + 3)} L{px(x + 3)},{px(y - 3)}" stroke="{MUTED}" stroke-width="1.2"/>'
            f'<rect x="{px(x - 5)}" y="{px(y - 5)}" width="10" height="10" fill="#000" fill-opacity="0"/></g>')


def _vertical(title, y_label, labels, vals, bar_colors, d0, d1, ticks, tick_labels, log_y, thr, thr_label,
              width, height) -> str:
    """Bars standing on the x axis; labels rotate (and thin out) when the slots get narrow."""
    n = len(labels)
    left = max(40.0, max(text_width(t, 10) for t in tick_labels) + 14 + (16 if y_label else 0))
    right = 16.0 + (text_width(f"{thr_label} {fmt_num(thr)}", 9) + 4 if thr is not None else 0)
    slot = (width - left - right) / n
    shown = [truncate(lab, 130, 10) for lab in labels]
    widest = max(text_width(s, 10) for s in shown)
    rotate = widest > slot - 4
    # Rotated labels need ~11 px of slot each; past that only every k-th label is drawn (all keep tooltips).
    every = max(1, math.ceil(11 / slot)) if rotate else 1
    label_h = widest * math.sin(math.radians(50)) + 14 if rotate else 18
    top, bottom = 30.0, label_h + 6
    height = max(height, int(top + bottom + 80))
    pl, pr, pt, pb = left, width - right, top, height - bottom
    sy = Scale(d0, d1, pb, pt, log=log_y)
    base = pb if log_y else sy(min(max(0.0, d0), d1))

    out = [svg_open(width, height, title), svg_title(title, width)]
    for v, lab in zip(ticks, tick_labels):
        y = sy(v)
        out.append(f'<line x1="{px(pl)}" y1="{px(y)}" x2="{px(pr)}" y2="{px(y)}" stroke="{GRID}"/>'
                   f'<text x="{px(pl - 5)}" y="{px(y + 3.5)}" text-anchor="end" font-size="10" fill="{AXIS}">'
                   f"{esc(lab)}</text>")
    bw = max(1.0, slot * 0.8)
    for i, (lab, v) in enumerate(zip(labels, vals)):
        cx = pl + slot * (i + 0.5)
        if math.isfinite(v) and (v > 0 or not log_y):
            y = sy(v)
            out.append(f'<g>{_tip(lab, v)}<rect x="{px(cx - bw / 2)}" y="{px(min(y, base))}" width="{px(bw)}" '
                       f'height="{px(max(abs(base - y), 0.5))}" fill="{esc(bar_colors[i])}"/></g>')
        else:
            out.append(_missing_mark(cx, base - 5, lab, v))
        if i % every == 0:
            if rotate:
                out.append(f'<text x="{px(cx + 3)}" y="{px(pb + 10)}" transform="rotate(-50 {px(cx + 3)} '
                           f'{px(pb + 10)})" text-anchor="end" font-size="10" fill="#333">{esc(shown[i])}</text>')
            else:
                out.append(f'<text x="{px(cx)}" y="{px(pb + 14)}" text-anchor="middle" font-size="10" '
                           f'fill="#333">{esc(shown[i])}</text>')
    if thr is not None:
        y = sy(thr)
        out.append(f"<g><title>{esc(thr_label)}: {esc(fmt_num(thr))}</title>"
                   f'<line x1="{px(pl)}" y1="{px(y)}" x2="{px(pr)}" y2="{px(y)}" stroke="{THRESHOLD_COLOR}" '
                   f'stroke-width="1.3" stroke-dasharray="6 4"/>'
                   f'<text x="{px(pr + 4)}" y="{px(y + 3)}" font-size="9" fill="{THRESHOLD_COLOR}">'
                   f"{esc(thr_label)} {esc(fmt_num(thr))}</text></g>")
    out.append(axis_lines(pl, pr, pt, pb, h_at=base, v_at=pl))
    if y_label:
        out.append(y_axis_label(y_label, pt, pb))
    out.append("</svg>")
    return "".join(out)


def _horizontal(title, y_label, labels, vals, bar_colors, d0, d1, ticks, tick_labels, log_y, thr, thr_label,
                width, height) -> str:
    """One row per label, bars growing rightwards; the value axis runs along the bottom."""
    n = len(labels)
    shown = [truncate(lab, 200, 10) for lab in labels]
    left = max(text_width(s, 10) for s in shown) + 14
    top, bottom = 30.0 + (14 if thr is not None else 0), 22.0 + (16 if y_label else 0) + 4
    # Rows are 14-28 px: the chart fills `height` when it can and grows past it rather than overlap labels.
    row = min(28.0, max(14.0, (height - top - bottom) / n))
    height = int(math.ceil(top + bottom + row * n))
    pl, pr, pt, pb = left, width - 16.0, top, height - bottom
    sx = Scale(d0, d1, pl, pr, log=log_y)
    base = pl if log_y else sx(min(max(0.0, d0), d1))

    out = [svg_open(width, height, title), svg_title(title, width)]
    for v, lab in zip(ticks, tick_labels):
        x = sx(v)
        out.append(f'<line x1="{px(x)}" y1="{px(pt)}" x2="{px(x)}" y2="{px(pb)}" stroke="{GRID}"/>'
                   f'<text x="{px(x)}" y="{px(pb + 15)}" text-anchor="middle" font-size="10" fill="{AXIS}">'
                   f"{esc(lab)}</text>")
    bh = max(1.0, row * 0.7)
    for i, (lab, v) in enumerate(zip(labels, vals)):
        cy = pt + row * (i + 0.5)
        if math.isfinite(v) and (v > 0 or not log_y):
            x = sx(v)
            out.append(f'<g>{_tip(lab, v)}<rect x="{px(min(x, base))}" y="{px(cy - bh / 2)}" '
                       f'width="{px(max(abs(x - base), 0.5))}" height="{px(bh)}" fill="{esc(bar_colors[i])}"/></g>')
        else:
            out.append(_missing_mark(base + 5, cy, lab, v))
        out.append(f'<text x="{px(pl - 5)}" y="{px(cy + 3.5)}" text-anchor="end" font-size="10" fill="#333">'
                   f"{esc(shown[i])}</text>")
    if thr is not None:
        x = sx(thr)
        out.append(f"<g><title>{esc(thr_label)}: {esc(fmt_num(thr))}</title>"
                   f'<line x1="{px(x)}" y1="{px(pt)}" x2="{px(x)}" y2="{px(pb)}" stroke="{THRESHOLD_COLOR}" '
                   f'stroke-width="1.3" stroke-dasharray="6 4"/>'
                   f'<text x="{px(x)}" y="{px(pt - 4)}" text-anchor="middle" font-size="9" '
                   f'fill="{THRESHOLD_COLOR}">{esc(thr_label)} {esc(fmt_num(thr))}</text></g>')
    out.append(axis_lines(pl, pr, pt, pb, h_at=pb, v_at=base))
    if y_label:  # the value axis is horizontal here, so its label goes underneath
        out.append(x_axis_label(y_label, pl, pr, height))
    out.append("</svg>")
    return "".join(out)
