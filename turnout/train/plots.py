"""Inline-SVG charts for reports: line charts here; bar charts and heatmaps live next door and are re-exported.

The charts are self-contained SVG strings (no JavaScript, no external fonts, no element ids, so many can share
one HTML page) and deterministic (same input, same string). Hover tooltips use SVG <title> elements. Bad
values never raise: NaN/inf points leave gaps, non-positive values are left out of log axes with a note, and
a chart with nothing to draw becomes a "no data" placeholder.

    svg = line_chart([Series("loss", steps, losses)], title="Loss", x_label="step", y_label="loss",
                     markers=[Marker(25, "device_error", "#d62728")], bands=[Band(1, 24, "sim:flaky", "#dbeafe")])
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

from turnout.train.plots_bar import bar_chart
from turnout.train.plots_heatmap import heatmap
from turnout.train.plots_svg import (AXIS, GRID, MUTED, Scale, as_float, axis_lines, color_at, dash_attr, esc,
                                     finite, linear_ticks, log_ticks, placeholder, px, svg_open, svg_title,
                                     text_width, truncate, x_axis_label, y_axis_label)

MARKER_LABEL_ROWS = 5
MAX_DOTS = 500
MIN_WIDTH = 240  # below this the axes and legend no longer fit

__all__ = ["Band", "Envelope", "Marker", "Series", "bar_chart", "heatmap", "line_chart"]


@dataclass
class Series:
    """One line: y values over x values; None/NaN/inf entries break the line (a gap)."""

    name: str
    xs: Sequence[float]
    ys: Sequence[float]
    color: str | None = None
    dashed: bool = False
    dots: bool = False  # draw a dot on every point (sparse series such as periodic evals)


@dataclass
class Marker:
    """A vertical line at x for an event; `label` is drawn small at the top, `detail` joins it in the tooltip.

    `kind` is the line style: "solid", "dashed" or "dotted".
    """

    x: float
    label: str
    color: str = "#d62728"
    kind: str = "solid"
    detail: str = ""


@dataclass
class Band:
    """A shaded x-range [x0, x1], e.g. the steps one accelerator target ran."""

    x0: float
    x1: float
    label: str
    color: str = "#dbeafe"


@dataclass
class Envelope:
    """A shaded y-range lo..hi over xs, e.g. "reference +/- tolerance"; NaN entries break it."""

    xs: Sequence[float]
    lo: Sequence[float]
    hi: Sequence[float]
    color: str = "#1f77b4"
    name: str = "tolerance"



@dataclass
class _Prepared:
    """Series and envelopes reduced to plottable runs of points, plus what was left out."""

    lines: list = field(default_factory=list)  # (Series, colour, [[(x, y), ...] per unbroken run])
    envs: list = field(default_factory=list)  # (Envelope, [[(x, lo, hi), ...] per unbroken run])
    xs: list = field(default_factory=list)
    ys: list = field(default_factory=list)
    non_positive: int = 0


def _prepare(series: Sequence[Series], envelopes: Sequence[Envelope], log_y: bool) -> _Prepared:
    """Split every series and envelope into runs of usable points (finite; positive on a log axis)."""
    p = _Prepared()
    for i, s in enumerate(series):
        runs, run = [], []
        for x, y in zip(s.xs, s.ys):
            x, y = as_float(x), as_float(y)
            usable = math.isfinite(x) and math.isfinite(y) and (y > 0 or not log_y)
            if math.isfinite(x) and math.isfinite(y) and not usable:
                p.non_positive += 1
            if usable:
                run.append((x, y))
                p.xs.append(x)
                p.ys.append(y)
            elif run:
                runs.append(run)
                run = []
        if run:
            runs.append(run)
        p.lines.append((s, s.color or color_at(None, i), runs))
    for e in envelopes:
        runs, run = [], []
        for x, lo, hi in zip(e.xs, e.lo, e.hi):
            x, lo, hi = as_float(x), as_float(lo), as_float(hi)
            if all(map(math.isfinite, (x, lo, hi))) and (not log_y or min(lo, hi) > 0):
                run.append((x, min(lo, hi), max(lo, hi)))
                p.xs.append(x)
                p.ys.extend((lo, hi))
            elif run:
                runs.append(run)
                run = []
        if run:
            runs.append(run)
        p.envs.append((e, runs))
    return p


def _decimate(run: list, budget: int) -> list:
    """Pixel points thinned to min/max/first/last per pixel column: long runs stay small, spikes stay visible."""
    if len(run) <= budget:
        return run
    out, bucket, col = [], [], None
    for pt in run + [None]:
        c = None if pt is None else int(pt[0])
        if bucket and c != col:
            ys = [b[1] for b in bucket]
            keep = sorted({0, len(bucket) - 1, ys.index(min(ys)), ys.index(max(ys))})
            out.extend(bucket[k] for k in keep)
            bucket = []
        if pt is not None:
            bucket.append(pt)
            col = c
    return out


def _legend(items: list, width: float) -> tuple[str, int]:
    """Legend entries laid out left to right under the title, wrapping; returns (svg, number of rows)."""
    parts, x, row = [], 8.0, 0
    for kind, label, color, dashed in items:
        label = truncate(label, 220, 10)
        w = 22 + text_width(label, 10) + 12
        if x + w > width - 8 and x > 8:
            x, row = 8.0, row + 1
        y = 34 + 15 * row
        if kind == "line":
            parts.append(f'<line x1="{px(x)}" y1="{px(y - 4)}" x2="{px(x + 16)}" y2="{px(y - 4)}" stroke="{esc(color)}"'
                         f' stroke-width="2"{dash_attr("dashed" if dashed else "solid")}/>')
        else:
            opacity = "0.35" if kind == "envelope" else "1"
            parts.append(f'<rect x="{px(x)}" y="{px(y - 9)}" width="16" height="9" fill="{esc(color)}" '
                         f'fill-opacity="{opacity}" stroke="#bbb" stroke-width="0.5"/>')
        parts.append(f'<text x="{px(x + 21)}" y="{px(y)}" font-size="10" fill="#333">{esc(label)}</text>')
        x += w
    return "".join(parts), (row + 1 if items else 0)


def line_chart(series: Sequence[Series], *, title: str, x_label: str = "", y_label: str = "", log_y: bool = False,
               markers: Sequence[Marker] = (), bands: Sequence[Band | Envelope] = (),
               envelopes: Sequence[Envelope] = (), width: int = 720, height: int = 260) -> str:
    """An SVG line chart of `series` with optional event markers, shaded x-bands and y-envelopes.

    Envelope objects are accepted in `bands` too. NaN/inf (and, with log_y, non-positive) values leave gaps;
    when nothing is plottable the result is a placeholder saying so. The x range covers the data, markers and
    bands; the y range covers the data and envelopes, widened to nice 1-2-5 ticks.
    """
    width = max(int(width), MIN_WIDTH)
    envs = list(envelopes) + [b for b in bands if isinstance(b, Envelope)]
    band_list = [b for b in bands if isinstance(b, Band)]
    prep = _prepare(series, envs, log_y)
    if not prep.xs:
        why = "no positive values to plot on a log scale" if prep.non_positive else "no data"
        return placeholder(title, why, width)
    marks = [m for m in markers if finite(as_float(m.x))]
    band_list = [b for b in band_list if finite(as_float(b.x0)) and finite(as_float(b.x1))]
    all_x = prep.xs + [float(m.x) for m in marks] + [float(v) for b in band_list for v in (b.x0, b.x1)]
    integer_x = all(float(v).is_integer() for v in all_x)
    x0, x1, xt, xl = linear_ticks(min(all_x), max(all_x), target=max(3, width // 110), integer=integer_x)
    if log_y:
        y0, y1, yt, yl = log_ticks(min(prep.ys), max(prep.ys))
    else:
        # 3% headroom so extreme points do not sit on the frame, without pushing a non-negative axis below 0.
        lo, hi = min(prep.ys), max(prep.ys)
        pad = (hi - lo) * 0.03
        y0, y1, yt, yl = linear_ticks(lo - pad if lo - pad >= 0 or lo < 0 else 0.0, hi + pad, target=5)

    items = [("line", s.name, c, s.dashed) for s, c, _ in prep.lines if s.name]
    items += [("envelope", e.name, e.color, False) for e, _ in prep.envs if e.name]
    seen = set()
    for b in band_list:
        if b.label and (b.label, b.color) not in seen:
            seen.add((b.label, b.color))
            items.append(("band", b.label, b.color, False))
    legend_svg, rows = _legend(items, width)

    left = max(40.0, max(text_width(t, 10) for t in yl) + 14 + (16 if y_label else 0))
    top = 28 + 15 * rows + (6 if rows else 4)
    bottom = 22 + (16 if x_label else 0) + 4
    height = max(height, int(top + bottom + 60))  # a legend that wrapped a lot must not squash the plot
    pl, pr, pt, pb = left, width - 16.0, float(top), height - float(bottom)
    sx, sy = Scale(x0, x1, pl, pr), Scale(y0, y1, pb, pt, log=log_y)

    out = [svg_open(width, height, title), svg_title(title, width)]
    if prep.non_positive:
        out.append(f'<text x="{px(width - 8)}" y="17" text-anchor="end" font-size="10" fill="{MUTED}">'
                   f"{prep.non_positive} non-positive value(s) not shown (log scale)</text>")
    out.append(legend_svg)
    for b in band_list:
        a, z = sorted((min(max(float(b.x0), x0), x1), min(max(float(b.x1), x0), x1)))
        bx0, bx1 = sx(a), sx(z)
        out.append(f'<g><title>{esc(b.label)}: {esc(_num_label(b.x0))}\u2013{esc(_num_label(b.x1))}</title>'
                   f'<rect x="{px(bx0)}" y="{px(pt)}" width="{px(max(bx1 - bx0, 1.0))}" height="{px(pb - pt)}" '
                   f'fill="{esc(b.color)}" fill-opacity="0.6"/>')
        if b.label and text_width(b.label, 9) + 6 <= bx1 - bx0:
            out.append(f'<text x="{px(bx0 + 3)}" y="{px(pb - 4)}" font-size="9" fill="#666">{esc(b.label)}</text>')
        out.append("</g>")
    for v, lab in zip(yt, yl):
        y = sy(v)
        out.append(f'<line x1="{px(pl)}" y1="{px(y)}" x2="{px(pr)}" y2="{px(y)}" stroke="{GRID}"/>'
                   f'<text x="{px(pl - 5)}" y="{px(y + 3.5)}" text-anchor="end" font-size="10" fill="{AXIS}">'
                   f"{esc(lab)}</text>")
    for v, lab in zip(xt, xl):
        x = sx(v)
        out.append(f'<line x1="{px(x)}" y1="{px(pb)}" x2="{px(x)}" y2="{px(pb + 4)}" stroke="{AXIS}"/>'
                   f'<text x="{px(x)}" y="{px(pb + 15)}" text-anchor="middle" font-size="10" fill="{AXIS}">'
                   f"{esc(lab)}</text>")
    for e, runs in prep.envs:
        for run in runs:
            pts = [(sx(x), sy(hi)) for x, _, hi in run] + [(sx(x), sy(lo)) for x, lo, _ in reversed(run)]
            out.append(f'<polygon points="{" ".join(f"{px(a)},{px(b)}" for a, b in pts)}" fill="{esc(e.color)}" '
                       f'fill-opacity="0.2" stroke="none"><title>{esc(e.name)}</title></polygon>')
    budget = int(3 * (pr - pl))
    for s, color, runs in prep.lines:
        out.append(f"<g><title>{esc(s.name)}</title>")
        for run in runs:
            pts = _decimate([(sx(x), sy(y)) for x, y in run], budget)
            if len(pts) > 1:
                d = "M" + " L".join(f"{px(a)},{px(b)}" for a, b in pts)
                out.append(f'<path d="{d}" fill="none" stroke="{esc(color)}" stroke-width="1.6" '
                           f'stroke-linejoin="round"{dash_attr("dashed" if s.dashed else "solid")}/>')
            # A lone point between gaps would otherwise be invisible; dots on a dense series are just ink.
            if (s.dots and len(pts) <= MAX_DOTS) or len(pts) == 1:
                out.extend(f'<circle cx="{px(a)}" cy="{px(b)}" r="2.5" fill="{esc(color)}"/>' for a, b in pts)
        out.append("</g>")
    out.extend(_markers(marks, sx, pt, pb, x0, x1))
    out.append(axis_lines(pl, pr, pt, pb, h_at=pb, v_at=pl))
    if x_label:
        out.append(x_axis_label(x_label, pl, pr, height))
    if y_label:
        out.append(y_axis_label(y_label, pt, pb))
    out.append("</svg>")
    return "".join(out)


def _num_label(v: float) -> str:
    """An x value for a tooltip: integers without a decimal point."""
    f = as_float(v)
    return str(int(f)) if math.isfinite(f) and f.is_integer() else f"{f:.4g}"


def _markers(marks: list, sx: Scale, pt: float, pb: float, x0: float, x1: float) -> list:
    """Vertical event lines with a wide invisible twin so the tooltip is easy to hover; labels when not crowded."""
    out = []
    show_text = len(marks) <= 60  # beyond that the labels are noise; tooltips still work
    placed: list[list[tuple[float, float]]] = [[] for _ in range(MARKER_LABEL_ROWS)]  # (start, end) px per row
    for m in marks:
        x = float(m.x)
        if not x0 <= x <= x1:
            continue
        X = px(sx(x))
        tip = f"{m.label} @ {_num_label(x)}" + (f": {m.detail}" if m.detail else "")
        out.append(f"<g><title>{esc(tip)}</title>"
                   f'<line x1="{X}" y1="{px(pt)}" x2="{X}" y2="{px(pb)}" stroke="{esc(m.color)}" '
                   f'stroke-width="1.3"{dash_attr(m.kind)}/>'
                   f'<line x1="{X}" y1="{px(pt)}" x2="{X}" y2="{px(pb)}" stroke="#000" stroke-opacity="0" '
                   f'stroke-width="7"/>')
        if show_text:
            # Each label takes the first row where it overlaps no other label, so events at the same step
            # (injected, detected, failover) stack up legibly; with every row taken it keeps only its tooltip.
            text = truncate(m.label, 90, 9)
            a, z = sx(x) + 2, sx(x) + 2 + text_width(text, 9)
            row = next((r for r, spans in enumerate(placed) if all(z < s0 or a > s1 for s0, s1 in spans)), None)
            if row is not None:
                placed[row].append((a, z))
                out.append(f'<text x="{px(a)}" y="{px(pt + 10 + row * 10)}" font-size="9" fill="{esc(m.color)}">'
                           f"{esc(text)}</text>")
        out.append("</g>")
    return out
