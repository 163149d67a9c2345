"""Step-scheduled faults (sdc, device_error, hang) fire exactly at the steps their profile names, once per step."""

import threading
import time

import pytest
import torch

from turnout.backend import get_backend
from turnout.backend.sim import SimBackend, SimDeviceError

X = torch.randn(12, 12, generator=torch.Generator().manual_seed(0))
REF = X @ X

pytestmark = pytest.mark.usefixtures("one_thread")


def sim(tmp_path, text) -> SimBackend:
    path = tmp_path / "p.toml"
    path.write_text(text)
    return get_backend(f"sim:{path}")


def run_step(bk, step, calls=1):
    """One 'training step': `calls` matmuls under compute(); returns their outputs."""
    bk.set_step(step)
    with bk.compute():
        return [X @ X for _ in range(calls)]


def flipped(out, bit):
    """Indices where `out` differs from REF; asserts each differs by exactly bit `bit`."""
    diff = (out.view(torch.int32) ^ REF.view(torch.int32)).view(-1)
    where = diff.nonzero().view(-1).tolist()
    for i in where:
        assert diff[i].item() == (1 << bit if bit < 31 else -(1 << 31))
    return where


# ---- sdc -----------------------------------------------------------------------------------------------
def test_sdc_flips_one_bit_at_scheduled_step_only(tmp_path):
    bk = sim(tmp_path, '[[fault]]\nkind = "sdc"\nops = ["mm"]\nat_steps = [3]\nbit = 22\n')
    with bk.compute():  # before any set_step: nothing scheduled fires
        assert torch.equal(X @ X, REF)
    for step in range(6):
        (out,) = run_step(bk, step)
        assert len(flipped(out, 22)) == (1 if step == 3 else 0)
    (again,) = run_step(bk, 3)  # a re-run of step 3 is clean: transient
    assert torch.equal(again, REF)
    (ev,) = bk.injected("sdc")
    assert ev["step"] == 3 and ev["op"] == "mm" and "bit 22" in ev["detail"]


def test_sdc_repeat_fires_every_run_and_call_picks_kth(tmp_path):
    bk = sim(tmp_path, '[[fault]]\nkind = "sdc"\nops = ["mm"]\nat_steps = [2]\nbit = 30\nrepeat = true\n'
                       'call = 3\n')
    for _ in range(3):
        outs = run_step(bk, 2, calls=4)
        assert [len(flipped(o, 30)) for o in outs] == [0, 0, 1, 0]
    assert [e["step"] for e in bk.injected("sdc")] == [2, 2, 2]


def test_sdc_in_place_and_out_variants_carry_the_flip(tmp_path):
    bk = sim(tmp_path, '[[fault]]\nkind = "sdc"\nops = ["mm"]\nat_steps = [0]\nbit = 5\n')
    out = torch.empty(12, 12)
    bk.set_step(0)
    with bk.compute():
        torch.mm(X, X, out=out)
    assert len(flipped(out, 5)) == 1


def test_sdc_rate_frequency_and_window(tmp_path):
    text = '[profile]\nseed = 7\n\n[[fault]]\nkind = "sdc"\nops = ["mm"]\nrate = 0.1\nfrom_step = 10\n'
    bk = sim(tmp_path, text)
    n_hit = 0
    for step in range(60):
        for out in run_step(bk, step, calls=25):
            hit = len(flipped(out, 22))
            assert hit <= 1 and (hit == 0 or step >= 10)
            n_hit += hit
    assert n_hit == len(bk.injected("sdc"))
    assert 75 <= n_hit <= 175  # 50 steps x 25 calls x 0.1 = 125 expected (~11 sd)
    again = sim(tmp_path, text)
    for step in range(60):
        run_step(again, step, calls=25)
    strip = lambda evs: [{k: v for k, v in e.items() if k != "time"} for e in evs]  # noqa: E731
    assert strip(again.events) == strip(bk.events)  # same seed, same steps -> same faults


