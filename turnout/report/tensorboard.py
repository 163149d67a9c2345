"""An optional TensorBoard copy of a run's metrics and events (`train.log_to = ["tensorboard"]`).

`RUN/metrics.jsonl` and `RUN/events.jsonl` stay the record; this sink only mirrors them into TensorBoard event
files so a person can watch a run live with ``tensorboard --logdir RUN/tensorboard``.

torch.utils.tensorboard is imported when a sink is built, never when this module is imported, because the
`tensorboard` package is an optional extra (``pip install 'turnout[tensorboard]'``).
"""

from __future__ import annotations

import math
import numbers
from pathlib import Path
from typing import Any

#: row fields that are the axes or labels of a point, not values to plot
_NOT_VALUES = frozenset({"kind", "step", "time", "target"})

#: field -> tag name, where the bare field name would hide its unit
_RENAMED = {"memory": "memory_bytes", "step_time": "step_time_s"}

_MISSING = "train.log_to = [\"tensorboard\"] needs the tensorboard package: pip install 'turnout[tensorboard]'"


def _plottable(v: Any) -> bool:
    """A finite real number (bools are flags, not measurements; NaN/inf would break TensorBoard's axes)."""
    return isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v)


class TensorBoardSink:
    """Writes metrics rows as scalars and events as text into TensorBoard event files under `log_dir`.

    Look at it with ``tensorboard --logdir RUN/tensorboard``. Scalars are tagged by the row's kind and field:
    ``train/loss``, ``train/ce``, ``train/mtp``, ``train/balance``, ``train/grad_norm``, ``train/lr``,
    ``train/tokens_per_s``, ``train/mfu``, ``train/step_time_s``, ``train/samples``, ``train/expert_load_cv``,
    ``train/memory_bytes``, ``eval/val_loss``; per-layer gradient norms as ``grad_norm/<layer>`` (``grad_norm/embed``,
    ``grad_norm/layers.0``, ...). Events appear in the Text tab as ``events/<kind>``; their evidence fields stay in
    events.jsonl only. Lists (expert_load), strings, None and non-finite values are not written.

    Steps may repeat: after a rollback the run goes back to an earlier step and redoes the steps after it, and
    TensorBoard keeps and shows both points for each redone step (the redone one has the later wall time). That
    is the truth of what happened, so nothing is purged. A resumed run (another process, possibly another
    target) adds its own event file to the same folder and TensorBoard reads them all together.

    The folder and its event file are created on the first write, so a run that never logs leaves nothing
    behind. Only rank 0 should hold a sink, like metrics.jsonl.
    """

    def __init__(self, log_dir: str | Path):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as e:
            raise RuntimeError(_MISSING) from e
        self.log_dir = Path(log_dir)
        self._make_writer = SummaryWriter
        self._writer = None

    def _w(self):
        if self._writer is None:
            self.log_dir.mkdir(parents=True, exist_ok=True)
            self._writer = self._make_writer(log_dir=str(self.log_dir))
        return self._writer

    def metrics(self, row: dict) -> None:
        """Write every finite numeric field of one metrics.jsonl row ("train" or "eval") at the row's step."""
        kind = row.get("kind", "train")
        step = row.get("step")
        walltime = row["time"] if _plottable(row.get("time")) else None
        for name, value in row.items():
            if name in _NOT_VALUES:
                continue
            if name == "grad_norm_layers" and isinstance(value, dict):
                for layer, norm in value.items():
                    if _plottable(norm):
                        self._w().add_scalar(f"grad_norm/{layer}", norm, step, walltime=walltime)
            elif _plottable(value):
                self._w().add_scalar(f"{kind}/{_RENAMED.get(name, name)}", value, step, walltime=walltime)

    def event(self, e: dict) -> None:
        """Write one events.jsonl event as a line of text under ``events/<kind>`` at the event's step."""
        step = e.get("step")
        walltime = e["time"] if _plottable(e.get("time")) else None
        self._w().add_text(f"events/{e.get('kind', 'event')}", f"step {step} [{e.get('target')}]: {e.get('detail')}",
                           step, walltime=walltime)

    def flush(self) -> None:
        """Push buffered points to disk (SummaryWriter otherwise flushes every couple of minutes)."""
        if self._writer is not None:
            self._writer.flush()

    def close(self) -> None:
        """Flush and close the event file; safe to call twice (a later write would start a new file)."""
        if self._writer is not None:
            self._writer.close()
            self._writer = None
