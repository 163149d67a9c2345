"""The training loop and its pieces: schedule, optimizer, step, health monitor, re-execution, watchdog,
events, progress, report. `build` is the one place that wires config, backend, model, data and optimizer.

`train`, `Trainer` and `RunResult` load lazily so that light users (the report) do not import torch.
"""

__all__ = ["RunResult", "Trainer", "train"]


def __getattr__(name: str):
    if name in __all__:
        from turnout.train import loop

        return getattr(loop, name)
    raise AttributeError(name)
