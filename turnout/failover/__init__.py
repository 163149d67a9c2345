"""Supervision across targets: run training workers and fail over when a target stops being trusted."""

from turnout.failover.foreign import ScriptSupervisor
from turnout.failover.supervisor import Supervisor
from turnout.failover.worker import WorkerExit

__all__ = ["ScriptSupervisor", "Supervisor", "WorkerExit"]
