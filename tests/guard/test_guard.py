"""Guard on a plain PyTorch loop (an MLP, no transformer): every fault kind detected, the right action taken, and
the weights of a run whose faults were all transient equal to those of the unfaulted run, bit for bit."""

from __future__ import annotations

import json
import random

import pytest
import torch
import torch.nn.functional as F

from turnout import Guard
from turnout.errors import TargetError
from turnout.guard import RunUnrecoverable, TargetUntrusted

STEPS = 60
HEALTH = {"spike_min_steps": 8, "spike_window": 32}


def mlp() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(12, 48), torch.nn.GELU(), torch.nn.LayerNorm(48),
                               torch.nn.Linear(48, 3))


def data(n: int = STEPS + 40, seed: int = 1) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    xs = torch.randn(n, 16, 12, generator=g)
    return [(x, torch.tanh(x[:, :3] * 2)) for x in xs]


def loss_fn(model, batch):
    x, y = batch
    loss = F.mse_loss(model(x), y)
    loss.backward()
    return loss


def profile(tmp_path, faults: list[str], name: str = "p") -> str:
    path = tmp_path / f"{name}.toml"
    path.write_text('[profile]\ndescription = "test"\n\n' + "\n".join(f"[[fault]]\n{f}\n" for f in faults))
    return f"sim:{path}"


def train(target: str, batches, *, steps: int = STEPS, **kw):
    model = mlp()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    guard = Guard(model, opt, target=target, health={**HEALTH, **kw.pop("health", {})}, **kw)
    outs, i = [], 0
    while guard.step_count < steps:
        out = guard.step(loss_fn, batches[i])
        outs.append(out)
        i += 1 + out.skip_batches
    guard.close()
    return model, guard, outs


def kinds(outs) -> list[tuple[str, int]]:
    return [(e["kind"], e["step"]) for o in outs for e in o.events]


