"""The collectives stage: skip rules, and a profile whose all_reduce hangs is reported as a hang in time."""

from __future__ import annotations

import time

import pytest

from turnout.backend import get_backend
from turnout.qualify import collectives


def test_skip_reasons():
    assert collectives.skip_reason(get_backend("cpu")) is None
    assert collectives.skip_reason(get_backend("sim:healthy")) is None
    assert "mps" in collectives.skip_reason(get_backend("mps"))
    assert "two" in collectives.skip_reason(get_backend("cuda"))  # no CUDA device here: one rank at most
    job = collectives.start(get_backend("mps"), None, 10)
    st = collectives.finish(job, get_backend("mps"), 10)
    assert st.status == "skipped" and "mps" in st.summary


@pytest.mark.dist
def test_hanging_all_reduce_is_a_hang(tmp_path):
    p = tmp_path / "hang.toml"
    p.write_text('[profile]\ndescription = "all_reduce never returns"\n\n[[fault]]\nkind = "hang"\n'
                 'ops = ["c10d::allreduce"]\nat_steps = [1]\nseconds = 3600\n')
    target = get_backend(f"sim:{p}")
    t0 = time.time()
    job = collectives.start(target, tmp_path, 12)
    st = collectives.finish(job, target, 12)
    assert st.status == "fail" and st.findings[0].kind == "collectives_hang" and "hang" in st.findings[0].message
    assert time.time() - t0 < 25
    assert job.proc.poll() is not None  # the job and its ranks are gone
