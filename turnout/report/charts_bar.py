"""Bar charts: per-op errors against a tolerance, per-layer gradient norms, anything labelled.

Labels are never rotated or cut short. When they do not fit side by side under vertical bars the chart turns
horizontal: one row per label, the figure growing downwards, labels at full length (wrapped onto a second
line only if one would take more than ~45% of the width). A missing value (NaN, or non-positive on a log
axis) gets no bar but a grey 'x' at the base, so the gap is visible rather than silent.
"""

from __future__ import annotations

import math
import textwrap
from collections.abc import Sequence

import numpy as np

from turnout.report.charts_render import (DPI, FONT_PT, MUTED, TAB10, as_list, chart, color_or, drop_non_positive,
                                          floats, placeholder, style_axis, text_px, why_empty)
from turnout.report.values import as_float


def bar_chart(labels: Sequence[str], values: Sequence[float], *, title: str, y_label: str = "",
              log_y: bool = False, threshold: float | None = None, threshold_label: str = "threshold",
              colors: str | Sequence[str | None] | None = None, horizontal: bool = False,
              width: int = 720, height: int = 260) -> str:
    """An inline-SVG bar chart of values by label, optionally with a dashed red threshold line (in the legend).

    colors: None, one colour for all bars, or one per bar (None entries take the default). horizontal=True
    (chosen automatically when labels would not fit under vertical bars) draws one row per label and makes
    the chart as tall as the rows need; `y_label` then names the horizontal value axis. Values missing past
    the end of `values` count as NaN.
    """
    names = [str(v) for v in as_list(labels)]
    n, raw, vals = len(names), floats(values)[: len(names)], np.full(len(names), np.nan)
    vals[: raw.size] = raw
    vals, dropped = drop_non_positive(vals) if log_y else (vals, 0)
    ok = np.isfinite(vals)
    if not ok.any():
        return placeholder(title, why_empty(dropped), width)
    thr = as_float(threshold)
    thr = thr if math.isfinite(thr) and (thr > 0 or not log_y) else None
    horizontal = horizontal or max(text_px(s) for s in names) + 8 > (max(width, 240) - 80) / n
    chars = max(12, int(0.45 * width / text_px("x")))
    shown = [textwrap.fill(s, chars) if horizontal and len(s) > chars else s for s in names]
    rows_px = n * (7 + (FONT_PT - 0.5) * DPI / 72 * 1.05 * max(s.count("\n") + 1 for s in shown)) if horizontal else 0
    given = [colors] * n if colors is None or isinstance(colors, str) else as_list(colors)
    bar_colors = [color_or(given[i], TAB10[0]) if i < len(given) else TAB10[0] for i in range(n)]
    with chart("bar", title, width, max(height, rows_px + 100), y_label, threshold_label, thr, *names, vals) as c:
        ax = c.fig.add_subplot()
        idx = np.arange(n)
        (ax.barh if horizontal else ax.bar)(idx[ok], vals[ok], 0.75, color=[bar_colors[i] for i in idx[ok]],
                                            log=log_y, zorder=2)
        entries = []
        if thr is not None:
            entries.append(((ax.axvline if horizontal else ax.axhline)(thr, color="#c0392b", linestyle="--",
                                                                       linewidth=1.2, zorder=3),
                            f"{threshold_label} ({thr:.4g})"))
        if (~ok).any():  # just inside the base of the value axis (a log axis has no zero)
            at = np.full((~ok).sum(), 0.02)
            (marks,) = ax.plot(*((at, idx[~ok]) if horizontal else (idx[~ok], at)), linestyle="none", marker="x",
                               markersize=5, color=MUTED, zorder=3,
                               transform=ax.get_yaxis_transform() if horizontal else ax.get_xaxis_transform())
            entries.append((marks, "no value"))
        if horizontal:
            ax.set_yticks(idx, shown)
            ax.set(ylim=(n - 0.5, -0.5), xlabel=y_label)  # the first label on top, as in a table
        else:
            ax.set_xticks(idx, shown)
            ax.set(xlim=(-0.5, n - 0.5), ylabel=y_label)
        (ax.yaxis if horizontal else ax.xaxis).grid(False)
        ax.tick_params(axis="y" if horizontal else "x", length=0)
        # the threshold line is on the axis too: ticks chosen for the bars alone crowd a wider axis
        positive = np.append(vals[ok & (vals > 0)], [thr] if thr is not None and thr > 0 else [])
        style_axis(ax.xaxis if horizontal else ax.yaxis, log=log_y,
                   span=(float(positive.min()), float(positive.max())) if positive.size else None)
        c.title()
        c.legend(ax, entries, dropped)
        return c.svg()
