"""bench/decode_vs_hf.py runs end to end (a smoke test on the debug preset; the real figures come from a manual run)."""

import subprocess
import sys

from .conftest import REPO


def test_decode_bench_smoke():
    r = subprocess.run([sys.executable, "bench/decode_vs_hf.py", "--preset", "debug", "--batches", "1,2",
                        "--prompt-len", "8", "--new-tokens", "4", "--repeats", "1", "--threads", "1",
                        "--hf-impls", "eager", "--breakdown"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "turnout decodes" in r.stdout and "cache bytes per token: turnout 480" in r.stdout, r.stdout
    assert "of operator time in matrix products" in r.stdout and "with the defaults" in r.stdout, r.stdout


def test_serve_vs_vllm_says_when_vllm_is_missing():
    """Without vLLM in the environment (the test venv has none) the script says so and exits 0; with it, it runs
    both servers (figures in the README)."""
    import importlib.util

    if importlib.util.find_spec("vllm") is not None:
        return
    r = subprocess.run([sys.executable, "bench/serve_vs_vllm.py"], cwd=REPO, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0 and "vllm is not importable" in r.stdout, r.stdout + r.stderr
