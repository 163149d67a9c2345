"""Each numeric fault kind of the sim target does exactly what its profile says (and nothing elsewhere)."""

import time

import pytest
import torch

from turnout.backend import get_backend

pytestmark = pytest.mark.usefixtures("one_thread")


def sim(tmp_path, text):
    path = tmp_path / "p.toml"
    path.write_text(text)
    return get_backend(f"sim:{path}")


def bits(t):
    return t.contiguous().view(torch.int32)


# ---- lossy_accum -------------------------------------------------------------------------------------
def test_lossy_accum_error_is_bf16_level():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(96, 128, generator=g, dtype=torch.float64), torch.randn(128, 80, generator=g,
                                                                               dtype=torch.float64)
    ref = a @ b
    rel = lambda y: ((y.double() - ref).abs().max() / ref.abs().max()).item()  # noqa: E731
    plain = rel(a.float() @ b.float())
    bk = get_backend("sim:lossy-accum")
    with bk.compute():
        lossy = rel(a.float() @ b.float())
        lossy_addmm = rel(torch.addmm(torch.zeros(80, dtype=torch.float32), a.float(), b.float()))
        bmm = torch.bmm(a.float()[None], b.float()[None])[0]
    assert plain < 1e-5
    assert 1e-4 < lossy <= 1e-2 and 1e-4 < lossy_addmm <= 1e-2 and 1e-4 < rel(bmm) <= 1e-2
    assert bk.counts["lossy_accum"] == {"mm": 1, "addmm": 1, "bmm": 1}
    assert [e["op"] for e in bk.injected("lossy_accum")] == ["mm", "addmm", "bmm"]


def test_lossy_accum_leaves_other_ops_and_outputs_dtype():
    bk = get_backend("sim:lossy-accum")
    x = torch.randn(33, 17)
    with bk.compute():
        y = x.exp() + 1
        z = x @ x.T
    assert torch.equal(y, x.exp() + 1) and z.dtype == torch.float32
    assert torch.equal(z, z.bfloat16().float())  # output sits on the bf16 grid


def test_lossy_accum_in_backward():
    w = torch.randn(16, 16, requires_grad=True)
    x = torch.randn(8, 16)
    (x @ w).pow(2).sum().backward()
    ref = w.grad.clone()
    w.grad = None
    bk = get_backend("sim:lossy-accum")
    with bk.compute():
        (x @ w).pow(2).sum().backward()
    assert not torch.equal(w.grad, ref)
    assert ((w.grad - ref).abs().max() / ref.abs().max()).item() < 2e-2
    assert bk.counts["lossy_accum"]["mm"] >= 2  # forward and the weight-gradient matmul


# ---- bad_backward ------------------------------------------------------------------------------------
def softmax_grads(ctx):
    torch.manual_seed(1)
    a = torch.randn(8, 10, requires_grad=True)
    w = torch.randn(8, 10)
    with ctx:
        y = torch.softmax(a, dim=-1)
        (y * w).sum().backward()
    return y.detach(), a.grad


def test_bad_backward_scales_softmax_gradient_exactly():
    import contextlib
    y_ref, g_ref = softmax_grads(contextlib.nullcontext())
    bk = get_backend("sim:bad-backward")
    y, g = softmax_grads(bk.compute())
    assert torch.equal(y, y_ref)  # forward untouched
    assert torch.equal(g, g_ref * (1 + 0.05))
    assert not torch.equal(g, g_ref)
    assert bk.counts == {"bad_backward": {"_softmax_backward_data": 1}}


def test_nested_compute_applies_faults_once():
    import contextlib
    _, g_ref = softmax_grads(contextlib.nullcontext())
    bk = get_backend("sim:bad-backward")
    with bk.compute():
        _, g = softmax_grads(bk.compute())
    assert torch.equal(g, g_ref * 1.05)


# ---- nondeterministic --------------------------------------------------------------------------------
def test_nondeterministic_differs_between_identical_calls_at_ulp_scale():
    bk = get_backend("sim:nondeterministic")
    x = torch.randn(1000)
    with bk.compute():
        s1, s2 = x.sum(), x.sum()
        m1, m2 = x.mean(), x.mean()
        e1, e2 = x.exp(), x.exp()
    ref = x.sum()
    assert not torch.equal(s1, s2) and not torch.equal(m1, m2)
    eps = torch.finfo(torch.float32).eps
    for v in (s1, s2):
        assert v != ref and abs(v - ref) <= 3 * eps * abs(ref)  # k <= 2 ulps-of-eps, plus output rounding
    assert torch.equal(e1, e2)  # not a listed op
    assert bk.counts["nondeterministic"] == {"sum": 2, "mean": 2}


