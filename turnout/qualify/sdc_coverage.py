"""How well the checksums protect a run, measured by injection (`turnout sdc-coverage`).

A short training run on the target; at every step the step is computed clean (any checksum failure is a false
alarm), again with every product output jittered by up to 2 ulp of float32 and rounded to its dtype (what a
correct device that orders its sums differently does: the run's own noise, and a second false-alarm sample),
then once per flip assigned to that step with one bit of one element of one product output flipped: a random
product call of the step (forward or backward, fused attention included), element and bit. A tenth of the flips
are written by the AdamW step instead, into a random element of a parameter or of a moment, and judged by the
step's own check (their effect: the step's loss with what the step left, against a clean step). Run on several
ranks (`turnout sdc-coverage --nproc N`, DDP), every flip lands on a randomly drawn rank, and a fifth of them go
into the gradient reduction instead: one bit of one element of one bucket's all-reduce result on that rank,
judged by the conservation check (turnout.train.conservation); figures are the largest over the ranks. The
clean result is applied, so the model moves on as a clean run would and later flips meet later weights. A flip
counts as detected when the step's checks fail on any rank; as harmful when it moves the step's loss or gradient
norms by more than the jitter did at that step (and by more than the jitter's median effect over the run). A
reduction flip's harm is judged on its step alone: applied, it would also leave that rank's weights apart from
the others' (what the replica check catches later).

Faults are placed only by the campaign's own seeded draws, never at steps or calls a detector looks at.
"""

from __future__ import annotations

import dataclasses
import math
import random
import statistics
import time
from typing import Any, Callable

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from turnout.backend import Backend, get_backend
from turnout.backend.checksums import CHECKED_OPS, phase
from turnout.backend.sim_faults import UlpJitter, collective_results, flip_bit, wait_work
from turnout.config import Config, from_dict
from turnout.qualify.stage import StageResult
from turnout.qualify.workload import Settings, Workload
from turnout.train.build import build_dataset, build_model
from turnout.train.dist import DistInfo, all_gather_json, all_max, local_shard
from turnout.train.rerun import GradSnapshot, relative_difference
from turnout.train.schedule import lr_at

BIT_CLASSES = ("sign", "exponent", "top-3 mantissa", "other mantissa")
OPTIMIZER_SHARE = 0.1  # of the flips: written by the AdamW step into a parameter or moment, the rest into products
REDUCE_SHARE = 0.2  # of the flips on several ranks: into a gradient bucket's all-reduce result
_STATE = ("param", "exp_avg", "exp_avg_sq")
_LAYOUT = {torch.float32: (31, 23), torch.bfloat16: (15, 7), torch.float16: (15, 10), torch.float64: (63, 52)}


def bit_class(bit: int, dtype: torch.dtype) -> str:
    """Which class bit `bit` of a `dtype` number belongs to."""
    sign, mantissa = _LAYOUT[dtype]
    if bit == sign:
        return "sign"
    if bit >= mantissa:
        return "exponent"
    return "top-3 mantissa" if bit >= mantissa - 3 else "other mantissa"


def _is_product(func: Any) -> bool:
    return func in CHECKED_OPS or "attention" in func.overloadpacket.__name__


def _first_float(out: Any) -> tuple[int, torch.Tensor] | None:
    outs = out if isinstance(out, (tuple, list)) else (out,)
    return next(((i, t) for i, t in enumerate(outs) if isinstance(t, torch.Tensor) and t.is_floating_point()
                 and t.numel()), None)


