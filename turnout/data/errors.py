"""The one exception the data package raises for bad input."""


class DataError(ValueError):
    """Bad or missing input data: a missing path, an unreadable line, a missing field, an empty corpus.

    The message is one line and names the file (and line or field) at fault, so the CLI can print it as is.
    """
