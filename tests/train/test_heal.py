"""Each fault class is detected, diagnosed and recovered, in process, against known ground truth.

Numerical problems are made by a poisoned stretch of data (reproducible on any target, as a bad batch is);
hardware problems come from emulated-accelerator profiles (sim:...), which the reference target does not share.
"""

import json
import math
from pathlib import Path

import pytest

from turnout.config import load_config
from turnout.data.sampler import GlobalSampler
from turnout.model.transformer import Transformer
from turnout.train import train
from turnout.train.health import TargetUntrusted

BASE = ["model.preset='debug'", "train.steps=40", "train.batch_size=4", "train.seq_len=32", "train.warmup_steps=2",
        "train.eval_interval=0", "ckpt.interval=10", "ckpt.keep=5", "train.lr=0.003"]
MARK = 1023  # a token id that marks poisoned rows (debug vocab is 1024)


def _cfg(*extra):
    return load_config(None, [*BASE, *extra])


def _events(run: Path, kind=None):
    ev = [json.loads(x) for x in (run / "events.jsonl").read_text().splitlines()]
    return [e for e in ev if kind is None or e["kind"] == kind]


def _losses(run: Path) -> dict[int, float]:
    out = {}
    for line in (run / "metrics.jsonl").read_text().splitlines():
        m = json.loads(line)
        if m["kind"] == "train":
            out[m["step"]] = m["loss"]
    return out


@pytest.fixture(scope="module")
def clean(tmp_path_factory):
    run = tmp_path_factory.mktemp("clean") / "run"
    train(_cfg(), "cpu", run, log=None)
    return _losses(run)


@pytest.fixture
def poison(monkeypatch):
    """poison(kind, first_step, last_step): rows of those steps' global batches carry MARK and misbehave."""
    spec = {}
    real_next, real_forward = GlobalSampler.next_batch, Transformer.forward

    def next_batch(self, global_batch_size, rank=0, world_size=1):
        start = self.state_dict()["index"]
        x, y = real_next(self, global_batch_size, rank, world_size)
        lo, hi = spec.get("samples", (0, 0))
        if lo <= start < hi:
            x = x.clone()
            x[:, 0] = MARK
        return x, y

    def forward(self, tokens, targets=None, **kw):
        out = real_forward(self, tokens, targets, **kw)
        if targets is not None and bool((tokens[:, 0] == MARK).any()):
            kind = spec["kind"]
            if kind == "nan":
                out.loss = out.loss * float("nan")
            elif kind == "spike":
                out.loss = out.loss + 40.0  # the loss alone jumps
            elif kind == "grad":
                out.loss = out.loss + 999.0 * (out.loss - out.loss.detach())  # gradients x1000, loss unchanged
        return out

    monkeypatch.setattr(GlobalSampler, "next_batch", next_batch)
    monkeypatch.setattr(Transformer, "forward", forward)

    def set_(kind, first, last, batch=4):
        spec.update(kind=kind, samples=((first - 1) * batch, last * batch))

    return set_


def test_nan_from_data_rolls_back_and_skips(tmp_path, poison):
    poison("nan", 30, 30)
    run = tmp_path / "run"
    res = train(_cfg("health.skip_batches=2"), "cpu", run, log=None)
    assert res.step == 40 and math.isfinite(res.final_loss)
    kinds = [e["kind"] for e in _events(run)]
    assert "nan" in kinds and "rollback" in kinds and "skip_batches" in kinds and "sdc" not in kinds
    rb = _events(run, "rollback")[0]
    assert rb["step"] == 30 and rb["to_step"] == 20 and "numerical problem" in rb["detail"]
    reruns = _events(run, "rerun")
    assert [r["where"] for r in reruns[:2]] == ["in_place", "cpu"]
    skip = _events(run, "skip_batches")[0]
    assert skip["first_sample"] == 80 and skip["samples"] == (29 + 2) * 4 - 80  # through the onset and one more
    assert all(math.isfinite(v) for v in _losses(run).values())


def test_persistent_loss_spike_rolls_back_and_cuts_lr_when_it_recurs(tmp_path, poison):
    poison("spike", 30, 33)
    run = tmp_path / "run"
    res = train(_cfg("health.spike_patience=2", "health.skip_batches=2"), "cpu", run, log=None)
    assert res.step == 40
    spikes = _events(run, "spike")
    assert spikes[0]["step"] == 30 and "(1/2)" in spikes[0]["detail"]
    rollbacks = _events(run, "rollback")
    assert len(rollbacks) == 2 and rollbacks[0]["step"] == 30  # onset = first spiking step
    cut = _events(run, "lr_cut")
    assert len(cut) == 1 and cut[0]["lr_scale"] == pytest.approx(0.9)
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    last = [m for m in lines if m["kind"] == "train"][-1]
    from turnout.train.schedule import lr_at
    assert last["lr"] == pytest.approx(0.9 * lr_at(39, _cfg().train))


def test_grad_explosion_rolls_back(tmp_path, poison):
    poison("grad", 30, 31)
    run = tmp_path / "run"
    train(_cfg("health.spike_patience=2", "health.skip_batches=2"), "cpu", run, log=None)
    assert [e["step"] for e in _events(run, "grad_spike")] == [30, 31]
    assert not _events(run, "spike")  # the loss itself never moved
    assert _events(run, "rollback")[0]["to_step"] == 20


def _profile(tmp_path, body: str) -> str:
    p = tmp_path / "chip.toml"
    p.write_text('[profile]\ndescription = "test chip"\nseed = 0\n' + body)
    return f"sim:{p}"


