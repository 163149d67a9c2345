"""Stage 5, training parity: N real optimizer steps from the same weights and batches on the target and on the
reference, compared against a tolerance band the reference derives from itself.

Band (per step s, for the loss and for each layer group's gradient norm):
    spread_s = |reference_s - perturbed_reference_s|
    width_s  = SAFETY x max(spread_1..s) + FLOOR_ULPS x eps(fp32) x |reference_s|
The perturbed reference is the same run on the same device with every floating-point result of every op moved by
up to NOISE_ULPS ulp at random (and every initial weight by 1 ulp): what a device that rounds or orders its
reductions differently, but correctly, does at every kernel of every step (summing a few hundred terms in another
order changes the result by a few ulp). A training run is chaotic: such differences grow
step by step, and the perturbed run shows how far two equally valid runs drift apart on this model, data and
schedule; a target within SAFETY times that drift is indistinguishable from the reference, one outside it computes
something else. The running max keeps the band from
pinching at a step where the two reference runs happen to cross. The reference curves and spreads are stored as a
golden file (golden.py) and reused. The target is told each step's number (`set_step`), so step-scheduled faults
of an emulated accelerator fire as they would in a real run; a step that raises is recorded and retried once.
"""

from __future__ import annotations

import contextlib
import math
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_map

from turnout.backend import Backend
from turnout.backend.sim_faults import UlpJitter
from turnout.errors import one_line
from turnout.qualify.golden import find_golden, golden_key, save_golden
from turnout.qualify.stage import StageResult, failure_kind
from turnout.qualify.workload import Workload, default_golden_dir
from turnout.train.schedule import lr_at
from turnout.train.watchdog import Watchdog

SAFETY = 8.0  # 4 was too tight: sim:nondeterministic (a correct device, 2-ulp jitter) reached 0.6x of a 4x band
FLOOR_ULPS = 16.0
NOISE_ULPS = 4  # per-op perturbation of the perturbed reference: k x eps with k uniform in -4..4
#: how the perturbed reference is made; part of the golden-file key, so a change never reuses an old spread
PERTURBATION = f"weights-1ulp+op-noise-{NOISE_ULPS}ulp-pool-v1"
EPS = torch.finfo(torch.float32).eps  # losses and norms are fp32 reductions whatever the compute dtype
LAYER_OUTSIDE_SHARE = 0.1  # a layer's grad-norm curve fails when more than this share of its steps leave the band


@dataclass
class Curve:
    """One run: per-step loss, per-layer-group gradient norms, step seconds, and what went wrong."""

    loss: list[float] = field(default_factory=list)
    layers: dict[str, list[float]] = field(default_factory=dict)
    seconds: list[float] = field(default_factory=list)
    incidents: list[dict] = field(default_factory=list)  # {"step", "kind", "error", "retried_ok"}
    aborted: str | None = None

    def to_dict(self) -> dict:
        return {"loss": self.loss, "layers": self.layers, "seconds": self.seconds}


class UlpNoise(TorchDispatchMode):
    """Every non-aliasing floating-point op output moved by up to NOISE_ULPS ulp (UlpJitter, seeded): the
    perturbed reference run. In-place and view results alias their inputs and are left alone."""

    def __init__(self, seed: int):
        super().__init__()
        self.jitter = UlpJitter(seed, NOISE_ULPS, distinct=False)

    @classmethod
    def _should_skip_dynamo(cls) -> bool:
        return False

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func._schema.is_mutable or getattr(func, "is_view", False):
            return out
        return tree_map(self._nudge, out)

    def _nudge(self, t):
        if not isinstance(t, torch.Tensor) or not t.is_floating_point() or t.numel() == 0:
            return t
        return self.jitter(t)