class _Products(TorchDispatchMode):
    """Below the checksum mode: counts the model's product calls, and either flips one bit of one element of call
    `at` (a fraction `where` into its first floating output) or jitters every product output."""

    def __init__(self, at: int = -1, where: float = 0.0, bit: int = 0, jitter: UlpJitter | None = None,
                 bucket: int = -1):
        super().__init__()
        self.at, self.where, self.bit, self.jitter, self.bucket = at, where, bit, jitter, bucket
        self.calls = 0
        self.buckets = 0  # gradient all-reduces seen (DDP's buckets; the float64 statistics beside them are not)
        self.flip: dict[str, Any] | None = None

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func.namespace == "c10d" and func.overloadpacket.__name__.rstrip("_") == "allreduce":
            return self._reduced(out, args)
        if not _is_product(func):
            return out
        i, self.calls = self.calls, self.calls + 1
        found = _first_float(out)
        if found is None or (i != self.at and self.jitter is None):
            return out
        j, t = found
        if self.jitter is not None:  # in the accumulator's precision, then the output's own rounding: a device
            # that orders its sums differently moves a bf16 output only where float32 noise crosses a bf16 rounding
            # boundary, not by whole bf16 ulps (that would be a sloppier device than rounding allows)
            work = t if torch.finfo(t.dtype).eps <= torch.finfo(torch.float32).eps else t.float()
            new = self.jitter(work, func.overloadpacket.__name__).to(t.dtype)
        else:
            new = self._flipped(t, f"aten::{func.overloadpacket.__name__}", phase())
        if func._schema.returns and func._schema.returns[0].alias_info is not None:  # in place: the caller's tensor
            t.copy_(new)
            return out
        if isinstance(out, (tuple, list)):
            return type(out)(new if k == j else o for k, o in enumerate(out))
        return new

    def _flipped(self, t: torch.Tensor, op: str, where_in_step: str) -> torch.Tensor:
        """`t` with bit `bit` of its element at fraction `where` flipped (a new tensor), recorded in `flip`."""
        index = min(int(self.where * t.numel()), t.numel() - 1)
        new, bit = flip_bit(t, index, self.bit)
        new = new.view(t.shape)
        self.flip = {"op": op, "phase": where_in_step, "dtype": t.dtype, "bit": bit,
                     "before": float(t.reshape(-1)[index]), "after": float(new.reshape(-1)[index]),
                     "time": time.perf_counter()}
        return new

    def _reduced(self, out: Any, args: tuple) -> Any:
        """A bucket's all-reduce: counted, and on call `bucket` one bit of its result flipped once it is final."""
        results = collective_results("c10d::allreduce", out, args)
        if not results or results[0].dtype == torch.float64:
            return out
        i, self.buckets = self.buckets, self.buckets + 1
        if i != self.bucket:
            return out
        wait_work(out)  # the result is final only now: a flip written earlier would be overwritten
        results[0].copy_(self._flipped(results[0], "c10d::allreduce", "backward"))
        return out


def _loss(runner, batches, rng: dict) -> float:
    """This step's loss (forward only) with the weights as they are now."""
    runner.backend.set_rng_state(rng)
    with torch.no_grad(), runner.backend.compute(), runner.backend.autocast(runner.dtype):
        return sum(float(runner.model(x, targets=y).loss) for x, y in batches) / len(batches)


