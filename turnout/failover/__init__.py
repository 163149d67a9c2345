"""Supervision across targets: run training workers and fail over when a target stops being trusted."""

from turnout.failover.supervisor import Supervisor, WorkerExit

__all__ = ["Supervisor", "WorkerExit"]
