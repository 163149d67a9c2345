"""SVG drawing primitives shared by the charts: escaping, number formatting, nice ticks, scales, frames.

Everything here is pure and deterministic (no ids, no randomness, fixed float formatting), so the same chart
input always yields the same SVG string and reports can be diffed. Text widths are estimated from the
character count because a server-side renderer has no font metrics; the estimate errs wide so labels fit.
"""

from __future__ import annotations

import html
import math
import re
from collections.abc import Iterable

# Generic system fonts only: the report must render offline and fetch nothing.
FONT = "system-ui, -apple-system, 'Segoe UI', Helvetica, Arial, sans-serif"
# A colour-blind-friendly categorical palette (Tableau 10), used when a caller gives no colour.
PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd",
           "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf")
AXIS = "#555"
GRID = "#e6e6e6"
MUTED = "#888"

# Characters XML 1.0 forbids even when escaped; a stray one would make the whole SVG unparsable.
_XML_BAD = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")


def esc(text: object) -> str:
    """Text made safe for SVG/HTML content and attribute values (quotes escaped, XML-illegal chars dropped)."""
    return html.escape(_XML_BAD.sub("", str(text)), quote=True)


def finite(v: object) -> bool:
    """True for a real, finite number (bools and strings are not numbers here)."""
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def as_float(v: object) -> float:
    """v as a float, or NaN for anything that is not a number (None, bools, unparsable text)."""
    if isinstance(v, bool) or v is None:
        return math.nan
    try:
        return float(v)  # type: ignore[arg-type]
    except (TypeError, ValueError, OverflowError):
        return math.nan


def as_int(v: object) -> int | None:
    """v as an int when it is a whole number (7, 7.0, "7"), else None."""
    if isinstance(v, bool) or v is None:
        return None
    if isinstance(v, int):
        return v
    f = as_float(v)
    return int(f) if math.isfinite(f) and f.is_integer() else None


def px(v: float) -> str:
    """A pixel coordinate with one decimal: compact and stable across platforms."""
    s = f"{v:.1f}"
    return "0.0" if s == "-0.0" else s


def text_width(text: str, size: float = 11) -> float:
    """Estimated rendered width of text; 0.62 em per character is a little wide for proportional fonts."""
    return len(text) * size * 0.62


def truncate(text: str, max_px: float, size: float = 11) -> str:
    """Text shortened with an ellipsis so that its estimated width fits max_px."""
    if text_width(text, size) <= max_px:
        return text
    keep = max(1, int(max_px / (size * 0.62)) - 1)
    return text[:keep] + "\u2026"


def fmt_num(v: float, digits: int = 4) -> str:
    """A value for tooltips and cell labels: `digits` significant digits, 'NaN'/'inf' spelled out."""
    if v is None:
        return "\u2014"
    if isinstance(v, float) and math.isnan(v):
        return "NaN"
    if isinstance(v, float) and math.isinf(v):
        return "inf" if v > 0 else "-inf"
    if isinstance(v, int) and not isinstance(v, bool):
        return str(v)
    s = f"{v:.{digits}g}"
    # 1e-05 -> 1e-5: shorter, and the same on every platform.
    return re.sub(r"e([+-])0*(\d)", lambda m: "e" + ("-" if m.group(1) == "-" else "") + m.group(2), s)


def _fmt_tick(v: float, step: float, top: float) -> str:
    """A tick label precise enough to tell neighbouring ticks (`step` apart) from each other.

    `top` is the largest |tick| on the axis: an axis of tiny values (learning rates) is labelled in scientific
    notation throughout rather than as a mix of 0.0009 and 1e-4.
    """
    if abs(v) < step * 1e-9:
        return "0"
    a = abs(v)
    if top < 1e-3:
        return fmt_num(v, max(1, math.floor(math.log10(top)) - math.floor(math.log10(step) + 1e-9) + 1))
    if a >= 1e15:
        return fmt_num(v, 3)
    if a >= 1e4:
        # SI suffixes keep big step counts and token rates short (25k, 1.5M).
        for div, suffix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
            if a >= div:
                decimals = max(0, min(3, -math.floor(math.log10(step / div) + 1e-9)))
                return f"{v / div:.{decimals}f}{suffix}"
    decimals = max(0, min(8, -math.floor(math.log10(step) + 1e-9)))
    return f"{v:.{decimals}f}"


