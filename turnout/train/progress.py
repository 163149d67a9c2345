"""What a person watching a run sees: a rich progress bar with ETA on a terminal, plain lines otherwise.

Everything printed through rich is literal text (markup and emoji codes off): event lines start with tags such as
`[resume]` that rich would otherwise read as markup and drop. The bar line is `LABEL BAR STEP/TOTAL METRICS eta T`;
the metrics give way, lowest priority first (lr, then mfu, then tok/s), so the bar keeps at least BAR_MIN cells
on a narrow terminal (80 columns included); on a wide one it takes the space left over.
"""

from __future__ import annotations

import sys
import time

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Column

BAR_MIN = 20  # cells: below this a bar no longer shows progress at a glance
ETA = len("eta 00:00:00")  # "eta", its gap and the remaining time at its widest (rich writes H:MM:SS)
GAP = 1  # rich's padding between columns
DROP_ORDER = (1, 3, 2)  # metric indices (loss, lr, tok/s, mfu) in the order they give way on a narrow terminal


def _eta(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    return f"{seconds // 60}m{seconds % 60:02d}s"


def _fit_metrics(parts: list[str], room: int) -> str:
    """`parts` joined by two spaces, leaving out parts in DROP_ORDER until the line fits in `room` cells (the
    first part, the loss, always stays)."""
    keep = list(range(len(parts)))
    for i in DROP_ORDER:
        if len("  ".join(parts[j] for j in keep)) <= room:
            break
        if i in keep:
            keep.remove(i)
    return "  ".join(parts[j] for j in keep)


class RunProgress:
    """Step progress for rank 0 (other ranks pass enabled=False). `every` spaces the plain lines.

    `console` is where to draw the bar (tests pass a recording Console); by default, stdout when it is a terminal,
    else plain lines on stdout."""

    def __init__(self, total: int, start: int, enabled: bool = True, every: int = 10, label: str = "train",
                 console: Console | None = None):
        self.total, self.start, self.enabled, self.every = total, start, enabled, max(every, 1)
        self.label = label
        self.t0 = time.time()
        self.tty = enabled and (console is not None or sys.stdout.isatty())
        self._bar = None
        if self.tty:
            self.console = console or Console()
            self._bar = Progress(TextColumn(label, style="bold", markup=False),
                                 BarColumn(bar_width=None, table_column=Column(ratio=1, min_width=BAR_MIN)),
                                 MofNCompleteColumn(), TextColumn("{task.fields[info]}", markup=False),
                                 TextColumn("eta"), TimeRemainingColumn(), console=self.console, transient=False,
                                 expand=True)
            self._task = self._bar.add_task(label, total=total, completed=start, info="")
            self._bar.start()

    def _metrics_room(self) -> int:
        """Cells the metrics may take on this console's line and still leave the bar BAR_MIN."""
        step = 2 * len(str(self.total)) + 1  # MofNCompleteColumn pads the step to the total's width
        return self.console.width - len(self.label) - BAR_MIN - step - ETA - 4 * GAP

    def update(self, step: int, loss: float, lr: float, tokens_per_s: float, mfu: float) -> None:
        if not self.enabled:
            return
        parts = [f"loss {loss:.4f}", f"lr {lr:.2e}", f"{tokens_per_s:,.0f} tok/s", f"mfu {mfu:.1%}"]
        if self._bar is not None:
            self._bar.update(self._task, completed=step, info=_fit_metrics(parts, self._metrics_room()))
        elif step % self.every == 0 or step == self.total:
            done = step - self.start
            rate = (time.time() - self.t0) / done if done else 0.0
            print(f"step {step}/{self.total}  {'  '.join(parts)}  eta {_eta(rate * (self.total - step))}", flush=True)

    def log(self, message: str) -> None:
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.console.print(message, markup=False, emoji=False)
        else:
            print(message, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None