def test_nondeterministic_elementwise_within_ulps(tmp_path):
    bk = sim(tmp_path, '[[fault]]\nkind = "nondeterministic"\nops = ["sum"]\nulps = 3\n')
    x = torch.randn(64, 50)
    with bk.compute():
        a, b = x.sum(dim=1), x.sum(dim=1)
    ref = x.sum(dim=1)
    assert not torch.equal(a, b)
    assert ((a - ref).abs() <= 4 * torch.finfo(torch.float32).eps * ref.abs()).all()


# ---- missing_op --------------------------------------------------------------------------------------
def test_missing_op_raises_for_both_variants(tmp_path):
    bk = sim(tmp_path, '[[fault]]\nkind = "missing_op"\nops = ["index_add"]\n')
    x, idx, src = torch.zeros(5, 3), torch.tensor([0, 2]), torch.ones(2, 3)
    with bk.compute():
        with pytest.raises(NotImplementedError, match=r"aten::index_add is not implemented on this device"):
            x.index_add(0, idx, src)
        with pytest.raises(NotImplementedError, match=str(bk.name)):
            x.index_add_(0, idx, src)
        x.add_(1)  # other ops still run
    assert [e["kind"] for e in bk.injected()] == ["missing_op", "missing_op"]


def test_missing_op_fallback_records_and_is_slower(tmp_path):
    import contextlib
    bk = sim(tmp_path, '[[fault]]\nkind = "missing_op"\nops = ["index_add"]\nfallback = true\nslowdown = 30.0\n')
    x, src = torch.zeros(200, 16), torch.randn(1000, 16)
    idx = torch.randint(0, 200, (1000,), generator=torch.Generator().manual_seed(0))

    def timed(ctx, n=5):
        t0 = time.perf_counter()
        for _ in range(n):
            with ctx:
                out = x.index_add(0, idx, src)
        return time.perf_counter() - t0, out

    ref = x.index_add(0, idx, src)
    base = min(timed(contextlib.nullcontext())[0] for _ in range(3))
    slow, out = timed(bk.compute())  # one compute() object, entered five times
    assert torch.equal(out, ref)
    assert slow > 5 * base
    assert bk.fallbacks == {"index_add": 5}
    bk.set_step(7)
    with bk.compute():
        x.clone().index_add_(0, idx, src)
    ev = bk.injected("fallback")
    assert [(e["step"], e["op"]) for e in ev] == [(None, "index_add"), (7, "index_add")]  # one per (step, op)
    assert bk.fallbacks == {"index_add": 6} and bk.counts == {"fallback": {"index_add": 6}}


def test_missing_ops_profile_falls_back():
    bk = get_backend("sim:missing-ops")
    with bk.compute():
        torch.zeros(3).index_add_(0, torch.tensor([1]), torch.ones(1))
    assert bk.fallbacks == {"index_add": 1}


# ---- unsupported dtypes ------------------------------------------------------------------------------
def test_unsupported_dtype_raises_like_missing_kernel():
    bk = get_backend("sim:no-bf16")
    a = torch.randn(4, 4).bfloat16()
    with bk.compute():
        with pytest.raises(RuntimeError, match=r"\"addmm_impl_cpu_\" not implemented for 'BFloat16' "
                                               r"\(sim:no-bf16 has no bf16 kernels\)"):
            torch.addmm(a, a, a)
        with pytest.raises(RuntimeError, match="BFloat16"):
            torch.randn(4, 4).to(torch.bfloat16)
        with pytest.raises(RuntimeError, match="BFloat16"):
            torch.zeros(3, dtype=torch.bfloat16)
        y = torch.randn(4, 4) @ torch.randn(4, 4)  # fp32 runs
    assert y.dtype == torch.float32
    assert [e["op"] for e in bk.injected("unsupported_dtype")] == ["addmm", "_to_copy", "zeros"]


# ---- records and RNG hygiene -------------------------------------------------------------------------
def test_reset_records_and_global_rng_untouched(tmp_path):
    bk = sim(tmp_path, '[[fault]]\nkind = "sdc"\nops = ["mm"]\nrate = 0.5\n\n'
                       '[[fault]]\nkind = "nondeterministic"\nops = ["sum"]\n')
    x = torch.randn(8, 8)
    state = torch.get_rng_state()
    bk.set_step(0)
    with bk.compute():
        for _ in range(20):
            (x @ x).sum()
    assert torch.equal(torch.get_rng_state(), state)
    assert bk.injected("sdc") and bk.injected("nondeterministic")
    bk.reset_records()
    assert bk.events == [] and bk.counts == {} and bk.fallbacks == {} and bk.injected() == []