def _nice_step(span: float, target: int) -> float:
    """The 1-2-5 x 10^k step that cuts span into roughly `target` intervals."""
    raw = span / max(1, target)
    mag = 10.0 ** math.floor(math.log10(raw))
    for m in (1.0, 2.0, 5.0):
        if raw <= m * mag * (1 + 1e-9):
            return m * mag
    return 10.0 * mag


def linear_ticks(lo: float, hi: float, target: int = 5, integer: bool = False) -> tuple[float, float, list, list]:
    """Nice linear ticks covering [lo, hi]: (domain_lo, domain_hi, tick values, tick labels).

    The domain is widened to whole steps so the axis starts and ends on a labelled tick; a zero-width range
    is padded so a constant series still gets an axis. With integer=True steps are at least 1 (step axes).
    """
    if hi < lo:
        lo, hi = hi, lo
    if hi - lo <= abs(hi) * 1e-12:
        pad = abs(lo) * 0.1 if lo else 1.0
        lo, hi = lo - pad, hi + pad
    step = _nice_step(hi - lo, target)
    if integer:
        step = max(1.0, step)
    k0, k1 = math.floor(lo / step + 1e-9), math.ceil(hi / step - 1e-9)
    # Ticks are integer multiples of step, which avoids accumulated float error (0.30000000000000004).
    values = [k * step for k in range(k0, k1 + 1)]
    top = max(abs(values[0]), abs(values[-1]))
    return values[0], values[-1], values, [_fmt_tick(v, step, top) for v in values]


def log_ticks(lo: float, hi: float) -> tuple[float, float, list, list]:
    """Log-scale ticks for a positive range: 1-2-5 per decade when few decades, sparser when many."""
    if hi <= lo:
        lo, hi = lo / 2, hi * 2
    # A small pad in log space keeps extreme points off the frame.
    pad = (math.log10(hi) - math.log10(lo)) * 0.04 or 0.05
    dlo, dhi = 10 ** (math.log10(lo) - pad), 10 ** (math.log10(hi) + pad)
    if math.log10(dhi / dlo) < 1.3:
        # Under about a decade 1-2-5 ticks leave one or two labels; evenly stepped values read better.
        _, _, values, labels = linear_ticks(dlo, dhi, target=5)
        keep = [(v, lab) for v, lab in zip(values, labels) if dlo <= v <= dhi and v > 0]
        if len(keep) >= 2:
            return dlo, dhi, [v for v, _ in keep], [lab for _, lab in keep]
    e0, e1 = math.floor(math.log10(dlo)), math.ceil(math.log10(dhi))
    decades = e1 - e0
    mults = (1,) if decades > 4 else (1, 2, 5)
    stride = max(1, math.ceil(decades / 8))
    values = [m * 10.0 ** e for e in range(e0, e1 + 1) if e % stride == 0 for m in mults]
    values = [v for v in values if dlo <= v <= dhi]
    if len(values) < 2:
        values = [m * 10.0 ** e for e in range(e0, e1 + 1) for m in range(1, 10)]
        values = [v for v in values if dlo <= v <= dhi]
    if len(values) < 2:
        values = [dlo, dhi]
    return dlo, dhi, values, [_fmt_log(v) for v in values]


def _fmt_log(v: float) -> str:
    """A log-axis tick: plain decimals near 1 (0.001 .. 1000), SI above, scientific notation below."""
    if 1e-3 <= v < 1e4:
        return f"{v:.6g}"
    if 1e4 <= v < 1e15:
        for div, suffix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
            if v >= div and v / div < 1e4:
                return f"{v / div:.3g}{suffix}"
    return fmt_num(v, 2)


