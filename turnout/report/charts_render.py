"""From a matplotlib Figure to an inline SVG string, plus the input cleaning and look every report chart shares.

A chart is drawn inside `chart(...)`: a plain `matplotlib.figure.Figure` on an SVG canvas (pyplot's global
state is never touched) under an `rc_context` that keeps text as text, prints `$` and `_` literally and salts
the SVG ids with a key derived from the chart's kind, title and data. The SVG is made embeddable: no XML
declaration, DOCTYPE, date or creator; its size in CSS pixels; matplotlib's unsalted group ids (figure_1,
axes_1, ...) dropped so charts can share a page; its page-wide `*{...}` style scoped to the charts.
"""

from __future__ import annotations

import hashlib
import io
import math
import re
import textwrap
import warnings
from contextlib import contextmanager
from xml.sax.saxutils import quoteattr

import matplotlib as mpl
import numpy as np
from matplotlib.backends.backend_svg import FigureCanvasSVG
from matplotlib.colors import is_color_like, to_hex
from matplotlib.figure import Figure
from matplotlib.ticker import Formatter, LogLocator, MaxNLocator, NullFormatter

from turnout.report.values import as_float

DPI = 100  # CSS px per inch of figure size: a figure of width/100 inches is `width` pixels wide on the page
FONT_PT = 8.5
MUTED = "#777777"
# Tableau 10 (colour-blind friendly); past 10 series the light halves of tab20 follow.
TAB10 = tuple(to_hex(c) for c in mpl.colormaps["tab10"].colors)
TAB20 = TAB10 + tuple(to_hex(c) for c in mpl.colormaps["tab20"].colors[1::2])
_RC = {
    "svg.fonttype": "none",  # text stays <text>: searchable, selectable and much smaller than glyph paths
    "text.parse_math": False,  # "$x" and "a_b" in labels are data, not mathtext
    # Layout is measured with DejaVu Sans; browsers without it fall back to narrower fonts, so text still fits.
    "font.sans-serif": ["DejaVu Sans", "Helvetica", "Arial"], "font.size": FONT_PT,
    "figure.titlesize": FONT_PT + 2, "figure.titleweight": "bold",
    "legend.fontsize": FONT_PT - 0.5, "legend.frameon": False,
    "xtick.labelsize": FONT_PT - 0.5, "ytick.labelsize": FONT_PT - 0.5,
    "axes.spines.top": False, "axes.spines.right": False, "axes.edgecolor": "#555555",
    "axes.grid": True, "axes.axisbelow": True, "grid.color": "#e6e6e6", "grid.linewidth": 0.6,
}
_METADATA = {"Date": None, "Creator": None, "Format": None, "Type": None}  # nothing that changes run to run
# Characters XML 1.0 forbids even as references; one stray control character in a label would void the SVG.
_XML_BAD = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")