def test_transient_sdc_found_by_verification_is_hardware_and_discarded(tmp_path, clean):
    target = _profile(tmp_path, '[[fault]]\nkind = "sdc"\nops = ["mm"]\nat_steps = [30]\nbit = 22\n')
    run = tmp_path / "run"
    train(_cfg("health.verify_interval=10", "health.checksums=false"), target, run, log=None)
    sdc = _events(run, "sdc")
    assert len(sdc) == 1 and sdc[0]["step"] == 30 and sdc[0]["classification"] == "transient"
    assert "matches the reference" in sdc[0]["detail"]
    injected = _events(run, "injected")
    assert [(e["fault"], e["step"]) for e in injected] == [("sdc", 30)]
    assert _losses(run) == clean  # the corrupted result was never applied: bit-exact with a clean run


@pytest.mark.parametrize("bitwise", [True, False])
def test_quiet_sdc_is_caught_by_the_gradient_checksum(tmp_path, clean, bitwise):
    """A flip of mantissa bit 4 moves one matmul output by ~1e-6 of itself: loss and grad norms agree with the
    re-run far inside rerun_rtol, only the bit-level gradient checksum differs."""
    target = _profile(tmp_path, '[[fault]]\nkind = "sdc"\nops = ["mm"]\nat_steps = [30]\nbit = 4\n')
    run = tmp_path / "run"
    train(_cfg("health.verify_interval=10", "health.checksums=false", f"health.rerun_bitwise={str(bitwise).lower()}"),
          target, run, log=None)
    assert [(e["fault"], e["step"]) for e in _events(run, "injected")] == [("sdc", 30)]
    sdc = _events(run, "sdc")
    if bitwise:
        assert len(sdc) == 1 and sdc[0]["step"] == 30 and sdc[0]["classification"] == "transient"
        assert "bit-different gradients" in sdc[0]["detail"]
        assert _losses(run) == clean
    else:  # norms alone cannot see it: no fault is counted against the target (the clean re-run is applied anyway)
        assert not sdc
        assert _losses(run) == clean


def test_persistent_sdc_is_classified_by_the_reference_and_its_result_applied(tmp_path, clean):
    # bit 30 turns a small activation into ~1e38: the step goes non-finite, and does so again when re-run
    target = _profile(tmp_path, '[[fault]]\nkind = "sdc"\nops = ["mm"]\nat_steps = [30]\nbit = 30\nrepeat = true\n')
    run = tmp_path / "run"
    train(_cfg(), target, run, log=None)
    sdc = _events(run, "sdc")
    assert len(sdc) == 1 and sdc[0]["classification"] == "persistent" and "computes wrongly" in sdc[0]["detail"]
    assert not _events(run, "rollback")
    assert _losses(run) == clean  # the reference's step was applied, so the run continues as a clean one


def test_checksums_catch_every_transient_flip_on_its_own_step_forward_and_backward(tmp_path):
    """Flips at steps no sampler picks (no verify_interval), in forward and backward products, on bits >= 22:
    each is an `sdc` at its own step naming the op, and the run stays bit-identical to a clean one."""
    faults = [("mm", 7, 22, 5), ("mm", 13, 26, 60), ("_grouped_mm", 17, 30, 8), ("mm", 23, 23, 100),
              ("bmm", 29, 25, 1), ("addmm", 31, 24, 1)]
    body = "".join(f'[[fault]]\nkind = "sdc"\nops = ["{op}"]\nat_steps = [{step}]\nbit = {bit}\ncall = {call}\n'
                   for op, step, bit, call in faults)
    target = _profile(tmp_path, body)
    cfg = _cfg("health.max_faults=10", "model.overrides={attn_impl='blocked'}")  # attention as bmm / baddbmm
    train(cfg, "cpu", tmp_path / "clean", log=None)
    run = tmp_path / "run"
    train(cfg, target, run, log=None)
    injected = {e["step"] for e in _events(run, "injected")}
    sdc = _events(run, "sdc")
    assert [e["step"] for e in sdc] == sorted(injected) and len(injected) >= 5
    assert all(e["classification"] == "transient" and "passes every check" in e["detail"] for e in sdc)
    assert {e["checks"][0]["phase"] for e in sdc} == {"forward", "backward"}
    for e in sdc:
        first = e["checks"][0]
        assert first["discrepancy"] > first["bound"] > 0 and first["module"].startswith("Transformer.")
    assert _losses(run) == _losses(tmp_path / "clean")


def test_device_error_is_retried_and_repeated_errors_untrust_the_target(tmp_path, clean):
    once = _profile(tmp_path, '[[fault]]\nkind = "device_error"\nat_steps = [7]\n')
    run = tmp_path / "once"
    train(_cfg(), once, run, log=None)
    assert [e["step"] for e in _events(run, "device_error")] == [7]
    assert _losses(run) == clean
    (tmp_path / "b").mkdir()
    many = _profile(tmp_path / "b", '[[fault]]\nkind = "device_error"\nevery = 3\nfrom_step = 12\n')
    run = tmp_path / "many"
    with pytest.raises(TargetUntrusted, match="3 device errors"):
        train(_cfg(), many, run, log=None)
    assert _events(run, "untrusted")[0]["cause"] == "device_error"
    assert (run / "report.html").is_file()


def test_clean_tiny_run_raises_no_false_alarm(tmp_path):
    run = tmp_path / "run"
    cfg = load_config(None, ["model.preset='tiny'", "train.steps=300", "train.batch_size=8", "train.seq_len=64",
                             "train.eval_interval=0", "ckpt.interval=0", "train.warmup_steps=20"])
    train(cfg, "cpu", run, log=None)
    alarms = [e for e in _events(run) if e["kind"] in ("nan", "spike", "grad_spike", "sdc", "device_error", "hang",
                                                       "rollback")]
    assert alarms == []
    assert len(_losses(run)) == 300
