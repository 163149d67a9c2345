"""Qualification-test setup: one intra-op thread, a session-wide golden folder, and shared qualification runs.

Full qualifications take seconds each, so every test that needs one asks `qualified(target, *overrides)`; the first
call runs it (debug preset, 30 training-parity steps, collectives off unless asked) and later calls -- from any
test module -- get the same result. The golden folder is shared too, so the cpu reference curve of each config is
computed once per session and reused by every later run, as it would be for a user.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from turnout.config import load_config
from turnout.qualify.run import qualify
from turnout.qualify.workload import Settings

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[2]
DEBUG = ROOT / "configs" / "debug.toml"
# attention through an explicit softmax, whose backward is _softmax_backward_data
EAGER = 'model.overrides.attn_impl="eager"'


@pytest.fixture(scope="session")
def golden_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("golden")


@pytest.fixture(scope="session")
def qualified(golden_dir, tmp_path_factory):
    """run(target, *overrides, collectives=False) -> (qualify.json dict, out dir); cached for the session."""
    cache: dict = {}

    def run(target: str, *overrides: str, collectives: bool = False):
        key = (target, overrides, collectives)
        if key not in cache:
            out = tmp_path_factory.mktemp("qualify")
            cfg = load_config(DEBUG, list(overrides))
            settings = Settings(golden_dir=str(golden_dir), collectives=collectives, collectives_timeout=60)
            cache[key] = (qualify(cfg, target, out, settings=settings, log=None, config_path=str(DEBUG)), out)
        return cache[key]

    return run


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    """Every test in this folder runs torch on one thread (see tests/conftest.py)."""
