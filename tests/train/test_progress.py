"""The terminal view of a run: event tags survive rich, and the bar stays readable at 80 columns."""

import io
import re

import pytest
from rich.console import Console

from turnout.train.progress import BAR_MIN, RunProgress

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
BAR = re.compile(r"[━╸╺]+")  # rich draws the done and the remaining part with these, in two colours


def _terminal(width: int) -> Console:
    return Console(file=io.StringIO(), width=width, force_terminal=True, color_system="standard")


def _lines(console: Console) -> list[str]:
    """What the terminal shows, line by line, without colours and cursor moves (each redraw on its own line)."""
    return ANSI.sub("", console.file.getvalue()).replace("\r", "\n").splitlines()


def test_event_tags_are_printed_as_text_not_read_as_markup():
    console = _terminal(80)
    p = RunProgress(100, 0, console=console)
    p.log("[resume] step 40: resumed from [bold]step-40[/bold] on sim:flaky :smile:")
    p.log("[start] step 0: 2-layer model")
    p.close()
    shown = "\n".join(_lines(console))
    assert "[resume] step 40: resumed from [bold]step-40[/bold] on sim:flaky :smile:" in shown
    assert "[start] step 0: 2-layer model" in shown


@pytest.mark.parametrize("total", [200, 10_000])
def test_the_bar_keeps_a_useful_width_at_80_columns(total):
    console = _terminal(80)
    p = RunProgress(total, 0, console=console)
    p.update(total * 3 // 4, 3.1234, 3e-3, 12345.6, 0.123)
    p.close()
    line = [ln for ln in _lines(console) if "loss 3.1234" in ln][-1]
    assert len(line) <= 80
    assert max(len(run) for run in BAR.findall(line)) >= BAR_MIN >= 20, line
    assert "12,346 tok/s" in line  # the metrics that fit stay; lr gives way first


def test_a_wide_terminal_shows_every_metric():
    console = _terminal(160)
    p = RunProgress(200, 0, console=console)
    p.update(150, 3.1234, 3e-3, 12345.6, 0.123)
    p.close()
    line = [ln for ln in _lines(console) if "loss 3.1234" in ln][-1]
    assert "loss 3.1234  lr 3.00e-03  12,346 tok/s  mfu 12.3%" in line


def test_plain_lines_off_a_terminal(capsys):
    p = RunProgress(20, 0, every=10)
    p.update(10, 3.1234, 3e-3, 12345.6, 0.123)
    p.log("[resume] step 10: resumed")
    assert capsys.readouterr().out.splitlines() == [
        "step 10/20  loss 3.1234  lr 3.00e-03  12,346 tok/s  mfu 12.3%  eta 0m00s", "[resume] step 10: resumed"]
