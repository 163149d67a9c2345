"""Schemathesis against a real `turnout serve` on loopback: every check it has (`--checks all`), a fixed seed,
and no 5xx among the requests it sends.

The server decodes with a 64-token context so the many requests that name the served model (its id is the
`model` example in the served schema) run real generation quickly; st_hooks.py lets through only refusals that
name a limit the model sets (context, vocabulary), which no request schema can state.
"""

from __future__ import annotations

import collections
import json
import os
import subprocess
import sys
import time

import pytest

from .conftest import REPO, ServerProcess

MAX_EXAMPLES = 150  # per operation: about 700 requests, 30 s on two cores
HOOKS = REPO / "tests/serve/st_hooks.py"


@pytest.fixture(scope="module")
def server(random_hf):
    s = ServerProcess("--model", str(random_hf), "--target", "cpu", "--max-context", "64", "--max-batch", "4")
    yield s
    s.close()


def test_schemathesis_all_checks_and_no_server_errors(server, tmp_path):
    har, junit = tmp_path / "requests.har", tmp_path / "junit.xml"
    cmd = [sys.executable, "-m", "schemathesis.cli", "run", server.base + "/openapi.json", "--checks", "all",
           "--max-examples", str(MAX_EXAMPLES), "--seed", "1", "--generation-deterministic",
           "--continue-on-failure", "--request-timeout", "30", "--no-color", "--report", "har,junit",
           "--report-har-path", str(har), "--report-junit-path", str(junit)]
    env = dict(os.environ, SCHEMATHESIS_HOOKS=str(HOOKS), OMP_NUM_THREADS="1")
    t0 = time.monotonic()
    run = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    took = time.monotonic() - t0
    entries = json.loads(har.read_text())["log"]["entries"]
    statuses = collections.Counter(e["response"]["status"] for e in entries)
    server_errors = [(e["request"]["method"], e["request"]["url"], e["response"]["status"],
                      e["request"].get("postData", {}).get("text", "")[:300]) for e in entries
                     if e["response"]["status"] >= 500]
    assert not server_errors, server_errors[:3]
    assert run.returncode == 0, run.stdout[-6000:]
    assert len(entries) > 500 and statuses[200] > 100, statuses  # it ran, and much of it reached the engine
    assert {405, 400, 404} <= set(statuses), statuses
    print(f"schemathesis: {len(entries)} requests in {took:.1f} s, statuses {dict(statuses)}")