class Chart:
    """One chart being drawn (see `chart`): its figure, its size in CSS px and its id key."""

    def __init__(self, kind: str, title: str, width: float, height: float, data: tuple):
        h = hashlib.sha256(f"{kind}\0{title}".encode())
        for d in data:  # the data joins the key: same title, different data, different ids
            h.update(d.tobytes() if isinstance(d, np.ndarray) else str(d).encode())
        self.key, self.title_text = "c" + h.hexdigest()[:10], str(title)
        self.width, self.height = max(int(width), 240), max(int(height), 80)  # below this nothing fits

    def grow(self, px: float) -> None:
        """Make the figure taller by what the title and legend rows take, so the plot keeps its height."""
        self.height += math.ceil(px)
        self.fig.set_size_inches(self.width / DPI, self.height / DPI)

    def title(self) -> None:
        """The chart heading at the top left, wrapped (never truncated) to the figure's width."""
        text = textwrap.fill(self.title_text, max(20, int((self.width - 16) / text_px("x", FONT_PT + 2))))
        self.grow(text.count("\n") * (FONT_PT + 2) * DPI / 72 * 1.2)
        self.fig.suptitle(text, x=8 / self.width, ha="left")

    def legend(self, ax, entries: list[tuple[object, str]], dropped: int = 0) -> None:
        """A legend above `ax` (outside the data, below the title): one entry per distinct non-empty label, in one
        row or as many equal columns as fit, and a grey note of the `dropped` values a log axis cannot show. The
        figure grows by the rows past the first."""
        labels: dict[str, object] = {}
        notes = [f"{dropped} non-positive value(s) not shown (log scale)"] if dropped else []
        for handle, label in entries:
            if label:
                labels.setdefault(str(label), handle)
        if not labels and not notes:
            return
        font_px = (FONT_PT - 0.5) * DPI / 72
        widths, room = [text_px(label) + 5 * font_px for label in labels], self.width - 80  # label, handle and gap
        ncols = max(1, len(labels) if sum(widths) <= room else int(room // max(widths)))  # one row, or equal columns
        self.grow((math.ceil(len(labels) / ncols) + len(notes) - 1) * font_px * 1.4)
        ax.legend(list(labels.values()), list(labels), loc="lower left", bbox_to_anchor=(0, 1.01), ncols=ncols,
                  borderaxespad=0.2, handlelength=1.8, columnspacing=1.4, title="\n".join(notes) or None,
                  alignment="left", title_fontproperties={"size": FONT_PT - 0.5}).get_title().set_color(MUTED)

    def svg(self) -> str:
        """The figure as an SVG string to put inline in HTML."""
        buf = io.StringIO()
        self.fig.savefig(buf, format="svg", metadata=_METADATA)
        s = buf.getvalue()
        s = re.sub(r'<g id="[^"]*"', "<g", s[s.index("<svg"):])  # unsalted (figure_1, ...) and referenced nowhere
        size = f'width="{self.width}" height="{self.height}" role="img" class="turnout-chart" aria-label='
        s = re.sub(r'width="[^"]*" height="[^"]*"', lambda _: size + quoteattr(self.title_text), s, count=1)
        s = s.replace("*{stroke-linejoin", "svg.turnout-chart *{stroke-linejoin", 1)
        return _XML_BAD.sub("", re.sub(r">\s+<", "><", s).strip())


@contextmanager
def chart(kind: str, title: str, width: float, height: float, *data: object):
    """`with chart(kind, title, width, height, *data) as c:` draw on `c.fig`, then `return c.svg()` inside the
    block (the rc settings and the id salt apply only there). `data` (arrays or strings) joins the id key."""
    c = Chart(kind, title, width, height, data)
    # rcParams are process-global and rc_context is not thread-safe: fine, reports are written from one thread.
    # Warnings such as a glyph DejaVu lacks are noise: text stays text, so the browser draws it with its own fonts.
    with mpl.rc_context(_RC | {"svg.hashsalt": c.key}), warnings.catch_warnings(action="ignore", category=UserWarning):
        c.fig = Figure(figsize=(c.width / DPI, c.height / DPI), dpi=DPI, layout="constrained")
        FigureCanvasSVG(c.fig)
        yield c


def placeholder(title: str, message: str, width: float = 720) -> str:
    """A small chart that says why there is nothing to draw ("no data", nothing positive for a log axis)."""
    with chart("placeholder", title, width, 90, message) as c:
        c.title()
        ax = c.fig.add_subplot(facecolor="#fafafa", xticks=[], yticks=[])
        ax.spines[:].set(visible=True, linestyle="--", edgecolor="#dddddd")
        ax.text(0.5, 0.5, message, transform=ax.transAxes, ha="center", va="center", color=MUTED,
                fontsize=FONT_PT + 1)
        return c.svg()


def why_empty(dropped: int) -> str:
    """The placeholder's message: nothing at all, or nothing a log axis can show."""
    return "no positive values to plot on a log scale" if dropped else "no data"


def tick_label(v: float, top: float) -> str:
    """A tick value as plain text: SI suffixes for big numbers (25k, 1.5M), scientific notation on an axis of
    tiny values (learning rates; `top` is the axis' largest |tick|), otherwise up to 6 significant digits."""
    if not math.isfinite(v) or v == 0:
        return "0"
    if abs(v) >= 1e4:
        div, suffix = next((d, s) for d, s in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")) if abs(v) >= d)
        return f"{v / div:.4g}{suffix}"
    m, _, e = (f"{v:.2e}" if top < 1e-3 else f"{v:.6g}").partition("e")
    return f"{m.rstrip('0').rstrip('.') if '.' in m else m}e{int(e)}" if e else m


class _Ticks(Formatter):
    """tick_label for an axis: never an offset text or a mathtext exponent (which would print literally)."""

    top: float | None = None  # the largest |tick| of the axis

    def set_locs(self, locs) -> None:
        self.top = max((abs(t) for t in locs), default=None)

    def __call__(self, x, pos=None):
        return tick_label(x, abs(x) if self.top is None else self.top)


def style_axis(axis, *, log: bool = False, integer: bool = False, span: tuple[float, float] | None = None) -> None:
    """Plain-text ticks on an axis; whole-number ticks for step counts; on a log axis 1-2-5 ticks over few
    decades of `span` (the positive data range) and every 1..9 multiple over less than one."""
    if log:
        decades = math.log10(span[1] / span[0]) if span and span[0] > 0 else 9.0
        axis.set_major_locator(LogLocator(subs=range(1, 10) if decades < 0.8 else (1, 2, 5) if decades < 3 else (1,)))
        axis.set_minor_locator(LogLocator(subs="auto"))
        axis.set_minor_formatter(NullFormatter())
    elif integer:
        axis.set_major_locator(MaxNLocator(nbins="auto", integer=True))
    axis.set_major_formatter(_Ticks())


def palette_for(requested: list[str | None]) -> list[str]:
    """A colour per item: valid requested colours kept, the rest take the next palette colour not already
    requested (tab10, or tab20 past ten items)."""
    taken = {to_hex(c) for c in requested if is_color_like(c)}
    free = [c for c in (TAB10 if len(requested) <= 10 else TAB20) if c not in taken] or list(TAB20)
    spare = iter(free * len(requested))
    return [c if is_color_like(c) else next(spare) for c in requested]


def color_or(c: object, default: str) -> str:
    """c when matplotlib understands it as a colour, else default (bad colours must not raise)."""
    return c if isinstance(c, str) and is_color_like(c) else default


def text_px(text: str, pt: float = FONT_PT - 0.5) -> float:
    """Estimated width of one line of text in CSS px (0.62 em a character errs wide for DejaVu Sans)."""
    return len(text) * pt * DPI / 72 * 0.62


def as_list(values: object) -> list:
    """values as a list; a string or a non-iterable (None, a number) counts as no items."""
    try:
        return [] if isinstance(values, (str, bytes)) else list(values)  # type: ignore[call-overload]
    except TypeError:
        return []


def floats(values: object) -> np.ndarray:
    """A 1-D float array of `values`; None, text, inf and other non-numbers become NaN (a gap)."""
    a = np.array([as_float(v) for v in as_list(values)], dtype=float)
    return np.where(np.isfinite(a), a, np.nan)


def paired(*columns: object) -> list[np.ndarray]:
    """Float arrays of the columns cut to the shortest one, so xs and ys of unequal length never raise."""
    arrays = [floats(c) for c in columns]
    return [a[: min(b.size for b in arrays)] for a in arrays]


def drop_non_positive(a: np.ndarray) -> tuple[np.ndarray, int]:
    """a with zeros and negatives made NaN (a log axis cannot show them) and how many there were."""
    bad = a <= 0  # NaN compares False, so gaps are not counted
    return np.where(bad, np.nan, a), int(bad.sum())


def thin(x: np.ndarray, columns: list[np.ndarray], lo: float, hi: float, buckets: int) -> np.ndarray:
    """Indices of the points worth drawing when there are more than ~3 per pixel column: in each of `buckets`
    slices of lo..hi, the points with the smallest and largest value of every column (so spikes survive), and
    one missing point wherever some lay between two kept ones (so the line still breaks there)."""
    ok = np.isfinite(x) & np.isfinite(columns).all(axis=0)
    idx = np.flatnonzero(ok)
    if idx.size <= 3 * buckets:
        return np.arange(x.size)
    group = np.clip(((x[idx] - lo) / ((hi - lo) or 1.0) * buckets).astype(np.int64), 0, buckets - 1)
    keep = []
    for values in columns:
        order = np.lexsort((values[idx], group))
        change = group[order][1:] != group[order][:-1]
        keep += [idx[order[np.r_[True, change]]], idx[order[np.r_[change, True]]]]
    kept, missing = np.unique(np.concatenate(keep)), np.flatnonzero(~ok)
    seen = np.searchsorted(missing, kept)  # missing points before each kept one
    return np.union1d(kept, missing[seen[:-1][seen[1:] > seen[:-1]]])
