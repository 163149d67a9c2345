"""Serving-test setup: a briefly trained checkpoint, a random HF directory, the CLI, and a loopback server process."""

from __future__ import annotations

import importlib
import itertools
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import torch

from turnout.data import Tokenizer, load_shakespeare
from turnout.model import ModelArgs, Transformer, save_pretrained

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
REPO = Path(__file__).resolve().parents[2]
SERVE_COMMANDS = ("generate", "serve", "parity")
# The lead registers these commands in turnout/cli/main.py; until then the tests register them the same way.
_REGISTER = ("import importlib, sys; m = importlib.import_module('turnout.cli.main'); "
             "[m.COMMANDS.setdefault(n, (c.HELP, c.add_arguments, c.run)) for n in ('generate', 'serve', 'parity') "
             "for c in [importlib.import_module('turnout.cli.' + n)]]; sys.exit(m.main(sys.argv[1:]))")


def cli(argv: list[str]) -> int:
    """`turnout ARGV` in this process (exit code), with the serving commands registered."""
    m = importlib.import_module("turnout.cli.main")
    for name in SERVE_COMMANDS:
        c = importlib.import_module(f"turnout.cli.{name}")
        m.COMMANDS.setdefault(name, (c.HELP, c.add_arguments, c.run))
    return m.main(argv)


def cli_command(*args: str) -> list[str]:
    """argv for `python -m turnout ARGS` in a subprocess (registering the serving commands if main lacks them)."""
    return [sys.executable, "-c", _REGISTER, *args]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProcess:
    """`turnout serve ...` in its own process on a free loopback port."""

    def __init__(self, *args: str, api_key: str | None = None, timeout: float = 90):
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.api_key = api_key
        cmd = cli_command("serve", *args, "--port", str(self.port), *(["--api-key", api_key] if api_key else []))
        env = dict(os.environ, OMP_NUM_THREADS="1")
        self.proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     text=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited {self.proc.returncode}: {self.proc.stdout.read()}")
            try:
                if httpx.get(self.base + "/health", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        self.close()
        raise RuntimeError(f"server did not become healthy in {timeout} s")

    @property
    def headers(self) -> dict:
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}

    def close(self) -> str:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.stdout.read() if self.proc.stdout else ""


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory) -> Path:
    """A debug-preset run trained for 4 steps on cpu (checkpoint with manifest and tokenizer)."""
    run = tmp_path_factory.mktemp("serve-run") / "run"
    assert cli(["train", "--config", str(REPO / "configs/debug.toml"), "--out", str(run), "--set", "train.steps=4",
                "--set", "train.seq_len=32", "--set", "train.eval_interval=0"]) == 0
    return run


@pytest.fixture(scope="session")
def random_hf(tmp_path_factory) -> Path:
    """An HF DeepseekV3 directory holding a randomly initialised debug model (seeded; diverse greedy text) and a
    1024-token tokenizer trained on a slice of the embedded corpus (a second, not a whole data preparation)."""
    path = tmp_path_factory.mktemp("serve-hf") / "debug-random"
    torch.manual_seed(0)
    save_pretrained(Transformer(ModelArgs.preset("debug")), path)
    text = "".join(d.text for d in itertools.islice(load_shakespeare(), 3))[:400_000]
    Tokenizer.train([text], 1024).save(path / "tokenizer.json")
    return path


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    """Every test in this folder runs torch on one thread (see tests/conftest.py)."""
