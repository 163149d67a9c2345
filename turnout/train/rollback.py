"""Going back: to the newest good checkpoint before a problem's onset, past the data that caused it, with a
smaller learning rate when the problem comes back at the same place.

PaLM skipped the batches seen before and during a loss spike and restarted from an earlier checkpoint; OLMo
and Megatron do the same by hand. The rollback history travels in each checkpoint's manifest, so a resumed or
failed-over run still knows a recurrence when it sees one.
"""

from __future__ import annotations

from dataclasses import dataclass

from turnout.ckpt import Checkpointer
from turnout.config import Config
from turnout.report.rundir import RunDir
from turnout.train.events import EventLog
from turnout.train.health import RunUnrecoverable

BATCH_MEMORY = 512  # steps whose batch start is remembered: a spike onset is at most spike_patience steps back


@dataclass
class Landing:
    """Where a rollback put the run: the checkpoint's step and the sample index to read on from."""

    step: int
    samples: int


class Rollbacks:
    """The rollback policy and its history: onsets, where each went back to, whether data was skipped."""

    def __init__(self, config: Config, run: RunDir, ckpt: Checkpointer, events: EventLog):
        self.config, self.run, self.ckpt, self.events = config, run, ckpt, events
        self.history: list[dict] = []  # {"onset", "to_step", "skip"} of every rollback so far
        self.lr_scale = 1.0  # product of the LR cuts so far
        self.batch_start: dict[int, int] = {}  # step -> global sample index its batch started at (recent steps)

    def note_batch(self, step: int, samples: int) -> None:
        """Remember where step's batch starts in the data, so a rollback can skip from there."""
        self.batch_start[step] = samples
        self.batch_start.pop(step - BATCH_MEMORY, None)

    def go_back(self, onset: int, reason: str, model, optimizer, *, current_step: int,
                skip_data: bool = True) -> Landing:
        """Load the newest verified checkpoint before `onset` into model and optimizer; skip the data from the
        onset's batch on (`health.skip_batches` batches past it); cut the LR when the problem recurs near an
        earlier onset. `skip_data=False` (the data is not to blame, e.g. diverged replicas): replay the same
        batches at the same LR. Raises RunUnrecoverable past `health.max_rollbacks` or with no checkpoint."""
        h, t = self.config.health, self.config.train
        if len(self.history) >= h.max_rollbacks:
            raise RunUnrecoverable(f"step {onset}: {reason}; {len(self.history)} rollbacks already (health."
                                   f"max_rollbacks={h.max_rollbacks})")
        folder = self.ckpt.newest(before_step=onset)
        if folder is None:
            raise RunUnrecoverable(f"step {onset}: {reason}; no checkpoint before it to roll back to")
        m = self.ckpt.load(folder, model, optimizer)
        near = max(self.config.ckpt.interval, h.skip_batches, 1)
        recurs = skip_data and any(abs(r["onset"] - onset) <= near for r in self.history if r.get("skip", True))
        self.history.append({"onset": onset, "to_step": m.step, "skip": skip_data})
        self.events.emit("rollback", onset, f"{reason}; rolled back to {folder.name}", to_step=m.step,
                         from_step=current_step + 1, path=str(folder))
        onset_index = self.batch_start.get(onset, m.samples)
        resume_at = max(m.samples, onset_index + h.skip_batches * t.batch_size) if skip_data else m.samples
        self.batch_start = {}
        if resume_at > m.samples:
            n = (resume_at - m.samples) // t.batch_size
            self.events.emit("skip_batches", m.step, f"skipped {n} batches (samples {m.samples}..{resume_at - 1}: "
                             f"those seen since the checkpoint, the onset's and {h.skip_batches - 1} after it)",
                             batches=n, first_sample=m.samples, samples=resume_at - m.samples)
        if recurs:
            self.lr_scale *= h.lr_cut
            self.events.emit("lr_cut", m.step, f"problem recurred near step {onset}: learning rate x{h.lr_cut:g} "
                             f"(now x{self.lr_scale:.3g} of the schedule)", factor=h.lr_cut, lr_scale=self.lr_scale)
        return Landing(m.step, resume_at)

    def state(self) -> dict:
        """What a checkpoint's manifest keeps of the history."""
        return {"lr_scale": self.lr_scale, "rollbacks": self.history}

    def load_state(self, extra: dict) -> None:
        self.lr_scale = float(extra.get("lr_scale", 1.0))
        self.history = list(extra.get("rollbacks", []))