def test_transient_faults_at_random_steps_are_healed_and_the_weights_equal_the_unfaulted_runs(tmp_path):
    rng = random.Random(20261202)
    sdc_steps = sorted(rng.sample(range(2, STEPS), 3))
    bits = [rng.choice([23, 26, 30]) for _ in sdc_steps]  # exponent bits: every one is beyond rounding noise
    calls = [rng.randint(1, 6) for _ in sdc_steps]  # forward and backward products of the step
    err_steps = sorted(rng.sample([s for s in range(2, STEPS) if s not in sdc_steps], 2))
    faults = [f'kind = "sdc"\nops = ["mm", "addmm"]\nat_steps = [{s}]\nbit = {b}\ncall = {c}'
              for s, b, c in zip(sdc_steps, bits, calls)]
    faults.append(f'kind = "device_error"\nat_steps = {err_steps}')
    batches = data()
    clean, _, _ = train(profile(tmp_path, ['kind = "sdc"\nops = ["mm"]\nat_steps = [100000]'], "healthy"), batches)
    model, guard, outs = train(profile(tmp_path, faults), batches, health={"max_faults": 10})
    seen = kinds(outs)
    for s in sdc_steps:
        assert ("sdc", s) in seen, (s, seen)
    for s in err_steps:
        assert ("device_error", s) in seen, (s, seen)
    assert not any(k in ("rollback", "untrusted", "nan", "spike") for k, _ in seen)
    assert all(o.applied for o in outs) and guard.step_count == STEPS
    for a, b in zip(clean.state_dict().values(), model.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_nan_from_the_data_rolls_back_and_skips_the_batch():
    batches = data()
    bad = 30
    x, y = batches[bad]
    x = x.clone()
    x[0, 0] = float("nan")
    batches[bad] = (x, y)
    model, guard, outs = train("cpu", batches, snapshot_every=5)
    seen = kinds(outs)
    rolled = [o for o in outs if o.rolled_back_to is not None]
    assert ("nan", 31) in seen and len(rolled) == 1
    assert rolled[0].rolled_back_to == 30 and rolled[0].skip_batches == 9  # the onset's batch and 9 after it
    rb = next(e for o in outs for e in o.events if e["kind"] == "rollback")
    assert "numerical problem in model or data" in rb["detail"]  # reproducible on the reference too
    assert guard.step_count == STEPS and all(torch.isfinite(p).all() for p in model.parameters())


def test_a_persisting_loss_spike_rolls_back_to_before_its_onset():
    batches = data()
    for i in range(40, 44):
        x, y = batches[i]
        batches[i] = (x, y * 60)
    model, guard, outs = train("cpu", batches, snapshot_every=5)
    seen = kinds(outs)
    assert [s for k, s in seen if k == "spike"][:3] == [41, 42, 43]  # patience 3
    rolled = [o for o in outs if o.rolled_back_to is not None]
    assert len(rolled) == 1 and rolled[0].rolled_back_to == 40 and rolled[0].skip_batches > 0
    assert guard.step_count == STEPS


def test_a_hang_is_caught_by_the_watchdog_and_the_step_retried(tmp_path):
    target = profile(tmp_path, ['kind = "hang"\nat_steps = [12]\nseconds = 600\nerror_after = true'])
    hangs = []
    model = mlp()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    guard = Guard(model, opt, target=target, health={**HEALTH, "hang_first_s": 1.0, "hang_floor_s": 1.0},
                  on_hang=lambda step, elapsed, limit: (hangs.append(step), guard.backend.cancel_hang()))
    outs = [guard.step(loss_fn, b) for b in data()[:20]]
    guard.close()
    seen = kinds(outs)
    assert hangs == [12] and ("hang", 12) in seen and ("device_error", 12) in seen
    assert guard.step_count == 20


def test_persistent_corruption_uses_the_reference_then_fails_over_with_a_checkpoint(tmp_path):
    target = profile(tmp_path, ['kind = "sdc"\nops = ["mm", "addmm"]\nevery = 1\nfrom_step = 10\nbit = 27\n'
                                'repeat = true'])
    model = mlp()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    guard = Guard(model, opt, target=target, run_dir=tmp_path / "run", health=HEALTH, checkpoint_every=5)
    batches = data()
    outs = []
    with pytest.raises(TargetUntrusted) as e:
        for b in batches:
            outs.append(guard.step(loss_fn, b))
    seen = kinds(outs)
    assert [s for k, s in seen if k == "sdc"] == [10, 11]  # the third makes the target untrusted
    assert any(e["kind"] == "rerun" and e.get("where") == "cpu" and "applied" in e["detail"]
               for o in outs for e in o.events)
    assert e.value.checkpoint.name == "step-00000011"
    # the checkpoint says what computed it, as turnout train's do: model, dtype, device, software
    from turnout.ckpt import read_manifest

    fp = read_manifest(e.value.checkpoint).fingerprint
    assert fp["model"]["architecture"] == "Sequential" and fp["dtype"] == "fp32" and fp["device"]
    assert fp["software"]["torch"] == torch.__version__ and fp == guard.fingerprint()
    guard.close()
    events = [json.loads(line) for line in (tmp_path / "run" / "events.jsonl").read_text().splitlines()]
    assert events[-2]["kind"] == "untrusted" and events[-2]["checkpoint"].endswith("step-00000011")
    assert (tmp_path / "run" / "report.html").is_file() and (tmp_path / "run" / "metrics.jsonl").is_file()
    from turnout.report.run_data import summarize_run

    summary = summarize_run(tmp_path / "run")  # stopped for another target to continue, not finished
    assert events[-1]["kind"] == "stop" and summary["status"] == "stopped", summary["status_detail"]
    assert "no longer trusted" in summary["status_detail"] and "step-00000011" in summary["status_detail"]

    # another process (here: another guard) resumes it on cpu, at the same step and data position
    model2 = mlp()
    opt2 = torch.optim.AdamW(model2.parameters(), lr=3e-3)
    guard2 = Guard(model2, opt2, target="cpu", run_dir=tmp_path / "run", health=HEALTH)
    assert guard2.step_count == 11 and guard2.batches_seen == 11
    for a, b in zip(model.state_dict().values(), model2.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    out = guard2.step(loss_fn, batches[guard2.batches_seen])
    assert out.applied and out.step == 12
    guard2.close()


def test_rollbacks_are_bounded():
    batches = data()
    for i in range(20, len(batches)):
        x, y = batches[i]
        x = x.clone()
        x[0, 0] = float("inf")
        batches[i] = (x, y)
    with pytest.raises(RunUnrecoverable, match="max_rollbacks"):
        train("cpu", batches, health={"max_rollbacks": 2})


def test_an_unrecoverable_run_is_recorded_as_failed(tmp_path):
    from turnout.report.run_data import summarize_run

    batches = data()
    batches[5:] = [(torch.full_like(x, float("nan")), y) for x, y in batches[5:]]
    model = mlp()
    guard = Guard(model, torch.optim.AdamW(model.parameters(), lr=3e-3), target="cpu", run_dir=tmp_path / "run",
                  health={**HEALTH, "max_rollbacks": 1})
    with guard, pytest.raises(RunUnrecoverable):
        for b in batches:
            guard.step(loss_fn, b)
    summary = summarize_run(tmp_path / "run")
    assert summary["status"] == "failed" and "unrecoverable" in summary["status_detail"], summary["status_detail"]


def test_a_scheduler_is_stepped_with_applied_steps_and_rolled_back_with_the_weights():
    batches = data()
    x, y = batches[25]
    batches[25] = (torch.full_like(x, float("nan")), y)
    model = mlp()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 / (1 + s))
    guard = Guard(model, opt, target="cpu", lr_scheduler=sched, health=HEALTH, snapshot_every=4)
    i = 0
    while guard.step_count < 30:
        out = guard.step(loss_fn, batches[i])
        i += 1 + out.skip_batches
        assert sched.last_epoch == guard.step_count
        assert opt.param_groups[0]["lr"] == pytest.approx(1e-2 / (1 + guard.step_count))
    guard.close()


def test_a_closure_without_arguments_works_too():
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    guard = Guard(model, opt, target="cpu", health=HEALTH)
    for x, y in data()[:5]:
        out = guard.step(lambda: F.mse_loss(model(x), y))  # backward left to the guard
        assert out.applied
    guard.close()


@pytest.mark.parametrize("make, message", [
    (lambda m, o: Guard(m, torch.optim.SGD([torch.nn.Parameter(torch.ones(2))], lr=0.1), target="cpu"),
     "not the model's"),
    (lambda m, o: Guard(m, o, target="tpu"), "unknown"),
    (lambda m, o: Guard(m, o, target="cpu", health={"spike_sigma": float("nan")}), "health.spike_sigma"),
    (lambda m, o: Guard(m, o, target="cpu", health={"no_such": 1}), "health.no_such"),
])
def test_bad_setup_is_one_line_before_any_step(make, message):
    model = mlp()
    with pytest.raises((ValueError, TargetError), match=message) as e:
        make(model, torch.optim.SGD(model.parameters(), lr=0.1))
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("closure, message", [
    (lambda m, b: m(b[0]), "scalar loss"),
    (lambda m, b: 3.0, "returned float"),
    (lambda b: 1, "takes 1 required argument"),
    (lambda m, b: torch.tensor(1.0), "no gradient"),
])
def test_bad_closures_are_refused_before_the_weights_move(closure, message):
    model = mlp()
    before = [p.detach().clone() for p in model.parameters()]
    guard = Guard(model, torch.optim.SGD(model.parameters(), lr=0.1), target="cpu")
    with pytest.raises(ValueError, match=message):
        guard.step(closure, data()[0])
    guard.close()
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_a_checkpoint_of_another_model_is_refused(tmp_path):
    model = mlp()
    guard = Guard(model, torch.optim.SGD(model.parameters(), lr=0.1), target="cpu", run_dir=tmp_path)
    guard.step(loss_fn, data()[0])
    guard.save()
    guard.close()
    other = torch.nn.Linear(12, 3)
    with pytest.raises(ValueError, match="another model"):
        Guard(other, torch.optim.SGD(other.parameters(), lr=0.1), target="cpu", run_dir=tmp_path)
