"""Inline-SVG heatmaps: a rows x cols grid of values on a sequential colour scale (e.g. expert load per layer).

Cells show their formatted value when there is room and always carry a tooltip ("row / col: value"). Ragged
or short rows are padded with NaN, drawn as light grey "no data" cells, so odd input never raises.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

from turnout.train.plots_svg import (AXIS, as_float, esc, fmt_num, placeholder, px, svg_open, svg_title,
                                     text_width, truncate)

# ColorBrewer "Blues": light for low, dark for high, readable for colour-blind viewers and in greyscale.
_STOPS = ("#f7fbff", "#deebf7", "#c6dbef", "#9ecae1", "#6baed6", "#4292c6", "#2171b5", "#08519c", "#08306b")
_NAN_FILL = "#e8e8e8"
MAX_CELL_TOOLTIPS = 4096


def _rgb(hex_color: str) -> tuple[int, int, int]:
    return int(hex_color[1:3], 16), int(hex_color[3:5], 16), int(hex_color[5:7], 16)


def ramp(t: float) -> str:
    """The colour at position t in [0, 1] along the sequential scale (clamped)."""
    t = min(1.0, max(0.0, t)) * (len(_STOPS) - 1)
    i = min(int(t), len(_STOPS) - 2)
    a, b, f = _rgb(_STOPS[i]), _rgb(_STOPS[i + 1]), t - i
    return "#" + "".join(f"{round(x + (y - x) * f):02x}" for x, y in zip(a, b))


def _fmt(v: float, fmt: str | Callable[[float], str]) -> str:
    """v formatted by a format spec (".2f", ".0%") or a callable; bad specs fall back to 4 significant digits."""
    if not math.isfinite(v):
        return fmt_num(v)
    try:
        return fmt(v) if callable(fmt) else format(v, fmt)
    except (TypeError, ValueError):
        return fmt_num(v)


def heatmap(rows: Sequence[str], cols: Sequence[str], values: Sequence[Sequence[float]], *, title: str,
            fmt: str | Callable[[float], str] = ".2f", x_label: str = "", y_label: str = "",
            vmin: float | None = None, vmax: float | None = None, width: int = 720, height: int = 260) -> str:
    """An SVG heatmap with one row per `rows` label and one column per `cols` label; values[r][c] fills a cell.

    The colour scale spans vmin..vmax (default: the data's range). `fmt` is a format spec or a callable used for
    cell text, tooltips and the colour legend. Cells shrink to fit `width`; rows grow the chart past `height`
    when there are many, so every row stays at least 8 px tall.
    """
    rows, cols = [str(r) for r in rows], [str(c) for c in cols]
    grid = []
    for r in range(len(rows)):
        line = values[r] if r < len(values) and isinstance(values[r], (list, tuple)) else []
        grid.append([as_float(line[c]) if c < len(line) else math.nan for c in range(len(cols))])
    cells = [v for line in grid for v in line if math.isfinite(v)]
    if not rows or not cols or not cells:
        return placeholder(title, "no data", width)
    lo = as_float(vmin) if math.isfinite(as_float(vmin)) else min(cells)
    hi = as_float(vmax) if math.isfinite(as_float(vmax)) else max(cells)
    span = hi - lo

    row_labels = [truncate(r, 150, 10) for r in rows]
    left = max(text_width(r, 10) for r in row_labels) + 10 + (16 if y_label else 0)
    legend_w = 20 + max(text_width(_fmt(v, fmt), 9) for v in (lo, hi)) + 10
    cw = min(48.0, max(4.0, (width - left - legend_w - 12) / len(cols)))
    col_labels = [truncate(c, 90, 10) for c in cols]
    widest = max(text_width(c, 10) for c in col_labels)
    rotate = widest > cw - 2
    every = max(1, math.ceil(11 / cw)) if rotate else 1  # rotated labels need ~11 px each; thin out below that
    top = 28 + (widest * math.sin(math.radians(60)) + 8 if rotate else 16)
    bottom = 8 + (18 if x_label else 0)
    ch = min(28.0, max(8.0, (height - top - bottom) / len(rows)))
    gx, gy = left, top
    gw, gh = cw * len(cols), ch * len(rows)
    width = int(math.ceil(max(gx + gw + legend_w + 12, 200)))
    height = int(math.ceil(max(gy + gh + bottom, 80)))

    out = [svg_open(width, height, title), svg_title(title, width)]
    for c, lab in enumerate(col_labels):
        if c % every:
            continue
        cx = gx + cw * (c + 0.5)
        if rotate:
            out.append(f'<text x="{px(cx + 3)}" y="{px(gy - 4)}" transform="rotate(-60 {px(cx + 3)} {px(gy - 4)})" '
                       f'font-size="10" fill="#333">{esc(lab)}</text>')
        else:
            out.append(f'<text x="{px(cx)}" y="{px(gy - 5)}" text-anchor="middle" font-size="10" fill="#333">'
                       f"{esc(lab)}</text>")
    # Big grids (58 layers x 256 experts) would weigh megabytes with a tooltip per cell; they get one per row.
    cell_tips = len(rows) * len(cols) <= MAX_CELL_TOOLTIPS
    # White cell borders only where cells are wide enough that a border does not swamp the colour.
    out.append('<g stroke="#fff" stroke-width="0.5">' if cw >= 6 and ch >= 6 else "<g>")
    labels = []
    row_every = max(1, math.ceil(11 / ch))  # row labels need ~11 px each; thin them out below that
    for r, lab in enumerate(row_labels):
        y = gy + ch * r
        if r % row_every == 0:
            labels.append(f'<text x="{px(gx - 5)}" y="{px(y + ch / 2 + 3.5)}" text-anchor="end" font-size="10" '
                          f'fill="#333">{esc(lab)}</text>')
        for c, v in enumerate(grid[r]):
            x = gx + cw * c
            t = (v - lo) / span if span > 0 else 0.5
            fill = ramp(t) if math.isfinite(v) else _NAN_FILL
            text = _fmt(v, fmt) if math.isfinite(v) else "no data"
            rect = f'<rect x="{px(x)}" y="{px(y)}" width="{px(cw)}" height="{px(ch)}" fill="{fill}"'
            out.append(f"{rect}><title>{esc(rows[r])} / {esc(cols[c])}: {esc(text)}</title></rect>" if cell_tips
                       else rect + "/>")
            if math.isfinite(v) and ch >= 12 and text_width(text, 9) + 4 <= cw:
                ink = "#fff" if t > 0.55 else "#222"  # keep the text readable on dark cells
                labels.append(f'<text x="{px(x + cw / 2)}" y="{px(y + ch / 2 + 3)}" text-anchor="middle" '
                              f'font-size="9" fill="{ink}">{esc(text)}</text>')
        if not cell_tips:
            finite_row = [v for v in grid[r] if math.isfinite(v)]
            tip = (f"min {_fmt(min(finite_row), fmt)}, max {_fmt(max(finite_row), fmt)}" if finite_row
                   else "no data")
            labels.append(f'<rect x="{px(gx)}" y="{px(y)}" width="{px(gw)}" height="{px(ch)}" fill="#000" '
                          f'fill-opacity="0"><title>{esc(rows[r])}: {esc(tip)}</title></rect>')
    out.append("</g>")
    out.extend(labels)
    out.append(_legend(gx + gw + 12, gy, min(gh, 140.0), lo, hi, fmt))
    if x_label:
        out.append(f'<text x="{px(gx + gw / 2)}" y="{px(height - 6)}" text-anchor="middle" fill="#333">'
                   f"{esc(x_label)}</text>")
    if y_label:
        cy = gy + gh / 2
        out.append(f'<text x="12" y="{px(cy)}" transform="rotate(-90 12 {px(cy)})" text-anchor="middle" '
                   f'fill="#333">{esc(y_label)}</text>')
    out.append("</svg>")
    return "".join(out)


def _legend(x: float, y: float, h: float, lo: float, hi: float, fmt) -> str:
    """A stepped vertical colour bar, high at the top, labelled with the scale's ends."""
    steps = 10
    h = max(h, 40.0)
    out = []
    for i in range(steps):
        out.append(f'<rect x="{px(x)}" y="{px(y + h * i / steps)}" width="12" height="{px(h / steps + 0.5)}" '
                   f'fill="{ramp(1 - (i + 0.5) / steps)}"/>')
    out.append(f'<rect x="{px(x)}" y="{px(y)}" width="12" height="{px(h)}" fill="none" stroke="{AXIS}" '
               f'stroke-width="0.5"/>')
    out.append(f'<text x="{px(x + 16)}" y="{px(y + 8)}" font-size="9" fill="{AXIS}">{esc(_fmt(hi, fmt))}</text>')
    out.append(f'<text x="{px(x + 16)}" y="{px(y + h)}" font-size="9" fill="{AXIS}">{esc(_fmt(lo, fmt))}</text>')
    return "".join(out)
