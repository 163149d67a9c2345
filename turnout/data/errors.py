"""The one exception the data package raises for bad input: `DataError`, defined in turnout.errors (layer 0) so
the command line can catch it without importing the data stack and torch."""

from turnout.errors import DataError

__all__ = ["DataError"]
