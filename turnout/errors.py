"""User-facing error types that several layers raise, and the one way an error becomes one short line.

Layer 0: imports only the standard library, so every layer can raise these and format with `one_line`.
"""

from __future__ import annotations

import re

ELLIPSIS = "…"


class TargetError(ValueError):
    """A malformed, unknown or unusable target; the message is one line. Raised by backend/ (re-exported there as
    `turnout.backend.TargetError`); defined here so the CLI can catch it without importing torch."""


class DataError(ValueError):
    """Bad or missing input data: a missing path, an unreadable line, a missing field, an empty corpus.

    The message is one line and names the file (and line or field) at fault, so the CLI can print it as is.
    Raised by data/ (re-exported there as `turnout.data.DataError`)."""


class CheckpointError(ValueError):
    """A checkpoint does not match the model or cannot be trusted: a missing, unexpected or mis-shaped tensor
    (named), a bad config or manifest, a file failing its hash. The message is one line, so the CLI prints it as
    is (exit 2); a ValueError, like ConfigError, so callers catching bad input catch it too."""


def one_line(what: BaseException | str, limit: int = 240) -> str:
    """One short line for a person: an exception as `Type: first line of its message` (just `Type` when the
    message is empty), text as its first line; runs of whitespace collapsed to one space, and cut to at most
    `limit` characters, the last one an ellipsis, when longer.

    The first non-blank line is kept because tracebacks, compiler output and vendor errors put the cause there
    and pages of detail below it.
    """
    text = str(what).strip()
    first = re.sub(r"\s+", " ", text.splitlines()[0]) if text else ""
    if isinstance(what, BaseException):
        first = f"{type(what).__name__}: {first}" if first else type(what).__name__
    return first if len(first) <= limit else first[:limit - len(ELLIPSIS)] + ELLIPSIS
