"""Line charts (series over steps with shaded target bands, tolerance envelopes and vertical event markers) and
the run report's event timeline: a strip of event lanes over such a line plot, the two sharing the x axis.

Markers are bare vertical lines named in the legend, never in text on the plot, where labels of nearby events
would collide. In the timeline each lane is a row (e.g. one accelerator target, in order of use) where events
sit as symbols; events at the same x in the same lane are stacked a little apart so none hides another, and
events flagged `line` also draw a faint vertical line through the curves below.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from matplotlib.markers import MarkerStyle
from matplotlib.patches import Patch

from turnout.report.charts_render import (MUTED, as_list, chart, color_or, drop_non_positive, paired, palette_for,
                                          placeholder, style_axis, thin, why_empty)
from turnout.report.values import as_float

LINESTYLES = {"solid": "-", "dashed": "--", "dotted": ":"}
MAX_DOTS = 500  # dots on a denser series are just ink
LANE_PX, STACK_PX = 20, 9  # one lane row (it grows when events stack up at one x); the spacing of a stack


@dataclass
class Series:
    """One line: y values over x values; None/NaN/inf entries break the line (a gap)."""

    name: str
    xs: Sequence[float]
    ys: Sequence[float]
    color: str | None = None  # None: the next palette colour
    dashed: bool = False
    dots: bool = False  # a dot on every point (sparse series such as periodic evals)


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
class Marker:
    """A vertical line at x for an event, named `label` in the legend; `kind` is the line style ("solid",
    "dashed" or "dotted"); `detail` is accepted for callers' records and not drawn."""

    x: float
    label: str
    color: str = "#d62728"
    kind: str = "solid"
    detail: str = ""


@dataclass
class LaneEvent:
    """An event at x in a lane, drawn as `symbol` (a matplotlib marker such as "o", "s", "^", "v", "D", "X") in
    `color`, with one legend entry per distinct `kind`; with `line=True` a thin vertical line also marks x on
    the curves (e.g. for detections). `detail` is accepted for callers' records and not drawn."""

    x: float
    lane: str
    kind: str
    color: str
    symbol: str = "o"
    detail: str = ""
    line: bool = False


@dataclass
class Plot:
    """Series and envelopes as float arrays ready to draw, with what identifies them and their ranges."""

    lines: list  # (Series, x, y, colour)
    envs: list  # (Envelope, x, lo, hi)
    key: list  # names and arrays, for the chart's id key
    x: np.ndarray  # the finite x and y values of everything drawn (empty: nothing to draw)
    y: np.ndarray
    dropped: int  # non-positive values a log axis left out


def prepare(series: Sequence[Series], envelopes: Sequence[Envelope], log_y: bool) -> Plot:
    """Float arrays of every series and envelope, non-positive values removed for a log axis."""
    lines, envs, key, xs, ys, dropped = [], [], [], [np.empty(0)], [np.empty(0)], 0
    for s, color in zip(series, palette_for([s.color for s in series])):
        x, y = paired(s.xs, s.ys)
        if log_y:
            y, n = drop_non_positive(y)
            dropped += n
        ok = np.isfinite(x) & np.isfinite(y)
        lines.append((s, x, y, color))
        key += [str(s.name), x, y]
        xs.append(x[ok])
        ys.append(y[ok])
    for e in envelopes:
        x, a, b = paired(e.xs, e.lo, e.hi)
        lo, hi = np.minimum(a, b), np.maximum(a, b)
        if log_y:  # the envelope is context, not data: its non-positive ends leave a gap without a note
            lo, hi = np.where(lo > 0, lo, np.nan), np.where(lo > 0, hi, np.nan)
        ok = np.isfinite(x) & np.isfinite(lo)  # lo and hi are NaN together
        envs.append((e, x, lo, hi))
        key += [x, lo, hi]
        xs.append(x[ok])
        ys += [lo[ok], hi[ok]]
    return Plot(lines, envs, key, np.concatenate(xs), np.concatenate(ys), dropped)


def draw(c, ax, p: Plot, log_y: bool, markers: Sequence[Marker] = (), bands: Sequence[Band] = ()) -> list:
    """Draw bands, envelopes, series and markers on ax; returns the legend entries (handle, label)."""
    entries: list[tuple[object, str]] = []
    for b in bands:
        x0, x1 = sorted((as_float(b.x0), as_float(b.x1)))
        if math.isfinite(x0) and math.isfinite(x1):
            color = color_or(b.color, "#dbeafe")
            ax.axvspan(x0, x1, facecolor=color, alpha=0.6, linewidth=0, zorder=0)
            entries.append((Patch(facecolor=color, edgecolor="#aaaaaa", linewidth=0.5), b.label))
    for e, x, elo, ehi in p.envs:
        keep = thin(x, [elo, ehi], p.x.min(), p.x.max(), c.width)
        entries.append((ax.fill_between(x[keep], elo[keep], ehi[keep], facecolor=color_or(e.color, "#1f77b4"),
                                        alpha=0.25, linewidth=0, zorder=1), e.name))
    for s, x, y, color in p.lines:
        keep = thin(x, [y], p.x.min(), p.x.max(), c.width)
        x, y = x[keep], y[keep]
        ok = np.isfinite(x) & np.isfinite(y)
        dots = s.dots and int(ok.sum()) <= MAX_DOTS
        alone = ok & ~np.r_[False, ok[:-1]] & ~np.r_[ok[1:], False]  # no segment on either side: dot it
        (line,) = ax.plot(x, y, color=color, linestyle="--" if s.dashed else "-", zorder=3, markersize=3,
                          marker="o" if dots or alone.any() else None, markevery=None if dots else alone)
        entries.append((line, s.name))
    for m in markers:
        if math.isfinite(x := as_float(m.x)):
            entries.append((ax.axvline(x, color=color_or(m.color, "#d62728"), linewidth=1.1, zorder=2,
                                       linestyle=LINESTYLES.get(m.kind, "-")), m.label))
    if log_y:
        ax.set_yscale("log")
    style_axis(ax.yaxis, log=log_y, span=(float(p.y.min()), float(p.y.max())))
    style_axis(ax.xaxis, integer=bool(np.all(np.mod(p.x, 1) == 0)))
    ax.margins(x=0.01)
    return entries


