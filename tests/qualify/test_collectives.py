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


@pytest.mark.dist
def test_the_expert_parallel_exchange_is_checked_and_timed(tmp_path):
    """The uneven all_to_all at a MoE model's size: correct and timed on cpu; a flipped bit in what rank 1
    receives is a corrupt collective named by its op."""
    target = get_backend("cpu")
    (tmp_path / "ok").mkdir()
    st = collectives.finish(collectives.start(target, tmp_path / "ok", 60, (300, 64)), target, 60)
    assert st.status == "pass", st.findings
    ep = st.evidence["exchange"]
    assert (ep["rows"], ep["dim"]) == (300, 64) and ep["algbw_GBps"] > 0 and "expert-parallel" in st.summary
    rows = [r for rk in st.evidence["ranks"] for r in rk["results"] if r["op"] == "all_to_all_ep"]
    assert [r["splits"] for r in rows] == [[180, 120], [120, 180]] and all(r["ok"] for r in rows)
    n_steps = len(collectives.SIZES) * 4 + 1  # the exchange is the step after every other collective
    p = tmp_path / "flip.toml"
    p.write_text('[profile]\ndescription = "rank 1: a flipped bit in an all_to_all result"\n\n[[fault]]\n'
                 f'kind = "sdc"\nops = ["c10d::alltoall_base_"]\nat_steps = [{n_steps}]\ncall = 2\nbit = 30\n'
                 'ranks = [1]\n')  # call 1 is the row counts' exchange, 2 the rows
    bad = get_backend(f"sim:{p}")
    (tmp_path / "bad").mkdir()
    st = collectives.finish(collectives.start(bad, tmp_path / "bad", 60, (300, 64)), bad, 60)
    assert st.status == "fail" and [f.kind for f in st.findings] == ["collectives_corrupt"]
    assert "all_to_all_ep" in st.findings[0].message and "rank 1" in st.findings[0].message