# ---- device_error ----------------------------------------------------------------------------------------
def test_device_error_at_scheduled_step_only_and_transient(tmp_path):
    bk = sim(tmp_path, '[[fault]]\nkind = "device_error"\nat_steps = [25]\n')
    for step in (23, 24):
        run_step(bk, step)
    with pytest.raises(SimDeviceError, match=r"device lost \(injected device_error at step 25\)"):
        run_step(bk, 25)
    assert isinstance(SimDeviceError("x"), RuntimeError)
    run_step(bk, 25)  # the re-run is clean
    run_step(bk, 26)
    assert [(e["step"], e["kind"]) for e in bk.injected()] == [(25, "device_error")]


def test_device_error_in_backward_op(tmp_path):
    bk = sim(tmp_path, '[[fault]]\nkind = "device_error"\nops = ["_softmax_backward_data"]\nat_steps = [1]\n'
                       'repeat = true\n')
    a = torch.randn(4, 4, requires_grad=True)
    for _ in range(2):
        bk.set_step(1)
        with bk.compute():
            y = torch.softmax(a, -1).sum()
            with pytest.raises(SimDeviceError):
                y.backward()
    assert len(bk.injected("device_error")) == 2


def test_flaky_profile_ground_truth():
    bk = get_backend("sim:flaky")
    errors, sdc = [], []
    for step in range(130):
        try:
            (out,) = run_step(bk, step)
        except SimDeviceError:
            errors.append(step)
            continue
        if not torch.equal(out, REF):
            sdc.append(step)
    assert errors == [25, 100, 105, 110, 115, 120]
    assert sdc == [43, 97]
    assert [e["step"] for e in bk.injected("device_error")] == errors
    assert [e["step"] for e in bk.injected("sdc")] == sdc
    quiet, loud = bk.injected("sdc")
    assert "bit 22" in quiet["detail"] and "bit 30" in loud["detail"]


def test_every_rate_device_errors_deterministic(tmp_path):
    text = ('[profile]\nseed = 11\n\n[[fault]]\nkind = "device_error"\nrate = 0.2\nfrom_step = 5\n'
            'until_step = 200\n')
    runs = []
    for _ in range(2):
        bk = sim(tmp_path, text)
        errs = []
        for step in range(250):
            try:
                run_step(bk, step)
            except SimDeviceError:
                errs.append(step)
        runs.append(errs)
    assert runs[0] == runs[1]
    assert all(5 <= s <= 200 for s in runs[0]) and 20 <= len(runs[0]) <= 62  # ~39 expected


# ---- hang --------------------------------------------------------------------------------------------------
def test_hang_blocks_for_seconds_at_its_step(tmp_path):
    bk = sim(tmp_path, '[[fault]]\nkind = "hang"\nat_steps = [2]\nseconds = 0.3\n')
    t0 = time.monotonic()
    run_step(bk, 1)
    assert time.monotonic() - t0 < 0.2
    t0 = time.monotonic()
    (out,) = run_step(bk, 2)
    assert 0.28 <= time.monotonic() - t0 < 2.0 and torch.equal(out, REF)
    (ev,) = bk.injected("hang")
    assert ev["step"] == 2 and "timed out" in ev["detail"]
    t0 = time.monotonic()
    run_step(bk, 2)  # transient: the re-run does not hang
    assert time.monotonic() - t0 < 0.2


def test_cancel_hang_releases_it(tmp_path):
    bk = sim(tmp_path, '[[fault]]\nkind = "hang"\nat_steps = [0]\nseconds = 60\nerror_after = true\n')
    seen = []

    def watchdog():
        while not bk.hanging:
            time.sleep(0.01)
        seen.append(bk.hanging)
        bk.cancel_hang()

    t = threading.Thread(target=watchdog, daemon=True)
    t.start()
    t0 = time.monotonic()
    with pytest.raises(SimDeviceError, match="hang"):
        run_step(bk, 0)
    assert time.monotonic() - t0 < 5 and seen == [True] and not bk.hanging
    t.join(1)
    assert "cancelled" in bk.injected("hang")[0]["detail"]


