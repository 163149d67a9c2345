"""The training loop, its pieces (schedule, optimizer, step, events, progress) and the one wiring place (build)."""

from turnout.train.loop import RunResult, Trainer, train

__all__ = ["RunResult", "Trainer", "train"]
