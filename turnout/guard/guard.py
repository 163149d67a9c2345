"""`Guard`: turnout's step protection for a training loop it does not own.

    guard = Guard(model, optimizer, target="sim:flaky", run_dir="runs/mine", lr_scheduler=sched)
    for i, batch in enumerate(loader):
        if i < guard.batches_seen:         # a resumed run continues where the record says
            continue
        out = guard.step(lambda m, b: loss_fn(m, b), batch)

Each `step` runs the closure (forward + backward) under the target's checks: non-finite values, loss and
gradient-norm spikes, checksummed matrix products, the AdamW step's check, device errors, a hang watchdog. A healthy
step is applied (optimizer, then scheduler); a suspect one is re-run in place and on the reference target, exactly
as `turnout train` does (turnout.train.heal): a transient fault applies the clean re-run, a real numerical problem
rolls back to the guard's last good state and asks the loop to skip batches, a target that computes wrongly or
keeps failing raises `TargetUntrusted` after a checkpoint another process can resume from on another target.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
import torch.distributed as dist

from turnout.backend import Backend, get_backend
from turnout.backend.spec import dtype_name
from turnout.ckpt import Checkpointer, Manifest, encode_rng, read_manifest
from turnout.config import ConfigError, HealthSection, from_dict
from turnout.errors import TargetError, one_line
from turnout.report.jsonl import JsonlWriter
from turnout.report.rundir import RunDir
from turnout.train.events import EventLog
from turnout.train.fingerprint import numerics_fingerprint
from turnout.train.heal import Healer
from turnout.train.health import EXIT_HANG, EXIT_UNTRUSTED, RunUnrecoverable, TargetUntrusted
from turnout.train.step import StepResult
from turnout.train.watchdog import Watchdog

from .runner import ClosureReexecutor, ClosureRunner, Work, takes_model
from .state import Snapshot, Snapshots, fingerprint_difference, model_fingerprint, scheduler_state

_log = logging.getLogger("turnout.guard")
_QUIET_KINDS = ("checkpoint", "start", "resume", "end", "checksums")  # logged at INFO; every other kind is a WARNING


@dataclass
class GuardStep:
    """What one `Guard.step` did. `skip_batches`: drop that many of the loop's next batches (after a rollback, the
    data around the problem is skipped, as PaLM did)."""

    step: int  # optimizer steps applied so far (after a rollback: the step it went back to)
    loss: float
    applied: bool
    grad_norm: float = float("nan")
    rolled_back_to: int | None = None
    skip_batches: int = 0
    events: list[dict] = field(default_factory=list)  # what this call recorded (kinds as in RUN/events.jsonl)

    @property
    def skip_data(self) -> bool:
        return self.skip_batches > 0


class _Events(EventLog):
    """The run's events.jsonl (when there is a run folder), a log line per event, and the events of this call."""

    def __init__(self, path: Path | None, target: str, rank: int | None):
        super().__init__(path or Path(os.devnull), target, enabled=path is not None, rank=rank)
        self.recent: list[dict] = []

    def emit(self, kind: str, step: int, detail: str, **evidence: Any) -> dict:
        event = super().emit(kind, step, detail, **evidence)
        self.recent.append(event)
        if self.rank is None:
            _log.log(logging.INFO if kind in _QUIET_KINDS else logging.WARNING, "[%s] step %d: %s", kind, step, detail)
        return event


def _health(health: HealthSection | dict | None, reference: str | None) -> HealthSection:
    """A checked health section (the same validation as a config file's [health])."""
    raw = asdict(health) if isinstance(health, HealthSection) else dict(health or {})
    if reference is not None:
        raw["reference"] = reference
    try:
        return from_dict({"health": raw}).health
    except ConfigError as e:
        raise ValueError(str(e)) from None