def _optimizer_trial(runner, clean, lr: float, draw: random.Random, batches, rng: dict, mine: bool,
                     device: torch.device) -> dict | None:
    """One AdamW step that writes one flipped bit into a random element of a parameter or moment (on this rank when
    `mine`: every rank draws alike and takes the step), judged by the step's own check on any rank; its effect is
    this step's loss with what the step left against a clean step's, the largest over ranks. Leaves the
    parameters, moments, step counts, router biases and gradients as they were. The flipping rank's record, else
    None."""
    check, opt, inner = runner.adamw_check, runner.optimizer, runner.inner
    grads, biases = GradSnapshot(runner), [m.gate.bias.clone() for m in inner.moe_layers()]
    saved = check.before()
    grp = draw.choice(saved)
    p, what, where, bit = draw.choice(grp.params), draw.choice(_STATE), draw.random(), draw.randrange(64)
    flip: dict[str, Any] = {}
    real = opt.step

    def step(*a, **k):
        out = real(*a, **k)
        if mine and not flip:  # the first run of the step only: a re-taken step is clean (a transient fault)
            t = local_shard(p.detach() if what == "param" else opt.state[p][what])
            index = min(int(where * t.numel()), t.numel() - 1)
            new, b = flip_bit(t, index, bit)
            flip.update(op=f"adamw:{what}", phase="optimizer", bit=b, dtype=t.dtype, before=float(t.reshape(-1)[index]),
                        after=float(new.reshape(-1)[index]), time=time.perf_counter())
            t.copy_(new.view(t.shape))
        return out

    def undo() -> None:
        check.restore(saved)
        for m, b0 in zip(inner.moe_layers(), biases):
            m.gate.bias.copy_(b0)
        grads.restore(runner)

    opt.step = step  # an instance attribute shadows the method for this one apply
    try:
        runner.apply(clean, lr)
    finally:
        del opt.step
    done = time.perf_counter()
    detected = all_max(float(bool(runner.optimizer_findings and runner.optimizer_findings[0])), device) > 0
    after = _loss(runner, batches, rng)
    undo()
    runner.apply(clean, lr)
    reference = _loss(runner, batches, rng)
    undo()
    effect = all_max(abs(after - reference) / max(abs(reference), 1e-12) if math.isfinite(after) else math.inf,
                     device)
    return _record(flip, detected, effect, done) if mine else None


def _record(flip: dict[str, Any], detected: bool, effect: float, done: float) -> dict[str, Any]:
    """One flip's record (JSON-ready): where it went, what it did to the value, and what the checks made of it."""
    return {"op": flip["op"], "phase": flip["phase"], "bit": flip["bit"],
            "bit_class": bit_class(flip["bit"], flip["dtype"]), "dtype": str(flip["dtype"]).removeprefix("torch."),
            "before": flip["before"], "after": flip["after"],
            "detected": detected, "effect": effect if math.isfinite(effect) else "inf", "detect_s": done - flip["time"]}


def _rate(hit: int, n: int) -> float | None:
    return hit / n if n else None


def _table(rows: list[dict], key: str) -> dict[str, dict]:
    out: dict[str, dict] = {}
    for r in rows:
        c = out.setdefault(r[key], {"flips": 0, "detected": 0, "harmful": 0, "harmful_escaped": 0})
        c["flips"] += 1
        c["detected"] += r["detected"]
        c["harmful"] += r["harmful"]
        c["harmful_escaped"] += r["harmful"] and not r["detected"]
    for c in out.values():
        c["rate"] = _rate(c["detected"], c["flips"])
    return out


