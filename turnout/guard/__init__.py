"""turnout's protection for training loops it does not own: `Guard` (see turnout.guard.guard)."""

from turnout.train.health import EXIT_HANG, EXIT_UNRECOVERABLE, EXIT_UNTRUSTED, RunUnrecoverable, TargetUntrusted

from .guard import Guard, GuardStep

__all__ = ["Guard", "GuardStep", "TargetUntrusted", "RunUnrecoverable", "EXIT_UNTRUSTED", "EXIT_HANG",
           "EXIT_UNRECOVERABLE"]
