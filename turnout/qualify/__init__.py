"""Accelerator qualification: is a target fit to train this model, only to serve it, or not at all?

    from turnout.qualify import qualify, Settings
    result = qualify(config, "sim:bad-backward", "runs/qualify", reference="cpu")   # -> the qualify.json dict
    result["verdict"]   # "train-ready" | "inference-only" | "unfit"

Stages (one file each): capabilities, ops (trace + opcall + numerics), blocks, determinism, training (+ golden),
collectives, perf; verdict decides, report draws, run orchestrates. Imports are lazy so that the collectives
worker (`python -m turnout.qualify.collectives`) starts without loading the rest.
"""

from __future__ import annotations

from typing import Any

__all__ = ["Settings", "VERDICTS", "qualify"]


def __getattr__(name: str) -> Any:
    if name == "qualify":
        from turnout.qualify.run import qualify
        return qualify
    if name == "Settings":
        from turnout.qualify.workload import Settings
        return Settings
    if name == "VERDICTS":
        from turnout.qualify.verdict import VERDICTS
        return VERDICTS
    raise AttributeError(name)
