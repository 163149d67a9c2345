"""A guarded step: measure, judge, diagnose by re-execution, and decide what happens to the step.

Decisions (each one an event in RUN/events.jsonl with its evidence):
- healthy: apply.
- device error: retry in place; repeated errors within a window make the target untrusted.
- non-finite, or a spike that persisted `spike_patience` steps: re-run in place. A different result is a
  transient fault (hardware: counted; the clean re-run is applied). The same result is re-run on the reference
  target: agreement means a real numerical problem (roll back and skip batches); disagreement means the target
  computes wrongly (silent data corruption: counted, and the reference's step is applied where possible).
- a product whose checksum failed (health.checksums): re-run in place, naming each product's module. A re-run
  that passes every check means a transient fault (counted; the clean re-run is applied); one that fails again
  means the target computes wrongly (counted; the reference's step is applied where possible).
- every `verify_interval` steps a healthy step is re-run in place anyway, so quiet corruption shows; a mismatch
  is arbitrated by the reference, and the result that agrees with it is applied.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from turnout.config import HealthSection
from turnout.errors import one_line
from turnout.train.events import EventLog
from turnout.train.health import HealthMonitor, TargetUntrusted, TrustPolicy
from turnout.train.rerun import GradSnapshot, Reexecutor, relative_difference
from turnout.train.step import StepResult, StepRunner

# exceptions that are the program's own bugs, not the device's: never retried or blamed on the target
PROGRAM_ERRORS = (TypeError, ValueError, AssertionError, AttributeError, KeyError, IndexError)


@dataclass
class Outcome:
    """What to do with a step: apply the gradients now in `.grad` (reporting `result`), or roll back."""

    result: StepResult
    apply: bool = True
    rollback: str = ""  # reason, when the step must not be applied and the run goes back to a checkpoint


class Healer:
    """Runs one step under the health monitor and the trust policy."""

    def __init__(self, runner: StepRunner, h: HealthSection, events: EventLog, sharded: bool = False,
                 reexec: Reexecutor | None = None):
        self.runner, self.h, self.events = runner, h, events
        self.monitor = HealthMonitor(h)
        self.policy = TrustPolicy(h)
        self.reexec = reexec if reexec is not None else Reexecutor(runner, h.reference)
        self.sharded = sharded
        self._told_unchecked = False

    # ---- measuring, with device-error retries ----------------------------------------------------------
    def compute(self, step: int, batches, rng: dict[str, torch.Tensor]) -> StepResult:
        backend = self.runner.backend
        for attempt in range(self.h.device_error_retries + 1):
            try:
                result = self.runner.compute(batches)
                if attempt:
                    self.events.emit("rerun", step, f"retried in place after a device error: attempt {attempt + 1} "
                                     f"succeeded", where="in_place", attempt=attempt + 1)
                return result
            except PROGRAM_ERRORS:
                raise
            except Exception as e:  # noqa: BLE001 - a target's failure (device lost, missing kernel, ...)
                self.runner.discard()
                detail = one_line(e, limit=300)
                self.events.emit("device_error", step, detail, attempt=attempt + 1)
                reason = self.policy.device_error(step)
                if reason:
                    raise TargetUntrusted(reason, "device_error") from e
                backend.set_rng_state(rng)
                backend.set_step(step)
        raise TargetUntrusted(f"step {step} failed {self.h.device_error_retries + 1} time(s) in a row", "device_error")

    # ---- the guarded step -------------------------------------------------------------------------------
    def run(self, step: int, batches) -> Outcome:
        """Measure step `step` on this rank's micro-batches and decide; gradients of the chosen result are left in
        `.grad` when the outcome says apply."""
        rng = self.runner.backend.get_rng_state()
        result = self.compute(step, batches, rng)
        if not self.h.enabled:
            return Outcome(result)
        rerun = False
        if result.checks is not None and result.checks.unchecked and not self._told_unchecked:
            self._told_unchecked = True
            ops = ", ".join(f"{op} x{n}" for op, n in sorted(result.checks.unchecked.items()))
            self.events.emit("checksums", step, f"{len(result.checks)} products per step are checked; these are not: "
                             f"{ops} (model.overrides.attn_impl = 'blocked' runs attention as checked products)",
                             checked=len(result.checks), unchecked=dict(result.checks.unchecked))
        if result.flagged:
            outcome = self.checksum_mismatch(step, batches, rng, result)
            if not outcome.apply:
                return outcome
            result, rerun = outcome.result, True
        verdict = self.monitor.check(result)
        for kind, detail in verdict.findings:
            suffix = "" if kind == "nan" else f" ({self.monitor.spiking}/{self.h.spike_patience})"
            self.events.emit(kind, step, detail + suffix, loss=result.loss, grad_norm=result.grad_norm)
        if verdict.reject or verdict.rollback:
            return self.diagnose(step, batches, rng, result, "non-finite step" if verdict.reject else
                                 f"{'/'.join(verdict.kinds)} persisted {self.monitor.spiking} steps")
        if self.h.verify_interval and step % self.h.verify_interval == 0 and self.reexec.reference_spec and not rerun:
            result = self.verify(step, batches, rng, result)
        if verdict.ok:  # a pending spike is applied but kept out of the history, so it cannot become normal
            self.monitor.observe(result)
        return Outcome(result)

    def apply(self, step: int, result: StepResult, lr: float) -> torch.Tensor:
        """Apply the step (StepRunner.apply); an optimizer step that failed its check was taken again from the
        saved state: passing then is a transient fault, failing again makes the target untrusted."""
        loads = self.runner.apply(result, lr)
        found = self.runner.optimizer_findings
        if found and found[0]:
            what = "; ".join(f"{w} off by {r:.3g}x its bound" for w, r in found[0][:3])
            what = f"the AdamW step failed {len(found[0])} check(s) at step {step}: {what}"
            evidence = {"checks": [{"tensor": w, "ratio": r} for w, r in found[0][:8]]}
            if len(found) > 1 and not found[1]:
                self._hardware(step, "transient", f"{what}; taken again from the saved state it passes: a transient "
                               f"fault", **evidence)
            else:
                self._hardware(step, "persistent", f"{what}; taken again it fails again", **evidence)
                raise TargetUntrusted(f"step {step}: the optimizer step cannot be computed correctly on this target",
                                      "sdc")
        return loads

    def checksum_mismatch(self, step: int, batches, rng, original: StepResult) -> Outcome:
        """Products of this step failed their checksums (on some rank): re-run in place, naming their modules."""
        found = original.checks.collect() if original.checks is not None else []
        again = self.reexec.in_place(step, batches, rng, locate=True)
        if again.checks is not None:  # the re-run runs the same products in the same order
            for m in found:
                if m.call < len(again.checks.calls) and again.checks.calls[m.call][0] == m.op:
                    m.module = again.checks.calls[m.call][3]
        what = "; ".join(m.describe() for m in found[:3]) or "on another rank"
        if len(found) > 3:
            what += f"; and {len(found) - 3} more"
        what = f"{original.flagged} checksum(s) failed at step {step}: {what}"
        evidence = {"checks": [m.to_dict() for m in found[:8]], "flagged": original.flagged}
        if found and self.runner.world > 1:  # other ranks write only rank-local kinds: say what this one saw
            self.events.emit("checksum", step, what, **evidence)
        if not again.flagged:
            self._hardware(step, "transient", f"{what}; an in-place re-run passes every check: a transient fault",
                           difference=relative_difference(original, again), **evidence)
            self.events.emit("rerun", step, "applied the clean in-place re-run", where="in_place")
            return Outcome(again)
        why = f"{what}; an in-place re-run fails {again.flagged} check(s) again"
        if not self.reexec.reference_spec:
            self._hardware(step, "persistent", f"{why} (no reference to consult)", **evidence)
            return Outcome(again, apply=False, rollback=f"{why}: the target computes wrongly")
        ref, diff_ref = self._consult_reference(step, batches, rng, again)
        self._hardware(step, "persistent", f"{why}: the target computes wrongly", difference=diff_ref, **evidence)
        if self._apply_reference(step, ref):
            return Outcome(ref)
        return Outcome(again, apply=False, rollback=f"{why}: the target computes wrongly and the reference's step "
                       f"cannot be applied")

    def diagnose(self, step: int, batches, rng, original: StepResult, why: str) -> Outcome:
        """Re-run a rejected step in place, then on the reference, and act on what differs."""
        again = self.reexec.in_place(step, batches, rng)
        diff = relative_difference(original, again)
        self.events.emit("rerun", step, f"re-ran in place: relative difference {diff:.3g}", where="in_place",
                         difference=diff, loss=again.loss, grad_norm=again.grad_norm)
        if diff > self.h.rerun_rtol and self.monitor.healthy(again):
            self._hardware(step, "transient", f"{why}; an in-place re-run differs by {diff:.3g} and is healthy: a "
                           f"transient fault", difference=diff)
            self.events.emit("rerun", step, "applied the clean in-place re-run", where="in_place")
            self.monitor.reset()
            self.monitor.observe(again)
            return Outcome(again)
        if diff > self.h.rerun_rtol:  # unhealthy again, differently: a recurring fault, or noise on a real problem
            why += f"; an in-place re-run is unhealthy too (differs by {diff:.3g})"
            original = again
        if not self.reexec.reference_spec:
            return Outcome(original, apply=False, rollback=f"{why}; reproducible in place (no reference to consult)")
        ref, diff_ref = self._consult_reference(step, batches, rng, original)
        if diff_ref <= self.h.reference_rtol:
            return Outcome(original, apply=False, rollback=f"{why}; reproducible in place and on "
                           f"{self.reexec.reference_spec} (difference {diff_ref:.3g}): a numerical problem in model "
                           f"or data")
        self._hardware(step, "persistent", f"{why}; reproducible in place but {self.reexec.reference_spec} "
                       f"computes it differently (relative difference {diff_ref:.3g}): the target computes wrongly",
                       difference=diff_ref)
        if self._apply_reference(step, ref):
            self.monitor.reset()
            self.monitor.observe(ref)
            return Outcome(ref)
        return Outcome(original, apply=False, rollback=f"{why}; the target computes wrongly and the reference's "
                       f"step cannot be applied")

    def verify(self, step: int, batches, rng, original: StepResult) -> StepResult:
        """Re-run a healthy step in place; on a mismatch keep whichever run the reference agrees with."""
        snap = GradSnapshot(self.runner)
        bits = self.runner.grad_checksum() if self.h.rerun_bitwise else None
        again = self.reexec.in_place(step, batches, rng)
        diff = relative_difference(original, again)
        bits_differ = bits is not None and self.runner.grad_checksum() != bits
        if diff <= self.h.rerun_rtol and not bits_differ:
            return again
        how = f"differs by {diff:.3g}" if diff > self.h.rerun_rtol else \
            f"has bit-different gradients (loss and norms within {self.h.rerun_rtol:g})"
        ref = self.reexec.on_reference(batches, rng)
        d_orig, d_again = relative_difference(original, ref), relative_difference(again, ref)
        self.events.emit("rerun", step, f"verification re-run {how}; vs {self.reexec.reference_spec}:"
                         f" first run {d_orig:.3g}, re-run {d_again:.3g}", where="verify", difference=diff,
                         first_vs_reference=d_orig, rerun_vs_reference=d_again, bits_differ=bits_differ)
        if d_again <= self.h.reference_rtol and d_again <= d_orig:
            self._hardware(step, "transient", f"verification: the first run of step {step} was corrupted "
                           f"(the re-run {how}; the re-run matches the reference)", difference=diff)
            self.events.emit("rerun", step, "kept the re-run (it matches the reference)", where="verify")
            return again
        if d_orig <= self.h.reference_rtol:
            snap.restore(self.runner)
            self._hardware(step, "transient", f"verification: the re-run of step {step} was corrupted "
                           f"(the first run matches the reference)", difference=diff)
            self.events.emit("rerun", step, "kept the first run (it matches the reference)", where="verify")
            return original
        self._hardware(step, "persistent", f"verification: neither run of step {step} matches the reference "
                       f"({d_orig:.3g}, {d_again:.3g})", difference=min(d_orig, d_again))
        if not self.sharded:
            self.reexec.reference_grads_into_target()
            self.events.emit("rerun", step, f"applied {self.reexec.reference_spec}'s result for this step",
                             where=self.reexec.reference_spec)
            return ref
        raise TargetUntrusted(f"step {step} cannot be computed correctly on this target", "sdc")

    def _consult_reference(self, step: int, batches, rng, against: StepResult) -> tuple[StepResult, float]:
        """The step on the reference target, and its relative difference from `against` (an event says both)."""
        ref = self.reexec.on_reference(batches, rng)
        diff_ref = relative_difference(against, ref)
        self.events.emit("rerun", step, f"re-ran on {self.reexec.reference_spec}: relative difference {diff_ref:.3g}",
                         where=self.reexec.reference_spec, difference=diff_ref, loss=ref.loss, grad_norm=ref.grad_norm)
        return ref, diff_ref

    def _apply_reference(self, step: int, ref: StepResult) -> bool:
        """Put the reference's gradients in place of the target's, when its result is healthy and the model is not
        sharded; says whether it did."""
        if not self.monitor.healthy(ref) or self.sharded:
            return False
        self.reexec.reference_grads_into_target()
        self.events.emit("rerun", step, f"applied {self.reexec.reference_spec}'s result for this step",
                         where=self.reexec.reference_spec)
        return True

    def _hardware(self, step: int, classification: str, detail: str, **evidence) -> None:
        """An SDC finding: record it and count it toward failover (raises TargetUntrusted past the limit)."""
        self.events.emit("sdc", step, detail, classification=classification, **evidence)
        reason = self.policy.fault(step)
        if reason:
            raise TargetUntrusted(reason, "sdc")