class Guard:
    """Guards the optimizer steps of a user's loop (see the module docstring).

    model, optimizer: any `nn.Module` (plain, a transformers model, DDP-wrapped) and the optimizer over its
        parameters. target: a target spec (`cuda`, `sim:flaky`, ...); None reads $TURNOUT_TARGET, else the best
        present accelerator. reference: the target that arbitrates suspect steps (default: health.reference,
        `cpu`; "" for none). run_dir: where events.jsonl, metrics.jsonl, report.html and checkpoints go (None: in
        memory only, nothing written). health: a HealthSection or a dict of its fields. lr_scheduler: stepped
        after each applied step, rolled back with the weights. grad_clip: clip the global gradient norm (0: the
        closure's business). snapshot_every / snapshots: in-memory good states for rollbacks (0: none, roll back to
        checkpoints only). checkpoint_every: DCP checkpoints in run_dir (default 50 with a run_dir). resume: load
        the newest verified checkpoint in run_dir. on_hang: called from the watchdog thread with (step, elapsed,
        timeout) when a step never returns; the default records it and ends the process with exit code 87.
    """

    def __init__(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, *, target: str | Backend | None = None,
                 reference: str | None = None, run_dir: str | Path | None = None,
                 health: HealthSection | dict | None = None, lr_scheduler: Any = None, grad_clip: float = 0.0,
                 snapshot_every: int = 10, snapshots: int = 2, checkpoint_every: int | None = None,
                 checkpoint_keep: int = 3, resume: bool = True,
                 on_hang: Callable[[int, float, float], None] | None = None):
        self.h = _health(health, reference)
        self.backend = target if isinstance(target, Backend) else get_backend(target)
        ok, why = self.backend.availability()
        if not ok:
            raise TargetError(f"target {self.backend.name} is not available: {why}")
        self.model, self.optimizer, self.lr_scheduler = model, optimizer, lr_scheduler
        self._check_optimizer()
        self._move_model()
        scheduler_state(lr_scheduler)  # a scheduler whose state a manifest cannot hold is refused now
        checksums = self.h.enabled and self.h.checksums
        if checksums and self.backend.checksum_refusal():
            raise TargetError(f"health.checksums: {self.backend.name} cannot verify products by checksums "
                              f"({self.backend.checksum_refusal()}); pass health={{'checksums': False}} to go without")
        self.rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
        self.world = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
        self.run = RunDir(run_dir) if run_dir is not None else None
        main = self.rank == 0
        if self.run is not None and main:
            self.run.root.mkdir(parents=True, exist_ok=True)
        self.events = _Events(self.run.events if self.run else None, self.backend.name, None if main else self.rank)
        self.metrics = JsonlWriter(self.run.metrics if self.run else Path(os.devnull), enabled=bool(self.run) and main)
        self.runner = ClosureRunner(model, optimizer, self.backend, grad_clip=grad_clip, checksums=checksums)
        self.reexec = ClosureReexecutor(self.runner, self.h.reference)
        self.healer = Healer(self.runner, self.h, self.events, sharded=self.runner.sharded, reexec=self.reexec)
        self.snapshot_every = snapshot_every
        self.snapshots = Snapshots(snapshots if snapshot_every else 0)
        self.checkpoint_every = (50 if self.run else 0) if checkpoint_every is None else checkpoint_every
        if self.checkpoint_every and self.run is None:
            raise ValueError("checkpoint_every: checkpoints need a run_dir to go to")
        self.ckpt = Checkpointer(self.run.root, keep=checkpoint_keep, on_set_aside=self._set_aside) \
            if self.run else None
        self.step_count = 0  # optimizer steps applied
        self.batches_seen = 0  # the loop's batches consumed (each step's, and those it was told to skip)
        self.rollbacks: list[dict] = []
        self.lr_scale = 1.0
        self._batch_of: dict[int, int] = {}  # step -> index of the batch it trained on (recent steps)
        self._closure_form: bool | None = None
        self.resumed_from: Path | None = None
        if resume and self.ckpt is not None:
            self._resume()
        if self.run is not None and main:
            fp = model_fingerprint(model)
            self.run.note_start(self.backend.name, model={"class": fp["class"]}, world_size=self.world,
                                params=sum(p.numel() for p in model.parameters()))
        self.events.emit("start", self.step_count, f"guarding {model_fingerprint(model)['class']} on "
                         f"{self.backend.name} x{self.world} (reference: {self.h.reference or 'none'}; checksums "
                         f"{'on' if checksums else 'off'})", world_size=self.world)
        self.snapshots.add(Snapshot.take(self.step_count, self.batches_seen, model, optimizer, lr_scheduler))
        self._on_hang = on_hang
        self.watchdog = Watchdog(self.h, self._hang)
        if self.h.enabled:
            self.watchdog.start()
        self._closed = False
        self._ended_by: tuple[str, str] | None = None  # ('untrusted' | 'failed', why) once a step raised so

    # ---- checks before any step ----------------------------------------------------------------------
    def _check_optimizer(self) -> None:
        ours = {id(p) for p in self.model.parameters()}
        theirs = [p for g in self.optimizer.param_groups for p in g["params"]]
        foreign = sum(id(p) not in ours for p in theirs)
        if foreign:
            raise ValueError(f"the optimizer holds {foreign} of {len(theirs)} parameter(s) that are not the model's: "
                             f"build it over model.parameters() of the model given to the guard")
        if not theirs:
            raise ValueError("the optimizer holds no parameters")

    def _move_model(self) -> None:
        device = self.backend.device()
        if all(p.device == device for p in self.model.parameters()):
            return
        if self.optimizer.state:
            raise TargetError(f"the model is on {next(self.model.parameters()).device} and its optimizer already "
                              f"has state; move the model to {device} ({self.backend.name}) before building the "
                              f"optimizer, or give the guard a fresh one")
        try:
            self.model.to(device)
        except Exception as e:  # noqa: BLE001 - a target that cannot hold the model
            raise TargetError(f"cannot move the model to {self.backend.name}: {one_line(e)}") from None

    @property
    def device(self) -> torch.device:
        """Where the model lives: a closure without arguments moves its batch here itself."""
        return self.backend.device()

    # ---- the step ------------------------------------------------------------------------------------
    def step(self, closure: Callable[..., Any], batch: Any = None) -> GuardStep:
        """Run one guarded optimizer step. `closure()` or `closure(model, batch)` runs forward and backward and
        returns the scalar loss (a closure that returns the loss without backward gets it run here). With the
        two-argument form the guard moves `batch` to the device and can re-run the step on a reference on another
        device. Raises TargetUntrusted (after a checkpoint) and RunUnrecoverable (rollbacks exhausted)."""
        form = takes_model(closure)
        if form and batch is None:
            raise ValueError("the step closure takes (model, batch): pass the batch, guard.step(closure, batch)")
        work = Work(closure, batch, form)
        if self._closure_form is None and self.h.reference and not self.reexec.usable_for(work):
            self.events.emit("checksums", self.step_count + 1, f"the reference {self.h.reference} is another "
                             f"device than {self.backend.name}: a closure without arguments cannot run there, so "
                             f"suspect steps are judged by in-place re-runs only (pass closure(model, batch))")
        self._closure_form = form
        self.reexec.reference_spec = self.reexec.usable_for(work)
        self.events.recent = []
        step = self.step_count + 1
        self._batch_of[step] = self.batches_seen
        self._batch_of.pop(step - 512, None)
        self.batches_seen += 1
        self.backend.set_step(step)
        self.runner.begin()
        t0 = time.perf_counter()
        applying = False
        self.watchdog.begin("step", step)
        try:
            outcome = self.healer.run(step, work)
            if outcome.rollback:
                self.runner.discard()
                onset = step - max(self.healer.monitor.spiking - 1, 0)
                return self._rollback(onset, outcome.rollback, outcome.result)
            applying = True
            self.healer.apply(step, outcome.result, 0.0)
            applying = False
            if self.lr_scheduler is not None:
                self.lr_scheduler.step()
        except TargetUntrusted as e:
            self._untrusted(step, e, weights_touched=applying)
            raise
        except RunUnrecoverable as e:
            self.events.emit("unrecoverable", step, str(e))
            self._ended_by = ("failed", f"unrecoverable at step {step}: {e}")
            self._write_report()
            raise
        finally:
            self.watchdog.end()
        self.step_count = step
        self._record(outcome.result, time.perf_counter() - t0)
        if self.snapshot_every and step % self.snapshot_every == 0:
            self.snapshots.take(step, self.batches_seen, self.model, self.optimizer, self.lr_scheduler)
        if self.checkpoint_every and step % self.checkpoint_every == 0:
            self.save()
        return GuardStep(step, outcome.result.loss, True, outcome.result.grad_norm, events=self.events.recent)

    def _record(self, r: StepResult, seconds: float) -> None:
        lr = self.optimizer.param_groups[0].get("lr")
        self.metrics.write({"kind": "train", "step": self.step_count, "time": time.time(),
                            "target": self.backend.name, "loss": r.loss, "grad_norm": r.grad_norm,
                            "grad_norm_layers": r.layer_grad_norms, "lr": float(lr) if lr is not None else None,
                            "step_time": seconds, "samples": self.batches_seen})

    # ---- going back ----------------------------------------------------------------------------------
    def _rollback(self, onset: int, reason: str, result: StepResult) -> GuardStep:
        """Back to the newest good state before `onset` (memory, else a checkpoint), past the onset's data."""
        h = self.h
        if len(self.rollbacks) >= h.max_rollbacks:
            raise RunUnrecoverable(f"step {onset}: {reason}; {len(self.rollbacks)} rollbacks already "
                                   f"(health.max_rollbacks={h.max_rollbacks})")
        snap = self.snapshots.newest(before_step=onset)
        if snap is not None:
            snap.restore(self.model, self.optimizer, self.lr_scheduler)
            to_step, where = snap.step, f"the in-memory state of step {snap.step}"
        else:
            folder = self.ckpt.newest(before_step=onset) if self.ckpt else None
            if folder is None:
                raise RunUnrecoverable(f"step {onset}: {reason}; no good state before it to roll back to")
            to_step, where = self._load(folder).step, folder.name
        near = max(self.snapshot_every, self.checkpoint_every, h.skip_batches, 1)
        recurs = any(abs(r["onset"] - onset) <= near for r in self.rollbacks)
        self.rollbacks.append({"onset": onset, "to_step": to_step, "skip": True})
        self.events.emit("rollback", onset, f"{reason}; rolled back to {where}", to_step=to_step,
                         from_step=self.step_count + 1)
        resume_at = self._batch_of.get(onset, self.batches_seen - 1) + h.skip_batches
        skip = max(resume_at - self.batches_seen, 0)
        if skip:
            self.events.emit("skip_batches", to_step, f"the loop is asked to skip its next {skip} batches (the "
                             f"onset's batch and {h.skip_batches - 1} after it are not trained on)", batches=skip)
        if recurs:
            self._cut_lr(to_step, onset)
        self.batches_seen += skip
        self.step_count = to_step
        self.snapshots.drop_after(to_step)
        self._batch_of = {}
        self.healer.monitor.reset()
        return GuardStep(to_step, result.loss, False, result.grad_norm, rolled_back_to=to_step, skip_batches=skip,
                         events=self.events.recent)

    def _cut_lr(self, step: int, onset: int) -> None:
        cut = self.h.lr_cut
        self.lr_scale *= cut
        for g in self.optimizer.param_groups:
            g["lr"] = g["lr"] * cut
        if self.lr_scheduler is not None and hasattr(self.lr_scheduler, "base_lrs"):
            self.lr_scheduler.base_lrs = [b * cut for b in self.lr_scheduler.base_lrs]
        self.events.emit("lr_cut", step, f"problem recurred near step {onset}: learning rate x{cut:g} (now "
                         f"x{self.lr_scale:.3g})", factor=cut, lr_scale=self.lr_scale)

    # ---- checkpoints ---------------------------------------------------------------------------------
    def fingerprint(self) -> dict:
        """The numerics fingerprint (turnout.train.fingerprint) of this model on this target, as `turnout train`
        writes into its checkpoints: the dtype is the model's floating-point parameters'."""
        dtype = next((p.dtype for p in self.model.parameters() if p.is_floating_point()), torch.float32)
        return numerics_fingerprint(self.model, self.backend, dtype_name(dtype))

    def manifest(self) -> Manifest:
        return Manifest(step=self.step_count, samples=self.batches_seen, model_args=model_fingerprint(self.model),
                        fingerprint=self.fingerprint(),
                        config={"health": asdict(self.h)}, target=self.backend.name, world_size=self.world,
                        rng=encode_rng(self.backend.get_rng_state()),
                        extra={"guard": {"batches": self.batches_seen, "lr_scale": self.lr_scale,
                                         "lr_scheduler": scheduler_state(self.lr_scheduler)},
                               "rollbacks": self.rollbacks, "health": self.healer.monitor.state(),
                               "trust": {self.backend.name: self.healer.policy.state()}})

    def save(self) -> Path:
        """Write a checkpoint of the current state to run_dir/checkpoints (every rank calls it)."""
        if self.ckpt is None:
            raise ValueError("Guard.save: this guard has no run_dir to write checkpoints to")
        t0 = time.time()
        folder = self.ckpt.save(self.model, self.optimizer, self.manifest())
        self.events.emit("checkpoint", self.step_count, f"saved {folder.name}", path=str(folder),
                         seconds=round(time.time() - t0, 3), samples=self.batches_seen)
        return folder

    def _load(self, folder: Path) -> Manifest:
        m = read_manifest(folder)
        why = fingerprint_difference(m.model_args, model_fingerprint(self.model))
        if why:
            raise ValueError(f"{folder}: holds another model ({why}); give the guard another run_dir")
        m = self.ckpt.load(folder, self.model, self.optimizer)
        g = m.extra.get("guard", {})
        if self.lr_scheduler is not None and g.get("lr_scheduler") is not None:
            self.lr_scheduler.load_state_dict(g["lr_scheduler"])
        return m

    def _resume(self) -> None:
        folder = self.ckpt.newest()
        if folder is None:
            return
        m = self._load(folder)
        self.step_count, self.batches_seen = m.step, int(m.extra.get("guard", {}).get("batches", m.samples))
        self.lr_scale = float(m.extra.get("guard", {}).get("lr_scale", 1.0))
        self.rollbacks = list(m.extra.get("rollbacks", []))
        self.healer.monitor.load_state(m.extra.get("health", {}))
        self.healer.policy.load_state(m.extra.get("trust", {}).get(self.backend.name, {}))
        if m.rng:
            self.backend.set_rng_state(m.rng_tensors())
        self.resumed_from = folder
        self.events.emit("resume", m.step, f"resumed from {folder.name} (written on {m.target}, world size "
                         f"{m.world_size}) after {self.batches_seen} batches", path=str(folder), from_target=m.target,
                         from_world_size=m.world_size, samples=self.batches_seen)

    def _set_aside(self, folder: Path, dest: Path, problems: list[str]) -> None:
        self.events.emit("checkpoint_refused", self.step_count, f"{folder.name}: {problems[0]}; moved aside to "
                         f"{dest.name}", path=str(folder), set_aside=str(dest), problems=problems[:8])

    # ---- when the target must go ---------------------------------------------------------------------
    def _untrusted(self, step: int, e: TargetUntrusted, weights_touched: bool) -> None:
        """Record why, and leave a checkpoint of the last good state for the next target (when there is a
        run_dir): the current weights, unless the failing optimizer step touched them (then the newest snapshot)."""
        self.runner.discard()
        saved = None
        if self.ckpt is not None:
            if not weights_touched:
                self.batches_seen -= 1  # the failed step's batch is trained on again, on the next target
                saved = self.save()
            elif (snap := self.snapshots.newest()) is not None:
                snap.restore(self.model, self.optimizer, self.lr_scheduler)
                self.step_count, self.batches_seen = snap.step, snap.batches
                saved = self.save()
        where = f"; checkpoint {saved.name} is where another target resumes" if saved else ""
        self.events.emit("untrusted", step, f"{self.backend.name} is no longer trusted: {e}{where}", reason=str(e),
                         cause=e.kind, checkpoint=str(saved) if saved else None)
        e.checkpoint = saved
        self._ended_by = ("untrusted", f"{self.backend.name} is no longer trusted at step {step}" +
                          (f"; resumable from {saved.name} on another target" if saved else ""))
        self._write_report()

    def _hang(self, label: str, step: int, elapsed: float, limit: float) -> None:
        self.events.emit("hang", step, f"{label} {step} has not returned after {elapsed:.1f} s (timeout "
                         f"{limit:.1f} s)", elapsed=elapsed, timeout=limit)
        if self._on_hang is not None:
            self._on_hang(step, elapsed, limit)
            return
        self._write_report()
        print(f"turnout guard: hang at step {step} on {self.backend.name} ({elapsed:.1f} s, timeout {limit:.1f} s); "
              f"ending the process (exit {EXIT_HANG}) so it can resume elsewhere from its newest checkpoint",
              file=sys.stderr, flush=True)
        os._exit(EXIT_HANG)

    # ---- the end -------------------------------------------------------------------------------------
    def close(self) -> None:
        """Stop the watchdog, finish pending writes, record the end and write RUN/report.html."""
        if self._closed:
            return
        self._closed = True
        self.watchdog.stop()
        if self.ckpt is not None:
            self.ckpt.wait()
        if self._ended_by is None:
            self.events.emit("end", self.step_count, f"stopped guarding after {self.step_count} steps")
        elif self._ended_by[0] == "untrusted":  # a stop, not an end: another target continues the run
            self.events.emit("stop", self.step_count, f"stopped guarding after {self.step_count} steps: "
                             f"{self._ended_by[1]}")
        else:
            self.events.emit("end", self.step_count, f"stopped guarding after {self.step_count} steps: "
                             f"{self._ended_by[1]}", ok=False)
        self.metrics.close()
        self._write_report()

    def _write_report(self) -> None:
        if self.run is None or self.rank != 0:
            return
        try:
            from turnout.report.run_page import write_run_report

            write_run_report(self.run.root)
        except Exception as e:  # noqa: BLE001 - the run's data is safe on disk; the page can be rebuilt
            _log.warning("report: not written (%s); rebuild it with `turnout report %s`", one_line(e), self.run.root)

    def __enter__(self) -> "Guard":
        return self

    def __exit__(self, typ, exc, tb) -> None:
        self.close()
        if isinstance(exc, TargetUntrusted) and os.environ.get("TURNOUT_SUPERVISED"):
            print(f"turnout guard: {self.backend.name} is no longer trusted: {exc}; exiting {EXIT_UNTRUSTED} for the "
                  f"supervisor to fail over", file=sys.stderr, flush=True)
            raise SystemExit(EXIT_UNTRUSTED) from None