def run_campaign(config: Config, target: str | Backend, *, flips: int, steps: int, seed: int,
                 log: Callable[[str], None] | None = None, work: Workload | None = None,
                 info: DistInfo = DistInfo()) -> dict[str, Any]:
    """Inject `flips` single-bit flips over `steps` training steps of `config` on `target`; returns the figures
    (see the module doc) and one record per flip. With `work` (a qualification workload, checksums on in its
    config), its model and its fixed batches are used instead of the configured model and data. With `info` of a
    process group (every rank calls this alike), the run is data-parallel and every rank returns the figures."""
    if not config.health.checksums:
        raise ValueError("health.checksums is off: there is nothing to measure")
    if work is None:
        built = build_model(config, target, info)
        sampler = build_dataset(config, built.args, info, None).sampler(config.train.seq_len, config.train.seed)
        next_batch = lambda: sampler.next_batch(config.train.batch_size)  # noqa: E731
    else:
        built = work.build(target)
        fixed = iter(work.batches[i % len(work.batches)] for i in range(steps))
        next_batch = lambda: next(fixed)  # noqa: E731
    runner, backend = built.runner, built.backend
    device = backend.device(info.local_rank)
    draw = random.Random(seed)  # the same draws on every rank: each flip's rank is one of them
    per_step = [flips // steps + (1 if s < flips % steps else 0) for s in range(steps)]
    draw.shuffle(per_step)
    jitter = UlpJitter(seed + 1, 2)
    records: list[dict] = []
    alarms: list[dict] = []
    noise: list[float] = []
    t0 = time.perf_counter()
    for s in range(steps):
        x, y = next_batch()
        batches = list(zip(x.chunk(config.train.grad_accum), y.chunk(config.train.grad_accum)))
        rng = backend.get_rng_state()
        count = _Products()
        with count:
            clean = runner.compute(batches)
        snap = GradSnapshot(runner)
        backend.set_rng_state(rng)
        with _Products(jitter=jitter):
            jittered = runner.compute(batches)
        for run, result in (("clean", clean), ("jittered", jittered)):  # on the ranks whose checks failed
            if result.checks.collect():
                alarms.append({"step": s + 1, "kind": run, "checks": [m.to_dict() for m in result.checks.collect()]})
        step_noise = all_max(relative_difference(clean, jittered), device)
        noise.append(step_noise)
        lr = lr_at(s, config.train, 1.0)
        for _ in range(per_step[s]):
            # every rank draws alike (the same calls and buckets everywhere), so all take the same trials
            kind = draw.random()
            mine = info.world_size == 1 or draw.randrange(info.world_size) == info.rank
            if kind < OPTIMIZER_SHARE and runner.adamw_check is not None:
                rec = _optimizer_trial(runner, clean, lr, draw, batches, rng, mine, device)
                if rec is not None:
                    records.append({"step": s + 1, **rec, "noise": step_noise})
                continue
            backend.set_rng_state(rng)
            if info.world_size > 1 and kind > 1 - REDUCE_SHARE and count.buckets:
                at = draw.randrange(count.buckets)
                inj = _Products(bucket=at if mine else -1, where=draw.random(), bit=draw.randrange(64))
            else:
                at = draw.randrange(count.calls)
                inj = _Products(at=at if mine else -1, where=draw.random(), bit=draw.randrange(64))
            with inj:
                faulty = runner.compute(batches)
            done = time.perf_counter()
            effect = all_max(relative_difference(clean, faulty), device)  # every rank: a collective
            if inj.flip is not None:
                records.append({"step": s + 1, **_record(inj.flip, bool(faulty.flagged), effect, done),
                                "noise": step_noise})
        snap.restore(runner)
        runner.apply(clean, lr)
        if log is not None and ((s + 1) % max(steps // 10, 1) == 0 or s + 1 == steps):
            caught = sum(r["detected"] for r in records)
            mine_only = " on rank 0" if info.world_size > 1 else ""  # each rank holds its own flips until the end
            log(f"[sdc-coverage] step {s + 1}/{steps}: {len(records)} flips{mine_only}, {caught} detected, "
                f"{len(alarms)} false alarm(s), {time.perf_counter() - t0:.0f} s")
    records = sorted(all_gather_json(records, device), key=lambda r: r["step"])  # each flip is on one rank
    merged: dict[tuple[int, str], dict] = {}  # one alarm per step run, whichever ranks saw it
    for a in all_gather_json(alarms, device):
        merged.setdefault((a["step"], a["kind"]), {**a, "checks": []})["checks"] += a["checks"]
    alarms = [merged[k] for k in sorted(merged)]
    return _summary(config, built, built.backend.name, records, alarms, noise, steps, seed, time.perf_counter() - t0,
                    info.world_size)


def _summary(config: Config, built, target: str, records: list[dict], alarms: list[dict], noise: list[float],
             steps: int, seed: int, seconds: float, ranks: int = 1) -> dict[str, Any]:
    typical = statistics.median(noise) if noise else 0.0  # the run's typical 2-ulp jitter effect
    for r in records:  # beyond the run's own noise: its step's jitter effect, and never below the typical one
        effect = math.inf if r["effect"] == "inf" else r["effect"]
        r["harmful"] = not effect <= max(r["noise"], typical)
    escaped = [r for r in records if not r["detected"]]
    strong = [r for r in records if r["bit_class"] != "other mantissa"]
    times = [r["detect_s"] for r in records if r["detected"]]
    kernels = dict(built.inner.kernels)
    return {
        "target": target, "ranks": ranks, "device": built.backend.device_name(), "dtype": str(built.dtype).removeprefix("torch."),
        "model": built.inner.architecture, "preset": config.model.preset, "kernels": kernels,
        "attn_impl": kernels.get("attn_impl", kernels.get("attn_implementation")), "seed": seed, "steps": steps,
        "flips": len(records), "seconds": seconds,
        "detected": sum(r["detected"] for r in records),
        "high_bits": {"flips": len(strong), "detected": sum(r["detected"] for r in strong),
                      "rate": _rate(sum(r["detected"] for r in strong), len(strong))},
        "by_bit_class": {k: v for k, v in sorted(_table(records, "bit_class").items(),
                                                 key=lambda kv: BIT_CLASSES.index(kv[0]))},
        "by_op": _table(records, "op"), "by_phase": _table(records, "phase"),
        "high_bits_by_op": _table(strong, "op"),
        "escaped": {"flips": len(escaped), "harmful": sum(r["harmful"] for r in escaped),
                    "harmful_records": [r for r in escaped if r["harmful"]][:20]},
        "false_alarms": {"clean_steps": steps, "jittered_steps": steps, "alarms": len(alarms), "records": alarms[:20]},
        "noise": {"median": typical if noise else None, "max": max(noise) if noise else None},
        "detect_seconds": {"median": statistics.median(times) if times else None, "max": max(times) if times else None,
                           "note": "from the flip to the step's verdict; every detection is in the step it happened"},
        "records": records,
    }


def coverage_stage(work: Workload, target: Backend, settings: Settings) -> StageResult:
    """The qualification's short campaign on the qualification batch, with checksums on: how well a run on
    `target` will be protected. False alarms decide (a checked run could not train there); escapes are shown."""
    st = StageResult("sdc", "SDC coverage")
    refusal = target.checksum_refusal()
    if refusal is not None:
        st.warnings.append(f"the product checksums cannot run on {target.name} ({refusal}): a run there is "
                           f"unprotected")
        st.summary = "not measured: the checks cannot run on this target"
        return st
    raw = work.config.to_dict()
    raw["health"]["checksums"] = raw["health"]["enabled"] = True
    fresh = get_backend(target.name)  # its own fault schedule: the campaign's flips are the only scheduled faults
    checked = dataclasses.replace(work, config=from_dict(raw))
    r = run_campaign(checked.config, fresh, flips=settings.sdc_flips, steps=settings.sdc_steps, seed=0, work=checked)
    hb, esc, fa = r["high_bits"], r["escaped"], r["false_alarms"]
    st.evidence = {k: v for k, v in r.items() if k != "records"}
    st.evidence["escaped"] = {**esc, "harmful_records": esc["harmful_records"][:5]}
    st.summary = (f"{r['detected']}/{r['flips']} flips detected; sign, exponent and top-3 mantissa "
                  f"{hb['detected']}/{hb['flips']}; {esc['harmful']} harmful escaped; {fa['alarms']} false alarm(s) "
                  f"on {fa['clean_steps']} clean and {fa['jittered_steps']} jittered steps")
    if fa["alarms"]:
        first = fa["records"][0]["checks"][0] if fa["records"] and fa["records"][0]["checks"] else {}
        st.find("checksum_false_alarms", f"the product checksums fail on {fa['alarms']} clean step run(s) of "
                f"{target.name} (first: {first.get('op', '?')} {first.get('phase', '')}, off by "
                f"{first.get('discrepancy', float('nan')):.3g} against a bound of "
                f"{first.get('bound', float('nan')):.3g}): its products are not as exact as their dtype, so a checked "
                f"run would flag every step")
    if esc["harmful"]:
        st.warnings.append(f"{esc['harmful']} of {r['flips']} injected flips changed the step beyond its noise and "
                           f"were not detected (see the ops they hit)")
    return st
