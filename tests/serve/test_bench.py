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
