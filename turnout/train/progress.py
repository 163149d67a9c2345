"""What a person watching a run sees: a rich progress bar with ETA on a terminal, plain lines otherwise."""

from __future__ import annotations

import sys
import time

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn


def _eta(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    return f"{seconds // 60}m{seconds % 60:02d}s"


class RunProgress:
    """Step progress for rank 0 (other ranks pass enabled=False). `every` spaces the plain lines."""

    def __init__(self, total: int, start: int, enabled: bool = True, every: int = 10, label: str = "train"):
        self.total, self.start, self.enabled, self.every = total, start, enabled, max(every, 1)
        self.t0 = time.time()
        self.tty = enabled and sys.stdout.isatty()
        self._bar = None
        if self.tty:
            self.console = Console()
            self._bar = Progress(TextColumn(f"[bold]{label}"), BarColumn(), MofNCompleteColumn(),
                                 TextColumn("{task.fields[info]}"), TimeElapsedColumn(), TextColumn("eta"),
                                 TimeRemainingColumn(), console=self.console, transient=False)
            self._task = self._bar.add_task(label, total=total, completed=start, info="")
            self._bar.start()

    def update(self, step: int, loss: float, lr: float, tokens_per_s: float, mfu: float) -> None:
        if not self.enabled:
            return
        info = f"loss {loss:.4f}  lr {lr:.2e}  {tokens_per_s:,.0f} tok/s  mfu {mfu:.1%}"
        if self._bar is not None:
            self._bar.update(self._task, completed=step, info=info)
        elif step % self.every == 0 or step == self.total:
            done = step - self.start
            rate = (time.time() - self.t0) / done if done else 0.0
            print(f"step {step}/{self.total}  {info}  eta {_eta(rate * (self.total - step))}", flush=True)

    def log(self, message: str) -> None:
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.console.print(message)
        else:
            print(message, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None
