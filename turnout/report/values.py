"""Numbers in the record: read tolerantly from files other processes wrote, and written for a person.

Readers never raise: None, bools, unparsable text and missing keys become NaN (as_float) or None (as_int).
Writers give one spelling per kind of number, used by every page and its jinja2 filters: counts with SI
suffixes, durations in the unit a person would use, times in UTC, bytes in binary units, NaN spelled out.
"""

from __future__ import annotations

import math
import re
from datetime import datetime, timezone

DASH = "\u2014"  # shown for a value that is missing


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


def finite(v: object) -> float | None:
    """v as a finite float, or None."""
    f = as_float(v)
    return f if math.isfinite(f) else None


def fmt_num(v: object, digits: int = 4) -> str:
    """`digits` significant digits; None as a dash, 'NaN'/'inf' spelled out, ints as they are."""
    if v is None:
        return DASH
    if isinstance(v, int) and not isinstance(v, bool):
        return str(v)
    f = as_float(v)
    if math.isnan(f):
        return str(v) if isinstance(v, str) and v.strip().lower() != "nan" else "NaN"  # text stays text
    if math.isinf(f):
        return "inf" if f > 0 else "-inf"
    s = f"{f:.{digits}g}"
    # 1e-05 -> 1e-5: shorter, and the same on every platform.
    return re.sub(r"e([+-])0*(\d)", lambda m: "e" + ("-" if m.group(1) == "-" else "") + m.group(2), s)


def fmt_value(v: object, digits: int = 4) -> str:
    """A number for a table: thousands separators between 1e3 and 1e9 (20,000 tok/s reads better than 2e4)."""
    if isinstance(v, float) and math.isfinite(v) and 1e3 <= abs(v) < 1e9:
        return f"{v:,.0f}"
    if v is None or isinstance(v, (int, float)) and not isinstance(v, bool):
        return fmt_num(v, digits)
    return str(v)


def fmt_dur(s: object) -> str:
    """A duration: 350 ms, 0.20 s, 12.5 s, 3 min 05 s, 2 h 07 min."""
    s = finite(s)
    if s is None:
        return DASH
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


def fmt_utc(t: object) -> str:
    """A unix time as 'YYYY-MM-DD HH:MM:SS UTC' (UTC so a page reads the same in every time zone)."""
    t = finite(t)
    if t is None:
        return DASH
    try:
        return datetime.fromtimestamp(t, tz=timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
    except (OverflowError, OSError, ValueError):
        return fmt_num(t)


def fmt_offset(t: object, t0: object) -> str:
    """Time since `t0` ("+12.5 s"), or the absolute UTC time when either is missing."""
    a, b = finite(t), finite(t0)
    if a is None or b is None:
        return fmt_utc(t)
    return "+" + fmt_dur(a - b)


def fmt_count(n: object) -> str:
    """A parameter or token count with an SI suffix: 1.23M, 671B."""
    n = finite(n)
    if n is None:
        return DASH
    for div, suffix in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= div:
            return f"{n / div:.3g}{suffix}"
    return str(int(n)) if n.is_integer() else fmt_num(n)


def fmt_pct(v: object) -> str:
    """A 0..1 fraction as a percentage with one decimal."""
    v = finite(v)
    return DASH if v is None else f"{v * 100:.1f} %"


def fmt_bytes(n: object) -> str:
    """A byte count in binary units: 512 B, 3.0 KiB, 1.50 GiB."""
    n = finite(n)
    if n is None:
        return DASH
    for div, unit in ((2**40, "TiB"), (2**30, "GiB"), (2**20, "MiB"), (2**10, "KiB")):
        if abs(n) >= div:
            return f"{n / div:.3g} {unit}"
    return f"{int(n)} B"
