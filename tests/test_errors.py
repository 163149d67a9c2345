"""The project's shared error type and its one-line error formatter."""

import pytest

from turnout.config import ConfigError
from turnout.errors import CheckpointError, one_line


def test_an_exception_is_its_type_and_the_first_line_of_its_message():
    assert one_line(RuntimeError("CUDA error: device-side assert\n  at kernel.cu:12\n...")) == \
        "RuntimeError: CUDA error: device-side assert"
    assert one_line(KeyError("a")) == "KeyError: 'a'"
    assert one_line(ValueError("\n\n  leading blank lines\nmore")) == "ValueError: leading blank lines"


def test_an_empty_message_is_just_the_type():
    assert one_line(RuntimeError()) == "RuntimeError"
    assert one_line(RuntimeError("  \n ")) == "RuntimeError"


def test_text_keeps_no_type_and_whitespace_collapses():
    assert one_line("Expected '=' after a key\t in   a key/value pair\nsecond") == \
        "Expected '=' after a key in a key/value pair"
    assert one_line("") == ""


@pytest.mark.parametrize("limit", [10, 200, 240, 300])
def test_a_long_line_is_cut_to_the_limit_with_an_ellipsis(limit):
    out = one_line(RuntimeError("x" * 1000), limit=limit)
    assert len(out) == limit and out.endswith("…") and out.startswith("RuntimeError: xx"[:limit - 1])
    assert one_line("y" * limit, limit=limit) == "y" * limit  # exactly at the limit: nothing cut


def test_checkpoint_errors_are_bad_input_like_config_errors():
    assert issubclass(CheckpointError, ValueError) and issubclass(ConfigError, ValueError)
