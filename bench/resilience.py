"""Resilience figures: health-monitor overhead per step, time to detect and to recover per fault class, and goodput
(ETTR) under a schedule of one injected fault every 200 steps.

    .venv/bin/python bench/resilience.py [--steps 1000] [--out /tmp/turnout-resilience]

Numerical faults come from a poisoned stretch of data (reproducible on any target, as a bad batch is); hardware
faults from emulated-accelerator profiles; failovers run the real supervisor (`turnout train --fallback cpu`) in
a subprocess. All runs use the `debug` preset, fp32 on CPU.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from turnout.config import load_config
from turnout.data.sampler import GlobalSampler
from turnout.model.transformer import Transformer
from turnout.train import train
from turnout.report.run_data import summarize_run
from turnout.train.step import StepResult

BASE = ["model.preset='debug'", "train.batch_size=4", "train.seq_len=32", "train.warmup_steps=2",
        "train.eval_interval=0", "ckpt.interval=10", "ckpt.keep=3"]
MARK = 1023


def cfg(*extra):
    return load_config(None, [*BASE, *extra])


def events(run: Path, kind=None):
    ev = [json.loads(x) for x in (run / "events.jsonl").read_text().splitlines() if x.strip()]
    return [e for e in ev if kind is None or e["kind"] == kind]


def monitor_overhead(root: Path, reps: int = 60) -> dict:
    """Per-step cost of the monitor: one process, the same step measured bare (`StepRunner.compute`) and guarded
    (`Healer.run`: RNG snapshot, checks, watchdog bookkeeping), interleaved so machine load hits both alike."""
    from turnout.train.build import build_dataset, build_model
    from turnout.train.dist import DistInfo
    from turnout.train.events import EventLog
    from turnout.train.heal import Healer
    from turnout.train.health import HealthMonitor

    h = cfg().health
    mon = HealthMonitor(h)
    r = StepResult(3.0, 3.0, 3.0, 0.0, 1.0, {f"layers.{i}": 0.3 for i in range(8)}, 128)
    t0 = time.perf_counter()
    for _ in range(10000):
        mon.check(r)
        mon.observe(r)
    check_us = (time.perf_counter() - t0) / 10000 * 1e6
    c = cfg("train.steps=1000")
    built = build_model(c, "cpu", DistInfo())
    data = build_dataset(c, built.args, DistInfo(), log=None)
    batches = [data.sampler(32, 0).next_batch(4)]
    healer = Healer(built.runner, c.health, EventLog(root / "overhead-events.jsonl", "cpu"))
    bare, guarded = [], []
    for i in range(reps + 5):
        for fn, out in ((lambda: built.runner.compute(batches), bare), (lambda: healer.run(i + 1, batches), guarded)):
            t = time.perf_counter()
            fn()
            if i >= 5:
                out.append(time.perf_counter() - t)
    off, on = statistics.median(bare), statistics.median(guarded)
    return {"check_us": check_us, "step_off_ms": off * 1e3, "step_on_ms": on * 1e3, "overhead": on / off - 1}


def poisoned(kind: str, first: int, last: int, batch: int = 4):
    """Patch data + loss so steps first..last carry a reproducible numerical problem (undone by the returned fn)."""
    real_next, real_forward = GlobalSampler.next_batch, Transformer.forward

    def next_batch(self, global_batch_size, rank=0, world_size=1):
        start = self.state_dict()["index"]
        x, y = real_next(self, global_batch_size, rank, world_size)
        if (first - 1) * batch <= start < last * batch:
            x = x.clone()
            x[:, 0] = MARK
        return x, y

    def forward(self, tokens, targets=None, **kw):
        out = real_forward(self, tokens, targets, **kw)
        if targets is not None and bool((tokens[:, 0] == MARK).any()):
            out.loss = {"nan": lambda l: l * float("nan"), "spike": lambda l: l + 40.0,
                        "grad": lambda l: l + 999.0 * (l - l.detach())}[kind](out.loss)
        return out

    GlobalSampler.next_batch, Transformer.forward = next_batch, forward

    def undo():
        GlobalSampler.next_batch, Transformer.forward = real_next, real_forward
    return undo


def incident_row(name: str, run: Path, kind: str) -> dict:
    s = summarize_run(run)
    inc = [i for i in s["incidents"] if i["kind"] == kind]
    acted = [i for i in inc if i.get("actions")]  # a persisting spike: the incident whose step was acted on
    i = (acted or inc or [{}])[0]
    return {"fault": name, "detected_as": kind if inc else "NOT DETECTED", "ttd": i.get("ttd"), "ttr": i.get("ttr"),
            "steps_lost": i.get("steps_lost"), "action": ", ".join(a["kind"] for a in i.get("actions", [])) or "-"}


def profile(root: Path, name: str, body: str) -> str:
    p = root / f"{name}.toml"
    p.write_text(f'[profile]\ndescription = "{name}"\nseed = 0\n{body}')
    return f"sim:{p}"


def supervise(run: Path, target: str, *extra: str) -> float:
    t0 = time.time()
    cmd = [sys.executable, "-m", "turnout", "train", "--out", str(run), "--target", target, "--fallback", "cpu"]
    for item in [*BASE, *extra]:
        cmd += ["--set", item]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"{run}: supervisor failed:\n{r.stderr[-2000:]}")
    return time.time() - t0


def fault_classes(root: Path) -> list[dict]:
    rows = []
    for name, kind, first, last, extra in (("NaN from data", "nan", 30, 30, ()),
                                           ("loss spike (3 steps)", "spike", 30, 32, ()),
                                           ("grad explosion (3 steps)", "grad", 30, 32, ())):
        run = root / f"fault-{kind}"
        shutil.rmtree(run, ignore_errors=True)
        undo = poisoned(kind, first, last)
        try:
            train(cfg("train.steps=40", "health.skip_batches=2", *extra), "cpu", run, log=None)
        finally:
            undo()
        rows.append(incident_row(name, run, {"grad": "grad_spike"}.get(kind, kind)))
    cases = (("SDC bit flip, transient (verification)", "sdc", '[[fault]]\nkind = "sdc"\nops = ["mm"]\n'
              'at_steps = [30]\nbit = 22\n', ("health.verify_interval=10", "health.checksums=false")),
             ("SDC bit flip, transient (checksums)", "sdc", '[[fault]]\nkind = "sdc"\nops = ["mm"]\n'
              'at_steps = [31]\nbit = 22\n', ()),
             ("SDC bit flip, persistent", "sdc", '[[fault]]\nkind = "sdc"\nops = ["mm"]\nat_steps = [30]\nbit = 30\n'
              'repeat = true\n', ()),
             ("device error (retried)", "device_error", '[[fault]]\nkind = "device_error"\nat_steps = [30]\n', ()))
    for name, kind, body, extra in cases:
        run = root / f"fault-{kind}-{len(rows)}"
        shutil.rmtree(run, ignore_errors=True)
        train(cfg("train.steps=40", *extra), profile(root, f"p{len(rows)}", body), run, log=None)
        rows.append(incident_row(name, run, kind))
    for name, kind, body, extra in (
            ("repeated device errors -> failover", "device_error",
             '[[fault]]\nkind = "device_error"\nevery = 2\nfrom_step = 25\n', ()),
            ("hang -> failover", "hang", '[[fault]]\nkind = "hang"\nat_steps = [30]\nseconds = 600\n',
             ("health.hang_floor_s=2", "health.hang_factor=5"))):
        run = root / f"failover-{kind}"
        shutil.rmtree(run, ignore_errors=True)
        supervise(run, profile(root, f"f{kind}", body), "train.steps=40", *extra)
        s = summarize_run(run)
        fo = [i for i in s["incidents"] if any(a["kind"] == "failover" for a in i.get("actions", []))]
        i = fo[0] if fo else {}
        rows.append({"fault": name, "detected_as": i.get("kind", "NOT DETECTED"), "ttd": i.get("ttd"),
                     "ttr": i.get("ttr"), "steps_lost": i.get("steps_lost"), "action": "failover to cpu"})
    return rows


def ettr_schedule(root: Path, steps: int) -> dict:
    """One injected fault every 200 steps, alternating a device error and a loud SDC, on one run (checkpoints
    every 100 steps, written in the background)."""
    body = ('[[fault]]\nkind = "device_error"\nevery = 400\nfrom_step = 200\n'
            '[[fault]]\nkind = "sdc"\nops = ["mm"]\nevery = 400\nfrom_step = 400\nbit = 30\n')
    run = root / "ettr"
    shutil.rmtree(run, ignore_errors=True)
    wall = supervise(run, profile(root, "every200", body), f"train.steps={steps}", "ckpt.interval=100",
                     "ckpt.async_save=true")
    s = summarize_run(run)
    return {"steps": s["steps"], "ettr": s["ettr"], "wall_s": wall, "incidents": len(s["incidents"]),
            "detected": sum(1 for i in s["incidents"] if i.get("actions")),
            "injected": len(events(run, "injected"))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=1000, help="steps of the ETTR run")
    ap.add_argument("--out", default="/tmp/turnout-resilience")
    args = ap.parse_args()
    root = Path(args.out)
    root.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    ov = monitor_overhead(root)
    print(f"monitor: check() {ov['check_us']:.1f} us; median forward+backward {ov['step_off_ms']:.1f} ms bare, "
          f"{ov['step_on_ms']:.1f} ms guarded by the monitor: overhead {ov['overhead']:+.1%}")
    rows = fault_classes(root)
    print(f"\n{'fault':42s} {'detected as':14s} {'detect s':>9s} {'recover s':>10s} {'steps lost':>10s}  action")
    fmt = lambda v: "-" if v is None else f"{v:.2f}"  # noqa: E731
    for r in rows:
        print(f"{r['fault']:42s} {r['detected_as']:14s} {fmt(r['ttd']):>9s} {fmt(r['ttr']):>10s} "
              f"{'-' if r['steps_lost'] is None else r['steps_lost']:>10}  {r['action']}")
    e = ettr_schedule(root, args.steps)
    print(f"\nETTR with one fault every 200 steps: {e['ettr']:.1%} over {e['steps']} steps ({e['wall_s']:.0f} s wall, "
          f"{e['injected']} injected, {e['detected']} handled)")


if __name__ == "__main__":
    main()