class Scale:
    """Maps data values in [d0, d1] to pixels in [r0, r1], linearly or logarithmically."""

    def __init__(self, d0: float, d1: float, r0: float, r1: float, log: bool = False):
        self.log = log
        self.d0, self.d1 = (math.log10(d0), math.log10(d1)) if log else (d0, d1)
        self.r0, self.r1 = r0, r1

    def __call__(self, v: float) -> float:
        """Pixel position of data value v (v must be > 0 on a log scale)."""
        t = math.log10(v) if self.log else v
        span = self.d1 - self.d0 or 1.0
        return self.r0 + (t - self.d0) / span * (self.r1 - self.r0)

    def contains(self, v: float) -> bool:
        """Whether v lies inside the domain (with a hair of tolerance for rounding)."""
        if self.log and v <= 0:
            return False
        t = math.log10(v) if self.log else v
        lo, hi = min(self.d0, self.d1), max(self.d0, self.d1)
        eps = (hi - lo) * 1e-9
        return lo - eps <= t <= hi + eps


def svg_open(width: float, height: float, title: str) -> str:
    """The root <svg> element with an accessible name and a <title> tooltip."""
    w, h = int(math.ceil(width)), int(math.ceil(height))
    return (f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {w} {h}" width="{w}" height="{h}" '
            f'role="img" aria-label="{esc(title)}" font-family="{esc(FONT)}" font-size="11">'
            f"<title>{esc(title)}</title>"
            f'<rect x="0" y="0" width="{w}" height="{h}" fill="#fff"/>')


def svg_title(title: str, width: float) -> str:
    """The chart heading, drawn at the top left."""
    return (f'<text x="8" y="17" font-size="13" font-weight="600" fill="#222">'
            f"{esc(truncate(title, width - 16, 13))}</text>")


def axis_lines(pl: float, pr: float, pt: float, pb: float, *, h_at: float, v_at: float) -> str:
    """The horizontal axis (pl..pr at height h_at) and the vertical one (pt..pb at x = v_at)."""
    return (f'<line x1="{px(pl)}" y1="{px(h_at)}" x2="{px(pr)}" y2="{px(h_at)}" stroke="{AXIS}"/>'
            f'<line x1="{px(v_at)}" y1="{px(pt)}" x2="{px(v_at)}" y2="{px(pb)}" stroke="{AXIS}"/>')


def x_axis_label(label: str, pl: float, pr: float, height: float) -> str:
    """A label centred under the plot area, at the bottom of the chart."""
    return (f'<text x="{px((pl + pr) / 2)}" y="{px(height - 6)}" text-anchor="middle" fill="#333">'
            f"{esc(label)}</text>")


def y_axis_label(label: str, pt: float, pb: float) -> str:
    """A label turned to run up the left edge, centred on the plot area."""
    cy = (pt + pb) / 2
    return (f'<text x="12" y="{px(cy)}" transform="rotate(-90 12 {px(cy)})" text-anchor="middle" '
            f'fill="#333">{esc(truncate(label, pb - pt))}</text>')


def placeholder(title: str, message: str = "no data", width: float = 720, height: float = 120) -> str:
    """A complete SVG that says why there is no chart (empty input, nothing plottable on a log axis, ...)."""
    height = min(height, 120)
    return (svg_open(width, height, title) + svg_title(title, width)
            + f'<rect x="8" y="28" width="{px(width - 16)}" height="{px(height - 36)}" fill="#fafafa" '
              f'stroke="{GRID}" stroke-dasharray="4 3"/>'
            + f'<text x="{px(width / 2)}" y="{px(28 + (height - 36) / 2 + 4)}" text-anchor="middle" '
              f'fill="{MUTED}" font-size="12">{esc(message)}</text></svg>')


def color_at(colors: str | Iterable[str] | None, i: int) -> str:
    """The i-th colour: a single colour for all, a per-item list (palette past its end), or the palette."""
    if isinstance(colors, str):
        return colors
    if colors is not None:
        seq = list(colors)
        if i < len(seq) and seq[i]:
            return str(seq[i])
    return PALETTE[i % len(PALETTE)]


def dash_attr(kind: str) -> str:
    """A stroke-dasharray attribute for a line style name ('solid', 'dashed', 'dotted')."""
    return {"dashed": ' stroke-dasharray="6 4"', "dotted": ' stroke-dasharray="2 3"'}.get(kind, "")