def test_hang_profile_schedule():
    bk = get_backend("sim:hang")
    run_step(bk, 59)
    assert bk.injected() == []

    def watchdog():  # release the 3600 s hang 0.2 s after it starts
        while not bk.hanging:
            time.sleep(0.01)
        time.sleep(0.2)
        bk.cancel_hang()

    threading.Thread(target=watchdog, daemon=True).start()
    t0 = time.monotonic()
    run_step(bk, 60)
    assert 0.15 < time.monotonic() - t0 < 5
    assert [e["step"] for e in bk.injected("hang")] == [60]


def test_device_error_in_a_collective(tmp_path):
    """Step faults can target non-aten ops: a gloo all_reduce (world size 1) loses the device at step 3."""
    import torch.distributed as dist

    if dist.is_initialized():
        pytest.skip("a process group is already running in this process")
    bk = sim(tmp_path, '[[fault]]\nkind = "device_error"\nops = ["c10d::allreduce"]\nat_steps = [3]\n')
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        t = torch.ones(4)
        for step in range(5):
            bk.set_step(step)
            with bk.compute():
                if step == 3:
                    with pytest.raises(SimDeviceError):
                        dist.all_reduce(t)
                else:
                    dist.all_reduce(t)
    finally:
        dist.destroy_process_group()
    assert [(e["step"], e["op"]) for e in bk.injected()] == [(3, "c10d::allreduce")]


def test_faults_act_on_what_a_collective_returns(tmp_path):
    """A collective's result lands in its buffers when its Work completes (gloo runs it on another thread): an
    sdc or lossy_accum fault acts on that result, in place, both for ops returning their buffers (all_reduce,
    all_gather) and for all_to_all, which returns only its Work. World size 1: every correct result equals x."""
    import torch.distributed as dist

    if dist.is_initialized():
        pytest.skip("a process group is already running in this process")
    bk = sim(tmp_path, '[[fault]]\nkind = "sdc"\nops = ["c10d::allreduce"]\nat_steps = [2]\nbit = 30\n\n'
                       '[[fault]]\nkind = "sdc"\nops = ["c10d::alltoall_base"]\nat_steps = [3]\nbit = 30\n\n'
                       '[[fault]]\nkind = "lossy_accum"\nops = ["c10d::_allgather_base"]\n')
    x = torch.randn(64, generator=torch.Generator().manual_seed(1))
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    got = {}
    try:
        for step in (1, 2):
            bk.set_step(step)
            with bk.compute():
                t = x.clone()
                dist.all_reduce(t)
            got[step] = t
        bk.set_step(3)
        with bk.compute():
            a2a = torch.empty(64)
            dist.all_to_all_single(a2a, x.clone())
            gathered = torch.empty(64)
            (getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor)(gathered, x.clone())
    finally:
        dist.destroy_process_group()

    def flipped(t):  # indices where t differs from x, and the bits that differ there
        diff = (t.view(torch.int32) ^ x.view(torch.int32)).nonzero().flatten()
        return diff.tolist(), {int(t.view(torch.int32)[i] ^ x.view(torch.int32)[i]) for i in diff}

    assert torch.equal(got[1], x)
    assert flipped(got[2])[1] == {1 << 30} and len(flipped(got[2])[0]) == 1
    assert flipped(a2a)[1] == {1 << 30} and len(flipped(a2a)[0]) == 1
    assert torch.equal(gathered, x.bfloat16().float()) and not torch.equal(gathered, x)
    assert [(e["step"], e["op"]) for e in bk.injected("sdc")] == [(2, "c10d::allreduce"), (3, "c10d::alltoall_base")]
    assert bk.injected("lossy_accum")[0]["detail"] == "c10d::_allgather_base accumulated in bf16"
    assert not any("aten::" in e["detail"] for e in bk.injected())