def _perturb(model: torch.nn.Module, seed: int) -> None:
    """Move every weight one ulp up or down, at random (seeded): an equally valid starting point."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            up = torch.rand(p.shape, generator=gen) < 0.5
            toward = torch.where(up, torch.tensor(math.inf), torch.tensor(-math.inf)).to(p.dtype)
            p.copy_(torch.nextafter(p, toward))


def run_curve(work: Workload, backend: Backend, *, perturb: bool = False, watchdog: float | None = None) -> Curve:
    """N optimizer steps of the workload on `backend`; set_step(s) before step s (1-based). A step whose compute
    raises is recorded and run once more (a transient fault passes, a dead device fails twice and ends the run).
    With `watchdog`, a compute or optimizer step running past that many seconds has its (emulated) hang released
    and is recorded as a hang."""
    built = work.build(backend)
    noise: contextlib.AbstractContextManager = contextlib.nullcontext()
    if perturb:
        _perturb(built.inner, work.config.train.seed + 1)
        noise = UlpNoise(work.config.train.seed + 2)
    curve = Curve()
    hung: list[str] = []  # appended by the watchdog's thread while a section hangs, read once it returns

    def release(label: str, step: int, elapsed: float, limit: float) -> None:
        hung.append(label)
        cancel = getattr(backend, "cancel_hang", None)  # only an emulated hang can be released from Python
        if cancel is not None:
            cancel()

    dog = Watchdog(watchdog, release, poll_s=min(0.2, watchdog / 10)).start() if watchdog else None

    def guarded(fn, s: int, what: str):
        hung.clear()
        if dog is not None:
            dog.begin(what, s)
        try:
            with noise:
                out = fn()
        finally:
            if dog is not None:
                dog.end()
        if hung:
            curve.incidents.append({"step": s, "kind": "hang", "error": f"{what} of step {s} ran past "
                                    f"{watchdog:g} s and was released by the watchdog", "retried_ok": None})
        return out

    try:
        for s in range(1, work.settings.steps + 1):
            t0 = time.perf_counter()
            result, failed = None, None
            for _attempt in (0, 1):
                backend.set_step(s)
                try:
                    result = guarded(lambda: built.runner.compute([work.batches[s - 1]]), s, "the compute")
                    break
                except Exception as e:  # noqa: BLE001 - the device's failure is the evidence
                    built.runner.discard()
                    failed = {"step": s, "kind": failure_kind(e), "error": one_line(e), "retried_ok": False}
                    curve.incidents.append(failed)
            if result is None:
                curve.aborted = f"step {s} failed twice: {failed['error']}"
                return curve
            if failed is not None:
                failed["retried_ok"] = True
            try:
                guarded(lambda: built.runner.apply(result, lr_at(s - 1, work.config.train)), s, "the optimizer step")
            except Exception as e:  # noqa: BLE001 - weights may be half-updated: no retry, the run ends here
                curve.incidents.append({"step": s, "kind": failure_kind(e), "error": f"optimizer step: {one_line(e)}",
                                        "retried_ok": False})
                curve.aborted = f"the optimizer step of step {s} failed: {one_line(e)}"
                return curve
            curve.seconds.append(time.perf_counter() - t0)
            curve.loss.append(result.loss)
            for g, v in result.layer_grad_norms.items():
                curve.layers.setdefault(g, []).append(v)
    finally:
        if dog is not None:
            dog.stop()
    return curve


def band(ref: list[float], other: list[float]) -> list[float]:
    """Half-widths of the tolerance band around `ref` from its spread against the perturbed run `other`."""
    widths, env = [], 0.0
    for a, b in zip(ref, other):
        d = abs(a - b)
        env = max(env, d if math.isfinite(d) else env)
        widths.append(SAFETY * env + FLOOR_ULPS * EPS * abs(a))
    return widths


def _reference(work: Workload, reference: Backend, dtype: str, log) -> tuple[dict, dict]:
    """The reference curves + spreads, from a golden file when one matches, else computed (and stored)."""
    s = work.settings
    key, ident = golden_key({**work.key(), "perturbation": PERTURBATION}, reference.name, dtype)
    folder = Path(s.golden_dir).expanduser() if s.golden_dir else default_golden_dir()
    if s.use_golden:
        hit = find_golden(folder, reference.name, key, shipped=s.shipped_golden)
        if hit is not None:
            return hit[0], {"reused": True, "path": str(hit[1]), "key": key}
    if log is not None:
        log(f"no golden curve for this workload: running the reference {reference.name} twice ({s.steps} steps "
            f"each, the second under per-op ulp noise)")
    a = run_curve(work, reference)
    b = run_curve(work, reference, perturb=True)
    if a.aborted or b.aborted:
        raise RuntimeError(f"the reference {reference.name} failed: {a.aborted or b.aborted}")
    data = {"reference": a.to_dict(), "perturbed": b.to_dict(), "steps": s.steps}
    info = {"reused": False, "key": key, "path": None}
    if s.use_golden:
        try:
            info["path"] = str(save_golden(folder, reference.name, key, ident, data))
        except OSError as e:
            info["save_error"] = str(e)
    return data, info


def training_parity(work: Workload, target: Backend, reference: Backend, dtype: str, log=None) -> StageResult:
    """The training-parity stage."""
    st = StageResult("training", "Training parity")
    ref, golden = _reference(work, reference, dtype, log)
    if log is not None and golden["reused"]:
        log(f"reference curve reused from {golden['path']}")
    t = run_curve(work, target, watchdog=work.settings.hang_timeout)
    r_loss, p_loss = ref["reference"]["loss"], ref["perturbed"]["loss"]
    w_loss = band(r_loss, p_loss)
    n = len(t.loss)
    steps = list(range(1, work.settings.steps + 1))
    ev = st.evidence
    ev.update({"steps": steps, "golden": golden, "target_loss": t.loss, "reference_loss": r_loss,
               "perturbed_loss": p_loss, "band": w_loss, "incidents": t.incidents, "completed": n,
               "target_seconds": t.seconds, "reference_seconds": ref["reference"].get("seconds", []),
               "rule": f"|target - reference| <= {SAFETY:g} x running max |reference - 1-ulp-perturbed reference| "
                       f"+ {FLOOR_ULPS:g} ulp(fp32) x |reference|"})
    for inc in t.incidents:
        what = "device lost" if inc["kind"] == "device_error" else inc["kind"].replace("_", " ")
        # the device lost or hung under training load, after the forward-only stages ran clean on it
        kind = "missing_training_op" if inc["kind"] == "missing_op" else "training_device_error" \
            if inc["kind"] in ("device_error", "hang") else inc["kind"]
        st.find(kind, f"{what} during training parity at step {inc['step']} on {target.name}: {inc['error']}"
                      + (" (a re-run of the step succeeded)" if inc.get("retried_ok") else ""))
    outside = [i for i in range(n) if not abs(t.loss[i] - r_loss[i]) <= w_loss[i]]
    nonfinite = [i + 1 for i in range(n) if not math.isfinite(t.loss[i]) and math.isfinite(r_loss[i])]
    ev["loss_outside"] = [i + 1 for i in outside]
    ev["max_excess"] = max((abs(t.loss[i] - r_loss[i]) / w_loss[i] for i in range(n) if w_loss[i] > 0
                            and math.isfinite(t.loss[i])), default=0.0)
    if nonfinite:
        st.find("corrupt", f"the loss on {target.name} became non-finite at step {nonfinite[0]} while the "
                           f"reference's stayed finite")
    elif outside:
        i = outside[0]
        st.find("training_parity", f"loss on {target.name} leaves the reference band at step {i + 1} "
                                   f"(|{t.loss[i]:.6g} - {r_loss[i]:.6g}| = {abs(t.loss[i] - r_loss[i]):.3g} > "
                                   f"{w_loss[i]:.3g}); {len(outside)} of {n} steps outside, up to "
                                   f"{ev['max_excess']:.3g}x the band")
    _layers(st, t, ref, target)
    st.summary = _summary(t, len(steps), len(outside), ev, golden)
    if t.seconds:
        ev["target_step_seconds"] = statistics.median(t.seconds)
    return st


def _summary(t: Curve, total: int, outside: int, ev: dict, golden: dict) -> str:
    """The stage's line: first what failed it besides the loss band (a run that did not complete, a device error,
    a hang, gradient norms), then band figures for the steps that ran, never for steps that did not."""
    n = len(t.loss)
    parts = [f"did not complete: {t.aborted}"] if t.aborted else [_incident(i) for i in t.incidents[:3]]
    if not t.aborted and len(t.incidents) > 3:
        parts.append(f"{len(t.incidents) - 3} more incident(s)")
    bad = [r["group"] for r in ev["layers"] if r["fail"]]
    if bad:
        parts.append(f"gradient norms leave the band in {', '.join(bad)}")
    if n:
        ran = f"{n} steps" if n == total else f"{n} of {total} steps ran"
        parts.append(f"{ran}; loss within the band at {n - outside} of {n} steps (max {ev['max_excess']:.2g}x "
                     f"the band)")
    else:
        parts.append(f"none of {total} steps ran")
    parts.append("reference curve " + (f"reused from {Path(golden['path']).name}" if golden["reused"] else "computed"))
    return "; ".join(parts)


def _incident(i: dict) -> str:
    """'device error at step 25 (its re-run passed)', 'hang at step 3 (released by the watchdog)'."""
    note = " (released by the watchdog)" if i["kind"] == "hang" else ""
    note = " (its re-run passed)" if i.get("retried_ok") else note
    return f"{i['kind'].replace('_', ' ')} at step {i['step']}{note}"


def _layers(st: StageResult, t: Curve, ref: dict, target: Backend) -> None:
    """Per-layer gradient-norm curves against their own bands."""
    rows = []
    r_layers, p_layers = ref["reference"]["layers"], ref["perturbed"]["layers"]
    for g, r in r_layers.items():
        tv = t.layers.get(g, [])
        w = band(r, p_layers.get(g, r))
        n = len(tv)
        out = [i for i in range(n) if not abs(tv[i] - r[i]) <= w[i]]
        excess = max((abs(tv[i] - r[i]) / w[i] for i in range(n) if w[i] > 0 and math.isfinite(tv[i])), default=0.0)
        rows.append({"group": g, "target": tv, "reference": r, "band": w, "outside": len(out), "max_excess": excess,
                     "fail": n > 0 and len(out) > LAYER_OUTSIDE_SHARE * n})
    st.evidence["layers"] = rows
    bad = [r for r in rows if r["fail"]]
    if bad:
        st.find("training_parity", f"gradient norms on {target.name} leave the reference band in "
                                   f"{', '.join(r['group'] for r in bad)} "
                                   f"(worst {max(r['max_excess'] for r in bad):.3g}"
                                   f"x the band)")
