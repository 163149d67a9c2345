"""The HTML pages' machinery: one jinja2 environment (autoescaping on, templates/ in the package), the value
filters every template uses, and the guard that lets one odd record cost a section, never a page.

Pages are self-contained files: CSS inlined from templates/style.css, charts as inline SVG, no scripts and
nothing fetched, so they open offline from a file browser or a CI artifact store alike.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import lru_cache
from importlib import resources
from typing import Any

import jinja2
from markupsafe import Markup

from turnout.errors import one_line
from turnout.report.values import fmt_bytes, fmt_count, fmt_dur, fmt_offset, fmt_pct, fmt_utc, fmt_value


@lru_cache(maxsize=1)
def environment() -> jinja2.Environment:
    """The environment every page renders with: autoescaped, strict about undefined names, value filters."""
    env = jinja2.Environment(loader=jinja2.PackageLoader("turnout.report", "templates"), autoescape=True,
                             undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True,
                             keep_trailing_newline=True)
    env.filters.update(num=fmt_value, dur=fmt_dur, utc=fmt_utc, pct=fmt_pct, count=fmt_count,
                       bytes=fmt_bytes, offset=fmt_offset)
    return env


@lru_cache(maxsize=1)
def _css() -> str:
    return resources.files("turnout.report").joinpath("templates/style.css").read_text(encoding="utf-8")


def render(template: str, **context: Any) -> str:
    """A whole page from templates/`template`; `title` is required, the CSS is added here."""
    return environment().get_template(template).render(css=Markup(_css()), **context)


class Guarded:
    """A section's value, or the error that building it raised (shown on the page instead of the section)."""

    def __init__(self, value: Any = None, error: str | None = None):
        self.value, self.error = value, error


def guard(build: Callable[..., Any], *args: Any) -> Guarded:
    """Build one section's content; an exception becomes a visible note naming it, not a failed page."""
    try:
        return Guarded(build(*args))
    except Exception as exc:  # noqa: BLE001 -- deliberately broad: the note names the error
        return Guarded(error=one_line(exc))
