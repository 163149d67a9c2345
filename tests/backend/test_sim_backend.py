"""SimBackend as a Backend: healthy is bit-exact CPU, dtype probing sees unsupported dtypes, runs are reproducible."""

import contextlib

import pytest
import torch

from turnout.backend import get_backend
from turnout.backend.sim import SimDeviceError
from turnout.config import load_config

pytestmark = pytest.mark.usefixtures("one_thread")


class Tiny(torch.nn.Module):
    """A little of everything the real model does: embedding, matmul, softmax attention, norm, GELU MLP."""

    def __init__(self):
        super().__init__()
        self.emb = torch.nn.Embedding(50, 32)
        self.qkv = torch.nn.Linear(32, 96)
        self.norm = torch.nn.LayerNorm(32)
        self.mlp = torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.GELU(), torch.nn.Linear(64, 32))
        self.out = torch.nn.Linear(32, 50, bias=False)

    def forward(self, tokens):
        h = self.emb(tokens)
        q, k, v = self.qkv(h).chunk(3, dim=-1)
        att = torch.softmax(q @ k.transpose(-1, -2) / 32**0.5, dim=-1)
        h = self.norm(h + att @ v)
        h = h + self.mlp(h)
        return torch.nn.functional.cross_entropy(self.out(h).flatten(0, 1), tokens.flatten())


def train(ctx_factory, set_step=None, steps=3):
    """A few AdamW steps; returns (losses, final params, last grads). Every step runs under ctx_factory()."""
    torch.manual_seed(0)
    model = Tiny()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    tokens = torch.randint(0, 50, (4, 16))
    losses = []
    for step in range(steps):
        if set_step:
            set_step(step)
        with ctx_factory():
            loss = model(tokens)
            opt.zero_grad()
            loss.backward()
            grads = [p.grad.clone() for p in model.parameters()]
            opt.step()
        losses.append(loss.detach())
    return losses, [p.detach().clone() for p in model.parameters()], grads


def same(a, b):
    return len(a) == len(b) and all(torch.equal(x, y) for x, y in zip(a, b))


def test_healthy_is_bit_exact_cpu():
    ref = train(contextlib.nullcontext)
    bk = get_backend("sim:healthy")
    got = train(bk.compute, bk.set_step)
    assert all(same(r, g) for r, g in zip(ref, got))
    assert bk.events == [] and bk.counts == {}


def test_faulty_profiles_differ_from_cpu_where_they_say():
    ref = train(contextlib.nullcontext)
    bad = get_backend("sim:bad-backward")
    losses, params, grads = train(bad.compute, bad.set_step, steps=1)
    assert torch.equal(losses[0], ref[0][0])  # the forward is exact
    assert not same(grads, ref[2])
    lossy = get_backend("sim:lossy-accum")
    losses, _, _ = train(lossy.compute, lossy.set_step, steps=1)
    assert not torch.equal(losses[0], ref[0][0]) and torch.allclose(losses[0], ref[0][0], rtol=1e-2)


def test_same_seed_same_steps_same_faults_and_outputs(tmp_path):
    path = tmp_path / "p.toml"
    path.write_text('[profile]\nseed = 5\n\n[[fault]]\nkind = "sdc"\nops = ["mm", "addmm", "bmm"]\nrate = 0.05\n\n'
                    '[[fault]]\nkind = "sdc"\nops = ["mm"]\nat_steps = [1]\ncall = 2\nbit = 12\n\n'
                    '[[fault]]\nkind = "bad_backward"\nops = ["_softmax_backward_data"]\nerror = 0.01\n')

    def run():
        bk = get_backend(f"sim:{path}")
        out = train(bk.compute, bk.set_step, steps=4)
        return out, [{k: v for k, v in e.items() if k != "time"} for e in bk.events]

    (a, ev_a), (b, ev_b) = run(), run()
    assert ev_a == ev_b and any(e["kind"] == "sdc" for e in ev_a)
    assert all(same(x, y) for x, y in zip(a, b))


def test_nondeterministic_profile_differs_between_identical_runs():
    bk = get_backend("sim:nondeterministic")
    a = train(bk.compute, bk.set_step, steps=1)
    b = train(bk.compute, bk.set_step, steps=1)
    assert not same(a[0], b[0]) or not same(a[2], b[2])
    assert torch.allclose(a[0][0], b[0][0], rtol=1e-5)


def test_device_error_during_training_step():
    bk = get_backend("sim:flaky")
    try:
        train(bk.compute, lambda s: bk.set_step(s + 24), steps=2)  # steps 24, 25
        raise AssertionError("no device error")
    except SimDeviceError as e:
        assert "step 25" in str(e)
    assert [e["step"] for e in bk.injected("device_error")] == [25]


def test_no_bf16_probe_and_validate():
    bk = get_backend("sim:no-bf16")
    probe = bk.probe_dtypes()
    assert probe["fp32"] is None
    assert probe["bf16"] is not None and "BFloat16" in probe["bf16"] and "no bf16 kernels" in probe["bf16"]
    assert "bf16" not in bk.dtypes() and "fp32" in bk.dtypes()
    reasons = bk.validate(load_config(None, ["train.dtype=bf16"]))
    assert reasons and any("bf16" in r for r in reasons)
    assert bk.validate(load_config(None, ["train.dtype=fp32"])) == []
    assert bk.compute_dtype_name() == "fp32"
    assert bk.injected("unsupported_dtype")  # the probe's failure is recorded too


def test_healthy_probes_like_cpu_and_describes_itself():
    bk = get_backend("sim:healthy")
    assert bk.probe_dtypes() == get_backend("cpu").probe_dtypes()
    info = bk.describe()
    assert info["spec"] == "sim:healthy" and info["available"] and info["detail"] == bk.profile.description
    assert info["profile"].endswith("healthy.toml") and info["faults"] == []
    assert bk.device_name().startswith("sim:healthy")


def test_compute_is_reusable_and_reentrant():
    bk = get_backend("sim:bad-backward")
    ctx = bk.compute()
    a = torch.randn(3, 5, requires_grad=True)
    for _ in range(2):
        with ctx, ctx:
            torch.softmax(a, -1).pow(2).sum().backward()
    assert bk.counts["bad_backward"]["_softmax_backward_data"] == 2
    assert bk.step is None
    bk.set_step(4)
    assert bk.step == 4