def line_chart(series: Sequence[Series], *, title: str, x_label: str = "", y_label: str = "",
               log_y: bool = False, markers: Sequence[Marker] = (), bands: Sequence[Band] = (),
               envelopes: Sequence[Envelope] = (), width: int = 720, height: int = 260) -> str:
    """An inline-SVG line chart of `series`, with shaded x-`bands`, y-`envelopes` and vertical `markers`, and a
    legend above the plot (one entry per distinct label). NaN/inf/None values leave gaps; on a log axis
    non-positive values are left out with a note; with nothing plottable the result is a placeholder.
    """
    p = prepare(series, envelopes, log_y)
    if not p.x.size:
        return placeholder(title, why_empty(p.dropped), width)
    with chart("line", title, width, height, x_label, y_label, *p.key) as c:
        ax = c.fig.add_subplot(xlabel=x_label, ylabel=y_label)
        c.title()
        c.legend(ax, draw(c, ax, p, log_y, markers, bands), p.dropped)
        return c.svg()


def event_timeline(series: Sequence[Series], *, lanes: Sequence[str], events: Sequence[LaneEvent],
                   bands: Sequence[Band] = (), title: str, x_label: str = "step", y_label: str = "loss",
                   log_y: bool = False, width: int = 960, height: int = 360) -> str:
    """An inline-SVG chart of an event-lane strip (one row per name in `lanes`, plus one per unknown lane an
    event names, in order of appearance) above a line chart of `series` with shaded `bands`.

    The legend above lists series, band labels and one entry per event kind. Events with a non-finite x are
    left out; with no plottable series the lower axes say "no data"; with no events either, the result is a
    placeholder.
    """
    p = prepare(series, [], log_y)
    evs = [e for e in as_list(events) if math.isfinite(as_float(e.x))]
    if not p.x.size and not evs:
        return placeholder(title, why_empty(p.dropped), width)
    names = list(dict.fromkeys([str(n) for n in as_list(lanes)] + [str(e.lane) for e in evs])) or [""]
    stacks: dict[tuple, list[LaneEvent]] = defaultdict(list)  # events sharing (x, lane), in input order
    for e in evs:
        stacks[(as_float(e.x), str(e.lane))].append(e)
    lane_px = min(64, max(LANE_PX, STACK_PX * max(map(len, stacks.values()), default=1) + 4))
    strip_px = lane_px * len(names)
    key = [x_label, y_label, *names, repr([(e.x, e.lane, e.kind) for e in evs]), *p.key]
    with chart("timeline", title, width, max(height, strip_px + 200), *key) as c:
        # Heights are shared by ratio, so estimate what one title line, one legend row, ticks and x label take
        # (the figure grows for more).
        top, ax = c.fig.subplots(2, 1, sharex=True, height_ratios=[strip_px, max(c.height - strip_px - 112, 80)])
        spots = defaultdict(list)  # (kind, colour, symbol) -> [(x, y)]
        for (x, lane), group in stacks.items():
            step = min(STACK_PX / lane_px, 0.9 / len(group))
            for k, e in enumerate(group):
                y = names.index(lane) + (k - (len(group) - 1) / 2) * step
                spots[(str(e.kind), color_or(e.color, "#d62728"), e.symbol)].append((x, y))
        entries = []
        for (kind, color, symbol), xy in spots.items():
            symbol = symbol if isinstance(symbol, str) and symbol in MarkerStyle.markers else "o"  # bad: a circle
            filled = symbol in MarkerStyle.filled_markers  # "x" is all edge, so its edge must not be white
            (mark,) = top.plot(*zip(*xy), linestyle="none", marker=symbol, markersize=6, color=color, zorder=3,
                               markeredgecolor="white" if filled else color, markeredgewidth=0.5 if filled else 1.2)
            entries.append((mark, kind))
        top.set(ylim=(len(names) - 0.5, -0.5), ylabel="events")  # the first lane on top
        top.set_yticks(np.arange(len(names) - 1) + 0.5, [""] * (len(names) - 1))  # grid lines between lanes,
        top.set_yticks(range(len(names)), names, minor=True)  # and the lane names as unmarked minor ticks
        top.tick_params(which="both", length=0)
        top.spines["bottom"].set_visible(False)
        if p.x.size:
            entries = draw(c, ax, p, log_y, bands=bands) + entries
        else:
            ax.text(0.5, 0.5, "no data", transform=ax.transAxes, ha="center", va="center", color=MUTED)
            style_axis(ax.xaxis, integer=all(as_float(e.x).is_integer() for e in evs))
        for x, color in dict.fromkeys((as_float(e.x), color_or(e.color, "#d62728")) for e in evs if e.line):
            ax.axvline(x, color=color, linewidth=0.8, alpha=0.5, zorder=2)
        ax.set(xlabel=x_label, ylabel=y_label)
        c.fig.align_ylabels([top, ax])
        c.title()
        c.legend(top, entries, p.dropped)
        return c.svg()
