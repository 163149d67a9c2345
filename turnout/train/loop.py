"""The training loop: resume, steps, held-out loss, checkpoints, metrics, events, report.

`train(config, target, run_dir)` runs in every rank (torchrun starts one process per rank). Position in the run
is (step, global sample index); both live in each checkpoint's manifest, so a run resumes bit-exactly on the
same target and world size, and in the same data order on any other.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.distributed as dist

from turnout.backend import Backend, get_backend
from turnout.ckpt import Checkpointer, Manifest, encode_rng, latest_checkpoint, list_checkpoints
from turnout.config import Config, ConfigError, to_toml
from turnout.data import Dataset
from turnout.train.build import Built, build_dataset, build_model
from turnout.train.dist import DistInfo, all_reduce_mean, init_distributed
from turnout.train.events import EventLog, JsonlWriter
from turnout.train.heal import Healer
from turnout.train.health import EXIT_HANG, RunUnrecoverable, TargetUntrusted
from turnout.train.progress import RunProgress
from turnout.train.replicas import ReplicaCheck
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


class Trainer:
    """One run on one target: owns the built model, the data position and the run folder's logs."""

    def __init__(self, config: Config, built: Built, dataset: Dataset, run_dir: Path,
                 log: Callable[[str], None] | None = print):
        self.config, self.b, self.dataset, self.run_dir = config, built, dataset, Path(run_dir)
        self.info: DistInfo = built.info
        main = self.info.is_main
        self.progress = RunProgress(config.train.steps, 0, enabled=main and log is not None,
                                    every=config.train.log_interval)
        self.events = EventLog(self.run_dir / "events.jsonl", built.backend.name, enabled=True,
                               echo=self.progress.log if log is not None and main else None,
                               rank=None if main else self.info.rank)  # other ranks: what they alone see
        self.metrics = JsonlWriter(self.run_dir / "metrics.jsonl", enabled=main)
        self.ckpt = Checkpointer(self.run_dir, keep=config.ckpt.keep, async_save=config.ckpt.async_save,
                                 attach={"tokenizer.json": dataset.path / "tokenizer.json"})
        self.step = 0
        self.sampler = dataset.sampler(config.train.seq_len, config.train.seed)
        self.lr_scale = 1.0
        self.recent_losses: list[tuple[int, float]] = []  # (step, loss) of the last steps, for failover checks
        self.peak = built.backend.matmul_peak(built.backend.compute_dtype_name(config)) if main else 0.0
        self.val_loss: float | None = None
        self.last: StepResult | None = None
        self.healer = Healer(built.runner, config.health, self.events, sharded=built.runner.sharded)
        h = config.health
        self.replicas = (ReplicaCheck(list(built.model.parameters()), built.backend, self.info.world_size,
                                      h.replica_check_interval, self.events, self.healer.policy)
                         if h.enabled and h.replica_check_interval and self.info.world_size > 1
                         and not built.runner.sharded else None)  # DDP: every rank holds a full replica
        self.rollbacks: list[dict] = []  # {"onset", "to_step", "skip" (data skipped)} of every rollback so far
        self.expected: dict[int, float] = {}  # losses another target recorded past our checkpoint (failover check)
        self.checked: list[tuple[int, float, float, float]] = []  # (step, loss, loss before, relative difference)
        self.batch_index: dict[int, int] = {}  # step -> global sample index its batch started at (recent steps)
        self.watchdog = Watchdog(config.health, self._on_hang)
        self.truth = GroundTruth(built.backend, self.events, self.info)

    # ---- position ------------------------------------------------------------------------------------
    def resume_from(self, folder: Path) -> Manifest:
        """Load a checkpoint (resharding as needed) and take its step, data position and loop state."""
        m = self.ckpt.load(folder, self.b.model, self.b.optimizer)
        self.step = m.step
        self.sampler.load_state_dict({"index": m.samples})
        self.lr_scale = float(m.extra.get("lr_scale", 1.0))
        self.recent_losses = [tuple(x) for x in m.extra.get("recent_losses", [])]
        self.rollbacks = list(m.extra.get("rollbacks", []))
        self.healer.monitor.load_state(m.extra.get("health", {}))
        # fault counts belong to a target: a run that moved to another target starts with a clean slate
        self.healer.policy.load_state(m.extra.get("trust", {}).get(self.b.backend.name, {}))
        if m.rng:
            self.b.backend.set_rng_state(m.rng_tensors())
        self.progress.start = self.step
        if m.target != self.b.backend.name:
            self.expected = {s: l for s, l in _recorded_losses(self.run_dir, exclude=self.b.backend.name).items()
                             if s > m.step}
        return m

    def manifest(self) -> Manifest:
        return Manifest(step=self.step, samples=self.sampler.state_dict()["index"], model_args=self.b.args.to_dict(),
                        config=self.config.to_dict(), target=self.b.backend.name, world_size=self.info.world_size,
                        rng=encode_rng(self.b.backend.get_rng_state()),
                        extra={"lr_scale": self.lr_scale, "recent_losses": self.recent_losses[-16:],
                               "rollbacks": self.rollbacks, "health": self.healer.monitor.state(),
                               "trust": {self.b.backend.name: self.healer.policy.state()}})

    def save(self) -> Path | None:
        """Write a checkpoint; None when the replicas disagree instead (the run went back to the last one)."""
        if self.replicas and self.replicas.agreed_at != self.step and self.replicas.diverged(self.step):
            self.restore_replicas()
            return None
        t0 = time.time()
        folder = self.ckpt.save(self.b.model, self.b.optimizer, self.manifest())
        self.events.emit("checkpoint", self.step, f"saved {folder.name}", path=str(folder),
                         seconds=round(time.time() - t0, 3), samples=self.sampler.state_dict()["index"])
        return folder

    # ---- one step ------------------------------------------------------------------------------------
    def micro_batches(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """This rank's share of the next global batch, split into grad_accum micro-batches (advances the sampler)."""
        t = self.config.train
        x, y = self.sampler.next_batch(t.batch_size, self.info.rank, self.info.world_size)
        return list(zip(x.chunk(t.grad_accum), y.chunk(t.grad_accum)))

    def train_step(self) -> StepResult | None:
        """Measure, judge and apply one optimizer step (or roll back); returns the applied result."""
        t0 = time.perf_counter()
        step = self.step + 1
        self.b.backend.set_step(step)
        self.batch_index[step] = self.sampler.state_dict()["index"]
        self.batch_index.pop(step - 512, None)  # a spike onset is at most spike_patience steps back
        batches = self.micro_batches()
        self.watchdog.begin("step", step)
        try:
            outcome = self.healer.run(step, batches)
            if outcome.rollback:
                self.b.runner.discard()
                onset = step - max(self.healer.monitor.spiking - 1, 0)  # first step of a persisting spike
                self.rollback(onset, outcome.rollback)
                return None
            lr = lr_at(self.step, self.config.train, self.lr_scale)
            loads = self.b.runner.apply(outcome.result, lr)
        finally:
            self.watchdog.end()
            self.truth.drain()
        self.step = step
        self.record(outcome.result, lr, loads, time.perf_counter() - t0)
        self.check_after_failover(outcome.result)
        if self.replicas and self.replicas.due(step) and self.replicas.diverged(step):
            self.restore_replicas()
            return None
        return outcome.result

    def restore_replicas(self) -> None:
        """After replicas diverged: back to the newest checkpoint (saved only when they agreed), same data."""
        if latest_checkpoint(self.run_dir, before_step=self.step + 1) is None:
            raise TargetUntrusted(f"data-parallel replicas diverged by step {self.step}, before any checkpoint: no "
                                  f"state they agreed on to go back to", "sdc")
        self.rollback(self.step + 1, "data-parallel replicas diverged", skip_data=False)

    def rollback(self, onset: int, reason: str, skip_data: bool = True) -> None:
        """Back to the newest good checkpoint before `onset`; skip the data from the onset's batch on (PaLM skipped
        the batches seen before and during a spike); cut the LR when the problem recurs at the same place.
        `skip_data=False` (the data is not to blame, e.g. diverged replicas): replay the same batches, same LR."""
        h = self.config.health
        if len(self.rollbacks) >= h.max_rollbacks:
            raise RunUnrecoverable(f"step {onset}: {reason}; {len(self.rollbacks)} rollbacks already (health."
                                   f"max_rollbacks={h.max_rollbacks})")
        folder = latest_checkpoint(self.run_dir, before_step=onset)
        if folder is None:
            raise RunUnrecoverable(f"step {onset}: {reason}; no checkpoint before it to roll back to")
        m = self.ckpt.load(folder, self.b.model, self.b.optimizer)
        near = max(self.config.ckpt.interval, h.skip_batches, 1)
        recurs = skip_data and any(abs(r["onset"] - onset) <= near for r in self.rollbacks if r.get("skip", True))
        self.rollbacks.append({"onset": onset, "to_step": m.step, "skip": skip_data})
        self.events.emit("rollback", onset, f"{reason}; rolled back to {folder.name}", to_step=m.step,
                         from_step=self.step + 1, path=str(folder))
        onset_index = self.batch_index.get(onset, m.samples)
        resume_at = max(m.samples, onset_index + h.skip_batches * self.config.train.batch_size) if skip_data \
            else m.samples
        self.step = m.step
        self.sampler.load_state_dict({"index": resume_at})
        self.batch_index = {}
        if resume_at > m.samples:
            n = (resume_at - m.samples) // self.config.train.batch_size
            self.events.emit("skip_batches", m.step, f"skipped {n} batches (samples {m.samples}..{resume_at - 1}: "
                             f"those seen since the checkpoint, the onset's and {h.skip_batches - 1} after it)",
                             batches=n, first_sample=m.samples, samples=resume_at - m.samples)
        if recurs:
            self.lr_scale *= h.lr_cut
            self.events.emit("lr_cut", m.step, f"problem recurred near step {onset}: learning rate x{h.lr_cut:g} "
                             f"(now x{self.lr_scale:.3g} of the schedule)", factor=h.lr_cut, lr_scale=self.lr_scale)
        self.healer.monitor.reset()

    def check_after_failover(self, r: StepResult) -> None:
        """After moving to another target: compare the first steps' losses with what the old target recorded."""
        h = self.config.health
        if not self.expected or self.step not in self.expected:
            return
        old = self.expected.pop(self.step)
        rel = abs(r.loss - old) / max(abs(old), 1e-12)
        self.checked.append((self.step, r.loss, old, rel))
        if len(self.checked) >= h.loss_check_steps or not self.expected:
            ok = all(c[3] <= h.loss_check_rtol for c in self.checked)
            worst = max(c[3] for c in self.checked)
            self.events.emit("loss_check", self.step, f"first {len(self.checked)} step(s) on {self.b.backend.name} "
                             f"vs the losses recorded before the switch: worst relative difference {worst:.3g} "
                             f"({'ok' if ok else 'MISMATCH'}, tolerance {h.loss_check_rtol:g})", ok=ok, worst=worst,
                             compared=[{"step": c[0], "loss": c[1], "before": c[2]} for c in self.checked])
            self.expected = {}

    def _on_hang(self, label: str, step: int, elapsed: float, limit: float) -> None:
        """Watchdog thread: a step never returned. Record it and end the process for the supervisor."""
        self.truth.drain()
        self.events.emit("hang", step, f"{label} {step} has not returned after {elapsed:.1f} s (timeout {limit:.1f} s)",
                         elapsed=elapsed, timeout=limit)
        self.progress.close()
        print(f"turnout train: hang at {label} {step} on {self.b.backend.name} ({elapsed:.1f} s, timeout "
              f"{limit:.1f} s); stopping so the run can resume elsewhere (--resume, or --fallback)", flush=True)
        os._exit(EXIT_HANG)

    def record(self, r: StepResult, lr: float, loads: torch.Tensor, seconds: float) -> None:
        tps = r.tokens / seconds if seconds > 0 else 0.0
        mfu = self.b.flops_per_token * tps / (self.peak * self.info.world_size) if self.peak else 0.0
        frac = loads / loads.sum(-1, keepdim=True).clamp(min=1) if loads.numel() else loads
        cv = float((frac.std(-1) / frac.mean(-1).clamp(min=1e-12)).mean()) if loads.numel() else 0.0
        self.recent_losses = (self.recent_losses + [(self.step, r.loss)])[-16:]
        self.last = r
        self.metrics.write({
            "kind": "train", "step": self.step, "time": time.time(), "target": self.b.backend.name,
            "loss": r.loss, "ce": r.ce, "mtp": r.mtp, "balance": r.balance, "grad_norm": r.grad_norm,
            "grad_norm_layers": r.layer_grad_norms, "lr": lr, "tokens_per_s": tps, "mfu": mfu,
            "step_time": seconds, "samples": self.sampler.state_dict()["index"],
            "expert_load": [[round(v, 5) for v in row] for row in frac.tolist()], "expert_load_cv": cv,
            "memory": self.b.backend.memory_stats().get("peak_allocated", 0)})
        self.progress.update(self.step, r.loss, lr, tps, mfu)

    @torch.no_grad()
    def evaluate(self) -> float:
        """Mean held-out loss over the fixed validation batches (the same on every world size)."""
        t = self.config.train
        model = self.b.model
        model.eval()
        losses = []
        with self.b.backend.compute():
            for x, y in self.dataset.val_batches(t.eval_batches, t.batch_size, t.seq_len, self.info.rank,
                                                 self.info.world_size):
                dev = self.b.backend.device()
                with self.b.backend.autocast(self.b.dtype):
                    out = model(x.to(dev), targets=y.to(dev))
                losses.append(out.ce.detach().double().cpu())
        model.train()
        val = float(all_reduce_mean(torch.stack(losses).mean().reshape(1))[0])
        self.val_loss = val
        self.metrics.write({"kind": "eval", "step": self.step, "time": time.time(), "target": self.b.backend.name,
                            "val_loss": val})
        self.progress.log(f"step {self.step}: held-out loss {val:.4f}")
        return val

    # ---- the run -------------------------------------------------------------------------------------
    def run(self, until: int | None = None) -> RunResult:
        """Train to `train.steps` (or stop after step `until`, checkpointed, with the schedule unchanged)."""
        t = self.config.train
        c = self.config.ckpt
        stop = min(t.steps, until) if until else t.steps
        if self.config.health.enabled:
            self.watchdog.start()
        try:
            while True:
                while self.step < stop:
                    if self.train_step() is None:
                        continue  # rolled back: the checkpoint it went back to is already on disk
                    if t.eval_interval and self.step % t.eval_interval == 0 and self.step < t.steps:
                        self.evaluate()
                    if c.interval and self.step % c.interval == 0 and self.step < stop:
                        self.save()
                self.evaluate()
                saved = list_checkpoints(self.run_dir)
                if (saved and saved[-1][0] == self.step) or self.save() is not None:
                    break  # else the replicas disagreed and the run went back: train to the end again
            self.ckpt.wait()
        except TargetUntrusted as e:
            self.events.emit("untrusted", self.step + 1, f"{self.b.backend.name} is no longer trusted: {e}",
                             reason=str(e), cause=e.kind)
            raise
        except RunUnrecoverable as e:
            self.events.emit("unrecoverable", self.step + 1, str(e))
            raise
        finally:
            self.watchdog.stop()
            self.progress.close()
        last = self.last.loss if self.last else math.nan
        done = self.step >= t.steps
        self.events.emit("end" if done else "stop", self.step, f"{'finished' if done else 'stopped after'} "
                         f"{self.step} steps; loss {last:.4f}, held-out {self.val_loss:.4f}", loss=last,
                         val_loss=self.val_loss)
        return RunResult(self.run_dir, self.step, last, self.val_loss, self.b.backend.name)


def prepare_run_dir(run_dir: Path, config: Config, info: DistInfo, resume: bool) -> None:
    """Create the run folder (rank 0) and record the config; refuse to overwrite a run that has checkpoints."""
    if info.is_main:
        if not resume and list_checkpoints(run_dir):
            raise ConfigError(f"--out {run_dir}: this run already has checkpoints; pass --resume to continue it or "
                              f"choose another folder")
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.toml").write_text(to_toml(config))
    if info.world_size > 1:
        dist.barrier()


def train(config: Config, target: str | Backend | None, run_dir: str | Path, *, resume: bool = False,
          until: int | None = None, log: Callable[[str], None] | None = print) -> RunResult:
    """Train (or resume) the run in `run_dir` on `target`; every rank calls this. Writes the report at the end."""
    run_dir = Path(run_dir)
    backend = target if isinstance(target, Backend) else get_backend(target)
    info = init_distributed(backend)
    prepare_run_dir(run_dir, config, info, resume)
    built = build_model(config, backend, info)
    dataset = build_dataset(config, built.args, info, log if info.is_main else None)
    trainer = Trainer(config, built, dataset, run_dir, log if info.is_main else None)
    if info.is_main:
        (run_dir / "tokenizer.json").write_bytes((dataset.path / "tokenizer.json").read_bytes())
        _write_run_json(run_dir, built)
    folder = latest_checkpoint(run_dir, on_refused=lambda p, why: trainer.events.emit(
        "checkpoint_refused", 0, f"{p.name}: {why[0]}", path=str(p))) if resume else None
    if folder is not None:
        m = trainer.resume_from(folder)
        trainer.events.emit("resume", m.step, f"resumed from {folder.name} (written on {m.target}, world size "
                            f"{m.world_size}) at sample {m.samples}", path=str(folder), from_target=m.target,
                            from_world_size=m.world_size, samples=m.samples)
    elif resume:
        trainer.events.emit("resume", 0, "no complete checkpoint to resume from; starting at step 0")
    trainer.events.emit("start", trainer.step, f"{built.args.n_layers}-layer model, {built.params:,} params "
                        f"({built.active_params:,} active) on {backend.name} x{info.world_size}, "
                        f"{built.dtype}".replace("torch.", ""), world_size=info.world_size,
                        params=built.params, active_params=built.active_params)
    try:
        return trainer.run(until)
    finally:
        if info.is_main:
            write_report_safely(run_dir, log)


def _recorded_losses(run_dir: Path, exclude: str) -> dict[int, float]:
    """The last loss recorded for each step by targets other than `exclude` (metrics.jsonl, torn lines skipped)."""
    out: dict[int, float] = {}
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return out
    for line in path.read_text().splitlines():
        try:
            m = json.loads(line)
        except json.JSONDecodeError:
            continue
        if m.get("kind") == "train" and m.get("target") != exclude and isinstance(m.get("loss"), float):
            out[int(m["step"])] = m["loss"]
    return out


def _write_run_json(run_dir: Path, built: Built) -> None:
    path = run_dir / "run.json"
    old = json.loads(path.read_text()) if path.is_file() else {}
    targets = old.get("targets", [])
    if built.backend.name not in targets:
        targets.append(built.backend.name)
    info = {"name": run_dir.name, "targets": targets, "model": built.args.to_dict(), "params": built.params,
            "active_params": built.active_params, "started": old.get("started", time.time()),
            "world_size": built.info.world_size}
    path.write_text(json.dumps(info, indent=1))


def write_report_safely(run_dir: Path, log: Callable[[str], None] | None) -> Path | None:
    """Regenerate RUN/report.html; a report problem never fails a finished run (it is said, not raised)."""
    try:
        from turnout.train.report import write_report
        path = write_report(run_dir)
        if log:
            log(f"report: {path}")
        return path
    except Exception as e:  # noqa: BLE001 - the run's data is safe on disk; the report can be rebuilt
        if log:
            log(f"report: not written ({type(e).__name__}: {e}); rebuild it with `turnout report {run_dir}`")
        return None
