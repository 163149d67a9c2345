"""The training loop: resume, steps, held-out loss, checkpoints; the record goes through report/'s RunDir.

`train(config, target, run_dir)` runs in every rank (torchrun starts one process per rank). Position in the run
is (step, global sample index); both live in each checkpoint's manifest, so a run resumes bit-exactly on the
same target and world size, and in the same data order on any other.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.distributed as dist

from turnout import atomic
from turnout.backend import Backend, get_backend
from turnout.ckpt import Checkpointer, Manifest, encode_rng, list_checkpoints, read_manifest
from turnout.config import Config, ConfigError, to_toml
from turnout.data import TOKENIZER_FILES, Dataset
from turnout.errors import one_line
from turnout.model.args import KERNEL_FIELDS, ModelArgs
from turnout.report.rundir import RunDir
from turnout.train.build import Built, build_dataset, build_model
from turnout.train.dist import DistInfo, all_reduce_mean, init_distributed
from turnout.train.events import EventLog
from turnout.train.fingerprint import applies, numerics_fingerprint, read_qualification
from turnout.train.heal import Healer
from turnout.train.health import EXIT_HANG, RunUnrecoverable, TargetUntrusted
from turnout.train.interrupt import Interrupted, SignalStop
from turnout.train.loss_check import LossCheck
from turnout.train.progress import RunProgress
from turnout.train.record import MetricsLog, StepRecorder
from turnout.train.replicas import ReplicaCheck
from turnout.train.rollback import Rollbacks
from turnout.train.schedule import lr_at
from turnout.train.step import StepResult
from turnout.train.truth import GroundTruth
from turnout.train.watchdog import Watchdog


@dataclass
class RunResult:
    """How a run ended."""

    run_dir: Path
    step: int
    final_loss: float
    val_loss: float | None
    target: str
    already_complete: bool = False  # resumed at or past train.steps: nothing was trained


#: train fields that shape the learning-rate schedule (turnout.train.schedule.lr_at)
SCHEDULE_FIELDS = ("steps", "lr", "min_lr_ratio", "warmup_steps", "schedule", "decay_fraction")


class Trainer:
    """One run on one target: owns the built model, the data position and the run folder's logs.

    Its parts each own one concept: Healer (judging a step), Rollbacks (going back past bad data), LossCheck
    (agreement after a failover), ReplicaCheck (DDP replicas agree), StepRecorder (the metrics row)."""

    def __init__(self, config: Config, built: Built, dataset: Dataset, run_dir: Path,
                 log: Callable[[str], None] | None = print):
        self.config, self.built, self.dataset, self.folder = config, built, dataset, RunDir(run_dir)
        self.info: DistInfo = built.info
        main = self.info.is_main
        self.progress = RunProgress(config.train.steps, 0, enabled=main and log is not None,
                                    every=config.train.log_interval)
        self.metrics = MetricsLog(self.folder, config, enabled=main)
        self.events = EventLog(self.folder.events, built.backend.name, enabled=True,
                               echo=self.progress.log if log is not None and main else None,
                               rank=None if main else self.info.rank,  # other ranks: what they alone see
                               also=self.metrics.event)
        self.ckpt = Checkpointer(self.folder.root, keep=config.ckpt.keep, async_save=config.ckpt.async_save,
                                 attach={name: dataset.path / name for name in TOKENIZER_FILES
                                         if (dataset.path / name).is_file()}, on_set_aside=self._set_aside,
                                 split=built.experts)
        self.step = 0
        self.sampler = dataset.sampler(config.train.seq_len, config.train.seed)
        self.recent_losses: list[tuple[int, float]] = []  # (step, loss) of the last steps, kept in the manifest
        self.recorder = StepRecorder(built, config, self.metrics)
        self.val_loss: float | None = None
        self.last: StepResult | None = None
        self.healer = Healer(built.runner, config.health, self.events, sharded=built.runner.sharded)
        self.rollbacks = Rollbacks(config, self.folder, self.ckpt, self.events)
        self.loss_check = LossCheck(config.health, self.events, built.backend.name)
        h = config.health
        self.replicas = (ReplicaCheck(list(built.model.parameters()), built.backend, self.info.world_size,
                                      h.replica_check_interval, self.events, self.healer.policy,
                                      split=built.experts)
                         if h.enabled and h.replica_check_interval and self.info.world_size > 1
                         and not built.runner.sharded else None)  # DDP: every rank holds a full replica
        self.watchdog = Watchdog(config.health, self._on_hang)
        self.signals = SignalStop()
        self.truth = GroundTruth(built.backend, self.events, self.info)

    def _set_aside(self, folder: Path, dest: Path, problems: list[str]) -> None:
        self.events.emit("checkpoint_refused", self.step, f"{folder.name}: {problems[0]}; moved aside to {dest.name} "
                         f"(not counted toward ckpt.keep, not deleted)", path=str(folder), set_aside=str(dest),
                         problems=problems[:8])

    # ---- position ------------------------------------------------------------------------------------
    def resume_from(self, folder: Path) -> Manifest:
        """Load a checkpoint (resharding as needed) and take its step, data position and loop state."""
        b = self.built
        m = self.ckpt.load(folder, b.model, b.optimizer)
        self.step = m.step
        self.sampler.load_state_dict({"index": m.samples})
        self.recent_losses = [tuple(x) for x in m.extra.get("recent_losses", [])]
        self.rollbacks.load_state(m.extra)
        self.healer.monitor.load_state(m.extra.get("health", {}))
        # fault counts belong to a target: a run that moved to another target starts with a clean slate
        self.healer.policy.load_state(m.extra.get("trust", {}).get(b.backend.name, {}))
        if m.rng:
            b.backend.set_rng_state(m.rng_tensors())
        self.progress.start = self.step
        if m.target != b.backend.name:
            self.loss_check.arm(self.folder, m.step)
        return m

    def note_schedule(self, m: Manifest) -> None:
        """A resume whose config changes the learning-rate schedule (train.steps raised, say) stretches or moves
        the schedule from here on: said in one line and recorded as an event, never silently."""
        old = m.config.get("train", {}) if isinstance(m.config, dict) else {}
        t = self.config.train
        changed = {k: old[k] for k in SCHEDULE_FIELDS if k in old and old[k] != getattr(t, k)}
        if not changed:
            return
        before = lr_at(m.step, dataclasses.replace(t, **changed), self.rollbacks.lr_scale)
        now = lr_at(m.step, t, self.rollbacks.lr_scale)
        what = ", ".join(f"train.{k} {v!r} -> {getattr(t, k)!r}" for k, v in changed.items())
        self.events.emit("schedule_changed", m.step, f"{what}: the learning-rate schedule changes from step "
                         f"{m.step} on (lr there {before:.3g} under the checkpoint's schedule, {now:.3g} now)",
                         changed={k: [v, getattr(t, k)] for k, v in changed.items()}, lr_before=before, lr_now=now)

    @functools.cached_property
    def fingerprint(self) -> dict:
        """This run's numerics fingerprint (turnout.train.fingerprint), written into every checkpoint."""
        b = self.built
        return numerics_fingerprint(b.inner, b.backend, b.backend.compute_dtype_name(self.config))

    def manifest(self) -> Manifest:
        b = self.built
        return Manifest(step=self.step, samples=self.sampler.state_dict()["index"], model_args=b.args.to_dict(),
                        config=self.config.to_dict(), target=b.backend.name, world_size=self.info.world_size,
                        fingerprint=self.fingerprint,
                        rng=encode_rng(b.backend.get_rng_state()),
                        extra={**self.rollbacks.state(), "recent_losses": self.recent_losses[-16:],
                               "health": self.healer.monitor.state(),
                               "trust": {b.backend.name: self.healer.policy.state()},
                               "mesh": b.experts.record() if b.experts else {"dp": self.info.world_size, "ep": 1,
                                                                             "dims": ["dp", "ep"]}})

    def save(self) -> Path | None:
        """Write a checkpoint; None when the replicas disagree instead (the run went back to the last one)."""
        if self.replicas and self.replicas.agreed_at != self.step and self.replicas.diverged(self.step):
            self.restore_replicas()
            return None
        t0 = time.time()
        folder = self.ckpt.save(self.built.model, self.built.optimizer, self.manifest())
        self.events.emit("checkpoint", self.step, f"saved {folder.name}", path=str(folder),
                         seconds=round(time.time() - t0, 3), samples=self.sampler.state_dict()["index"])
        self.metrics.flush()  # a killed run keeps its TensorBoard points up to the last checkpoint
        return folder

    # ---- one step ------------------------------------------------------------------------------------
    def micro_batches(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """This rank's share of the next global batch, split into grad_accum micro-batches (advances the sampler)."""
        t = self.config.train
        x, y = self.sampler.next_batch(t.batch_size, self.info.rank, self.info.world_size)
        return list(zip(x.chunk(t.grad_accum), y.chunk(t.grad_accum)))

    def train_step(self) -> StepResult | None:
        """Measure, judge and apply one optimizer step (or roll back); returns the applied result."""
        b = self.built
        t0 = time.perf_counter()
        step = self.step + 1
        b.backend.set_step(step)
        self.rollbacks.note_batch(step, self.sampler.state_dict()["index"])
        batches = self.micro_batches()
        self.watchdog.begin("step", step)
        try:
            outcome = self.healer.run(step, batches)
            if outcome.rollback:
                b.runner.discard()
                onset = step - max(self.healer.monitor.spiking - 1, 0)  # first step of a persisting spike
                self.rollback(onset, outcome.rollback)
                return None
            lr = lr_at(self.step, self.config.train, self.rollbacks.lr_scale)
            loads = self.healer.apply(step, outcome.result, lr)
        finally:
            self.watchdog.end()
            self.truth.drain()
        self.step = step
        self.record(outcome.result, lr, loads, time.perf_counter() - t0)
        self.loss_check.after_step(step, outcome.result.loss)
        if self.replicas and self.replicas.due(step) and self.replicas.diverged(step):
            self.restore_replicas()
            return None
        return outcome.result

    def restore_replicas(self) -> None:
        """After replicas diverged: back to the newest checkpoint (saved only when they agreed), same data."""
        if self.ckpt.newest(before_step=self.step + 1) is None:
            raise TargetUntrusted(f"data-parallel replicas diverged by step {self.step}, before any checkpoint: no "
                                  f"state they agreed on to go back to", "sdc")
        self.rollback(self.step + 1, "data-parallel replicas diverged", skip_data=False)

    def rollback(self, onset: int, reason: str, skip_data: bool = True) -> None:
        """Back to the newest good checkpoint before `onset` (see Rollbacks.go_back), with fresh spike statistics."""
        landing = self.rollbacks.go_back(onset, reason, self.built.model, self.built.optimizer,
                                         current_step=self.step, skip_data=skip_data)
        self.step = landing.step
        self.sampler.load_state_dict({"index": landing.samples})
        self.healer.monitor.reset()

    def _on_hang(self, label: str, step: int, elapsed: float, limit: float) -> None:
        """Watchdog thread: a step never returned. Record it and end the process for the supervisor."""
        self.truth.drain()
        self.events.emit("hang", step, f"{label} {step} has not returned after {elapsed:.1f} s (timeout {limit:.1f} s)",
                         elapsed=elapsed, timeout=limit)
        self.progress.close()
        print(f"turnout train: hang at {label} {step} on {self.built.backend.name} ({elapsed:.1f} s, timeout "
              f"{limit:.1f} s); stopping so the run can resume elsewhere (--resume, or --fallback)", flush=True)
        os._exit(EXIT_HANG)

    def _train_to(self, stop: int) -> None:
        t, c = self.config.train, self.config.ckpt
        while True:
            while self.step < stop:
                self._stop_if_asked()
                if self.train_step() is None:
                    continue  # rolled back: the checkpoint it went back to is already on disk
                if t.eval_interval and self.step % t.eval_interval == 0 and self.step < t.steps:
                    self.evaluate()
                if c.interval and self.step % c.interval == 0 and self.step < stop:
                    self.save()
            self.evaluate()
            if self.ckpt.holds(self.step) or self.save() is not None:
                break  # else the replicas disagreed and the run went back: train to the end again

    def _stop_if_asked(self) -> None:
        """At a step boundary: after SIGTERM/SIGINT on any rank, checkpoint (unless this step is already), record
        a `stop` and raise Interrupted (see turnout.train.interrupt)."""
        signum = self.signals.requested(self.info.world_size, self.built.backend.device())
        if not signum:
            return
        self.ckpt.wait()  # a pending async save completes first
        folder = self.save() if self.step > 0 and not self.ckpt.holds(self.step) else None
        self.ckpt.wait()
        e = Interrupted(signum, self.step, folder.name if folder is not None else None)
        last = self.last.loss if self.last else math.nan
        self.events.emit("stop", self.step, str(e), signal=signal.Signals(signum).name, loss=last,
                         val_loss=self.val_loss, checkpoint=str(folder) if folder is not None else None)
        raise e

    def record(self, r: StepResult, lr: float, loads: torch.Tensor, seconds: float) -> None:
        row = self.recorder.train_row(self.step, r, lr, loads, seconds, self.sampler.state_dict()["index"])
        self.recent_losses = (self.recent_losses + [(self.step, r.loss)])[-16:]
        self.last = r
        self.progress.update(self.step, r.loss, lr, row["tokens_per_s"], row["mfu"])

    @torch.no_grad()
    def evaluate(self) -> float:
        """Mean held-out loss over the fixed validation batches (the same on every world size)."""
        t = self.config.train
        b = self.built
        model = b.model
        model.eval()
        losses = []
        with b.backend.compute():
            for x, y in self.dataset.val_batches(t.eval_batches, t.batch_size, t.seq_len, self.info.rank,
                                                 self.info.world_size):
                dev = b.backend.device()
                with b.backend.autocast(b.dtype):
                    out = model(x.to(dev), targets=y.to(dev))
                losses.append(out.ce.detach().double().cpu())
        model.train()
        val = float(all_reduce_mean(torch.stack(losses).mean().reshape(1))[0])
        self.val_loss = val
        self.recorder.eval_row(self.step, val)
        self.progress.log(f"step {self.step}: held-out loss {val:.4f}")
        return val

    # ---- the run -------------------------------------------------------------------------------------
    def run(self, until: int | None = None) -> RunResult:
        """Train to `train.steps` (or stop after step `until`, checkpointed, with the schedule unchanged)."""
        t = self.config.train
        stop = min(t.steps, until) if until else t.steps
        if self.config.health.enabled:
            self.watchdog.start()
        try:
            with self.signals:
                self._train_to(stop)
            self.ckpt.wait()
        except TargetUntrusted as e:
            self.events.emit("untrusted", self.step + 1, f"{self.built.backend.name} is no longer trusted: {e}",
                             reason=str(e), cause=e.kind)
            raise
        except RunUnrecoverable as e:
            self.events.emit("unrecoverable", self.step + 1, str(e))
            raise
        except KeyboardInterrupt:  # a second Ctrl-C: the step in progress is abandoned, and that is recorded
            self.events.emit("stop", self.step, f"SIGINT twice: stopped during step {self.step + 1} without "
                             f"finishing it; continue with --resume from the newest checkpoint", signal="SIGINT")
            raise
        finally:
            self.watchdog.stop()
            self.progress.close()
        last = self.last.loss if self.last else math.nan
        done = self.step >= t.steps
        self.events.emit("end" if done else "stop", self.step, f"{'finished' if done else 'stopped after'} "
                         f"{self.step} steps; loss {last:.4f}, held-out {self.val_loss:.4f}", loss=last,
                         val_loss=self.val_loss)
        self.metrics.close()
        return RunResult(self.folder.root, self.step, last, self.val_loss, self.built.backend.name)


def refuse_overwrite(run: RunDir, resume: bool) -> None:
    """A new run never writes into a folder that already holds a run's checkpoints (writes nothing itself)."""
    if not resume and list_checkpoints(run.root):
        raise ConfigError(f"--out {run.root}: this run already has checkpoints; pass --resume to continue it or "
                          f"choose another folder")


def record_config(run: RunDir, config: Config, info: DistInfo) -> None:
    """Create the run folder and record the resolved config (rank 0), once every check has passed."""
    if info.is_main:
        run.root.mkdir(parents=True, exist_ok=True)
        atomic.write_text(run.config, to_toml(config))
    if info.world_size > 1:
        dist.barrier()


def _read_qualification(config: Config) -> dict | None:
    """health.qualification's qualify.json (None when unset); an unreadable one is a ConfigError naming the key."""
    if not config.health.qualification:
        return None
    try:
        return read_qualification(config.health.qualification)
    except ValueError as e:
        raise ConfigError(f"health.qualification: {e}") from None


def refuse_other_model(manifest: Manifest, args: ModelArgs, folder: Path) -> None:
    """--resume with a config that builds another model (other shapes, layers, experts, ...): one line naming
    the fields that differ, before anything is loaded or written. Kernel choices may differ (a target picks
    its own); they never change what the model computes."""
    ours = args.to_dict()
    differ = [k for k in sorted(set(manifest.model_args) | set(ours))
              if k not in KERNEL_FIELDS and manifest.model_args.get(k) != ours.get(k)]
    if differ:
        shown = ", ".join(f"{k}={manifest.model_args.get(k)!r} (config: {ours.get(k)!r})" for k in differ[:6])
        more = f" and {len(differ) - 6} more" if len(differ) > 6 else ""
        raise ConfigError(f"--resume: {folder.name} holds another model than this config builds: {shown}{more}; "
                          f"resume with the run's own config (leave out --config) or start a new run")


def train(config: Config, target: str | Backend | None, run_dir: str | Path, *, resume: bool = False,
          until: int | None = None, log: Callable[[str], None] | None = print) -> RunResult:
    """Train (or resume) the run in `run_dir` on `target`; every rank calls this. Writes the report at the end.
    A start that fails (target, model, data, a checkpoint of another model) leaves no trace in `run_dir`."""
    run = RunDir(run_dir)
    backend = target if isinstance(target, Backend) else get_backend(target)
    info = init_distributed(backend)
    if info.is_main:
        refuse_overwrite(run, resume)
    qualification = _read_qualification(config)
    built = build_model(config, backend, info)
    dataset = build_dataset(config, built.args, info, log if info.is_main else None)
    trainer = Trainer(config, built, dataset, run.root, log if info.is_main else None)
    folder = trainer.ckpt.newest() if resume else None
    if folder is not None:
        refuse_other_model(read_manifest(folder), built.args, folder)
    record_config(run, config, info)
    if info.is_main:
        for name in TOKENIZER_FILES:  # tokenizer.json, and a model's own tokenizer's config
            if (dataset.path / name).is_file():
                atomic.write_bytes(run.root / name, (dataset.path / name).read_bytes())
        run.note_start(backend.name, model=built.args.to_dict(), params=built.params,
                       active_params=built.active_params, world_size=info.world_size)
    if folder is not None:
        m = trainer.resume_from(folder)
        if m.step >= config.train.steps:  # a finished run: say so, and write nothing (no "end" with a NaN loss)
            trainer.metrics.close()
            last = trainer.recent_losses[-1][1] if trainer.recent_losses else math.nan
            return RunResult(run.root, m.step, last, None, backend.name, already_complete=True)
        trainer.events.emit("resume", m.step, f"resumed from {folder.name} (written on {m.target}, world size "
                            f"{m.world_size}) at sample {m.samples}", path=str(folder), from_target=m.target,
                            from_world_size=m.world_size, samples=m.samples)
        trainer.note_schedule(m)
    elif resume:
        trainer.events.emit("resume", 0, "no complete checkpoint to resume from; starting at step 0")
    trainer.events.emit("start", trainer.step, f"{built.args.n_layers}-layer model, {built.params:,} params "
                        f"({built.active_params:,} active) on {backend.name} x{info.world_size}, "
                        f"{built.dtype}".replace("torch.", ""), world_size=info.world_size,
                        params=built.params, active_params=built.active_params)
    if qualification is not None:  # a verdict is quoted only for the numerics it saw
        ok, line = applies(qualification, trainer.fingerprint)
        trainer.events.emit("qualification", trainer.step, line, applies=ok, verdict=qualification["verdict"],
                            path=qualification["path"])
    try:
        return trainer.run(until)
    finally:
        trainer.metrics.close()
        if info.is_main:
            write_report_quietly(run, log)


def write_report_quietly(run: RunDir, log: Callable[[str], None] | None) -> Path | None:
    """Rebuild RUN/report.html at the end of a run; a page problem never fails a finished run (it is said, with
    the command that rebuilds it, not raised: the run's data is safe on disk)."""
    try:
        from turnout.report.run_page import write_run_report  # matplotlib loads only when a page is drawn

        path = write_run_report(run.root)
    except Exception as e:  # noqa: BLE001 -- see the docstring
        if log:
            log(f"report: not written ({one_line(e)}); rebuild it with `turnout report {run.root}`")
        return None
    if log:
        log(f"report: {path}")
    return path
