"""HTML building blocks for the run report: the page shell and its CSS, tables, and value formatting.

The page is one self-contained file: inline CSS, inline SVG, no scripts, nothing fetched, so it opens from a
laptop's file browser or a CI artifact store alike. Every piece of text from the run passes through esc().
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from datetime import datetime, timezone

from turnout.train.plots_svg import esc, fmt_num

CSS = """
:root { color-scheme: light; }
body { margin: 0; background: #f3f4f6; color: #1f2328;
  font: 14px/1.5 system-ui, -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; }
main { max-width: 1000px; margin: 0 auto; padding: 24px 28px 64px; background: #fff; min-height: 100vh;
  box-sizing: border-box; }
h1 { font-size: 22px; margin: 0 0 2px; }
h2 { font-size: 18px; margin: 36px 0 8px; padding-bottom: 4px; border-bottom: 1px solid #e5e7eb; }
h3 { font-size: 15px; margin: 20px 0 6px; }
nav { font-size: 13px; margin: 6px 0 0; }
nav a { margin-right: 14px; color: #2563eb; text-decoration: none; }
.sub { color: #6b7280; font-size: 13px; }
.cards { display: grid; grid-template-columns: repeat(auto-fill, minmax(170px, 1fr)); gap: 10px; margin: 16px 0; }
.card { border: 1px solid #e5e7eb; border-radius: 6px; padding: 8px 12px; }
.card .k { font-size: 12px; color: #6b7280; }
.card .v { font-size: 18px; font-weight: 600; overflow-wrap: anywhere; }
.card .n { font-size: 12px; color: #6b7280; }
.badge { display: inline-block; padding: 1px 9px; border-radius: 10px; font-size: 13px; font-weight: 600; }
.finished { background: #dcfce7; color: #166534; }
.running, .stopped { background: #dbeafe; color: #1e40af; }
.failed { background: #fee2e2; color: #991b1b; }
.unknown { background: #e5e7eb; color: #374151; }
.chip { display: inline-block; padding: 0 7px; margin: 1px 4px 1px 0; border: 1px solid #cbd5e1; border-radius: 4px;
  font-size: 13px; font-weight: 500; }
table { border-collapse: collapse; width: 100%; font-size: 13px; margin: 8px 0 12px; }
th, td { text-align: left; padding: 4px 8px; border-bottom: 1px solid #eceef1; vertical-align: top; }
th { background: #f1f3f5; font-weight: 600; white-space: nowrap; }
tbody tr:nth-child(even) { background: #f9fafb; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
.ok { color: #166534; } .bad { color: #991b1b; font-weight: 600; }
figure { margin: 18px 0; }
figcaption { font-size: 12px; color: #6b7280; margin-top: 2px; }
svg { max-width: 100%; height: auto; display: block; }
details { margin: 8px 0; }
summary { cursor: pointer; font-weight: 600; }
pre { background: #f6f8fa; border: 1px solid #eceef1; border-radius: 4px; padding: 10px 12px; overflow: auto;
  font-size: 12px; line-height: 1.45; }
.nodata { color: #6b7280; font-style: italic; }
.warn { background: #fff8e6; border: 1px solid #f2d18b; border-radius: 4px; padding: 6px 10px; margin: 8px 0; }
.swatch { display: inline-block; width: 10px; height: 10px; border-radius: 2px; margin-right: 4px;
  vertical-align: baseline; }
footer { margin-top: 40px; font-size: 12px; color: #6b7280; }
"""


class Html(str):
    """A string that is already HTML; table() and cell helpers insert it unescaped."""


def h(text: object) -> str:
    """Escaped text, unless it is already Html."""
    return text if isinstance(text, Html) else esc(text)


def page(title: str, body: str) -> str:
    """A complete standards-mode HTML document with the report's CSS inlined."""
    return ("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n"
            f"<title>{esc(title)}</title>\n<style>{CSS}</style>\n</head>\n<body>\n<main>\n{body}\n</main>\n"
            "</body>\n</html>\n")


def table(headers: Sequence[str], rows: Iterable[Sequence[object]], numeric: Sequence[int] = ()) -> str:
    """A zebra-striped table; cells are escaped unless Html; columns listed in `numeric` are right-aligned."""
    head = "".join(f"<th>{h(c)}</th>" for c in headers)
    body = []
    for row in rows:
        cells = "".join(f'<td class="num">{h(c)}</td>' if i in numeric else f"<td>{h(c)}</td>"
                        for i, c in enumerate(row))
        body.append(f"<tr>{cells}</tr>")
    return f"<table>\n<thead><tr>{head}</tr></thead>\n<tbody>\n" + "\n".join(body) + "\n</tbody>\n</table>"


def nodata(why: str = "no data") -> str:
    """The paragraph a section shows when it has nothing to show."""
    return f'<p class="nodata">{esc(why)}</p>'


def fmt_value(v: object, digits: int = 4) -> str:
    """A number for a table: None as an em dash, NaN spelled out, `digits` significant digits."""
    if v is None:
        return "\u2014"
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        if isinstance(v, float) and math.isfinite(v) and 1e3 <= abs(v) < 1e9:
            return f"{v:,.0f}"  # 20,000 tok/s reads better than 2e4
        return fmt_num(v, digits)
    return str(v)


def fmt_dur(s: float | None) -> str:
    """A duration in the unit a person would use: 350 ms, 0.20 s, 12.5 s, 3 min 05 s, 2 h 07 min."""
    if s is None or not isinstance(s, (int, float)) or not math.isfinite(s):
        return "\u2014"
    if s == 0:
        return "0 s"
    if s < 0:
        return "-" + fmt_dur(-s)
    if s < 0.01:
        return f"{s * 1000:.1f} ms"
    if s < 10:
        return f"{s:.2f} s"
    if s < 60:
        return f"{s:.1f} s"
    if s < 3600:
        m, sec = divmod(int(round(s)), 60)
        return f"{m} min {sec:02d} s"
    hours, rest = divmod(int(round(s)), 3600)
    return f"{hours} h {rest // 60:02d} min"


def fmt_utc(t: float | None) -> str:
    """A unix time as 'YYYY-MM-DD HH:MM:SS UTC' (UTC so the report reads the same in every time zone)."""
    if t is None or not isinstance(t, (int, float)) or not math.isfinite(t):
        return "\u2014"
    try:
        return datetime.fromtimestamp(t, tz=timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
    except (OverflowError, OSError, ValueError):
        return fmt_num(t)


def fmt_offset(t: float | None, t0: float | None) -> Html:
    """Time since the run started ("+12.5 s"), with the absolute UTC time as a tooltip."""
    if t is None or t0 is None or not math.isfinite(t) or not math.isfinite(t0):
        return Html(esc(fmt_utc(t)))
    return Html(f'<span title="{esc(fmt_utc(t))}">+{esc(fmt_dur(t - t0))}</span>')


def fmt_count(n: int | None) -> str:
    """A parameter or token count with an SI suffix: 1.23M, 671B."""
    if n is None:
        return "\u2014"
    for div, suffix in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= div:
            return f"{n / div:.3g}{suffix}"
    return str(n)


def fmt_pct(v: float | None) -> str:
    """A 0..1 fraction as a percentage with one decimal."""
    if v is None or not isinstance(v, (int, float)) or not math.isfinite(v):
        return "\u2014"
    return f"{v * 100:.1f} %"


def swatch(color: str) -> Html:
    """A small coloured square, for legends written in HTML."""
    return Html(f'<span class="swatch" style="background:{esc(color)}"></span>')
