"""Reading a run folder for its pages: surviving steps, incidents, the headline numbers.

Everything here works from the files alone (metrics.jsonl, events.jsonl, run.json, config.toml, checkpoints/),
so a report can be rebuilt at any time, also while the run is going or after it was killed. Odd input never
raises: unreadable lines are counted and skipped, missing files read as empty, NaN/null/"NaN" become NaN.

Rollbacks make step numbers repeat. A train line at step s supersedes every earlier line at step >= s (the run
went back and redid them), so the *surviving* lines are what the curves show and what counts as productive
time; every line, superseded or not, still counts towards wall time.
"""

from __future__ import annotations

import math
import time as _time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from turnout.report.incidents import find_incidents
from turnout.report.rundir import MANIFEST, RunDir, read_json_object
from turnout.report.values import as_float, as_int

# A run with no end event whose files have not changed for this long is taken to have died.
STALE_AFTER_S = 600.0
# Lifecycle events after which the run was paused on purpose: the time until it resumed is not the run's.
PAUSES = frozenset({"stop", "end"})


def _normalise(row: dict) -> dict:
    """A copy of a JSONL row whose step is an int or None, time a float (NaN if absent) and kind a string."""
    out = dict(row)
    out["step"] = as_int(row.get("step"))
    out["time"] = as_float(row.get("time"))
    kind = row.get("kind")
    if not isinstance(kind, str):
        # Untagged metric lines: guess from the fields so an older writer's file still plots.
        kind = "eval" if "val_loss" in row else "train" if "loss" in row else "unknown"
    out["kind"] = kind
    out["target"] = str(row.get("target", "")) if row.get("target") is not None else ""
    return out


@dataclass
class RunData:
    """Everything read from one run directory, normalised (see _normalise) but otherwise as written."""

    run_dir: Path
    train: list = field(default_factory=list)  # every train line, file order (superseded ones included)
    evals: list = field(default_factory=list)  # every eval line, file order
    events: list = field(default_factory=list)  # every event, sorted by time (stable)
    final_train: list = field(default_factory=list)  # surviving train line per step, ascending step
    final_evals: list = field(default_factory=list)  # surviving eval line per step, ascending step
    info: dict = field(default_factory=dict)  # run.json
    config_text: str | None = None
    checkpoints: list = field(default_factory=list)  # step, time, target, samples, path, manifest (ok|missing|...)
    skipped_lines: int = 0


def _surviving(metrics: list[dict]) -> tuple[list[dict], list[dict]]:
    """The train and eval lines not superseded by a later line at the same or an earlier step (rollbacks)."""
    train, evals = [], []
    for m in metrics:
        s = m["step"]
        if s is None or m["kind"] not in ("train", "eval"):
            continue
        # Steps >= s were rolled back: drop them. A new train line at s also voids an eval taken at s.
        while evals and evals[-1]["step"] >= s:
            evals.pop()
        if m["kind"] == "train":
            while train and train[-1]["step"] >= s:
                train.pop()
            train.append(m)
        else:
            evals.append(m)
    return train, evals


def _sorted_by_time(events: list[dict]) -> list[dict]:
    """Events in time order; an event without a time keeps its place after the previous timed one."""
    keyed, last = [], -math.inf
    for i, e in enumerate(events):
        if math.isfinite(e["time"]):
            last = e["time"]
        keyed.append((last, i, e))
    return [e for _, _, e in sorted(keyed, key=lambda k: (k[0], k[1]))]


def _checkpoints(run: RunDir) -> list[dict]:
    """The checkpoint folders with their manifest's step, time, target and data position, in step order."""
    out = []
    for step, d in run.checkpoint_folders():
        manifest = read_json_object(d / MANIFEST)
        state = "ok" if manifest else ("unreadable" if (d / MANIFEST).exists() else "missing")
        written = as_int(manifest.get("step"))
        out.append({"step": step if written is None else written,
                    "time": as_float(manifest.get("time")), "target": str(manifest.get("target") or ""),
                    "samples": as_int(manifest.get("samples")), "path": str(d.relative_to(run.root)),
                    "manifest": state})
    return sorted(out, key=lambda c: (c["step"], c["path"]))


def load_run(run_dir: Path | str | RunDir) -> RunData:
    """Read a run directory; missing pieces come back empty rather than raising."""
    run = run_dir if isinstance(run_dir, RunDir) else RunDir(run_dir)
    metrics, bad_m = run.read_metrics()
    events, bad_e = run.read_events()
    metrics = [_normalise(m) for m in metrics]
    data = RunData(run_dir=run.root, skipped_lines=bad_m + bad_e)
    data.train = [m for m in metrics if m["kind"] == "train"]
    data.evals = [m for m in metrics if m["kind"] == "eval"]
    data.final_train, data.final_evals = _surviving(metrics)
    data.events = _sorted_by_time([_normalise(e) for e in events])
    data.info = run.read_info()
    try:
        data.config_text = run.config.read_text(encoding="utf-8", errors="replace")
    except OSError:
        data.config_text = None
    data.checkpoints = _checkpoints(run)
    return data


def _status(data: RunData, last_time: float | None, now: float | None) -> tuple[str, str]:
    """(finished | stopped | running | failed | unknown, a short reason), from end/stop events and the clock.

    The loop writes "end" when it reached train.steps and "stop" when it was asked to stop early (resumable).
    """
    lifecycle = [e for e in data.events if e["kind"] in ("start", "resume", "end", "stop")]
    if lifecycle and lifecycle[-1]["kind"] == "stop":
        return "stopped", str(lifecycle[-1].get("detail") or "stopped before the last step; resumable")
    if lifecycle and lifecycle[-1]["kind"] == "end":
        end = lifecycle[-1]
        flag = str(end.get("status", "")).lower()
        if end.get("ok") is False or flag in ("failed", "error", "crashed", "aborted"):
            return "failed", str(end.get("detail") or "the end event reports a failure")
        return "finished", str(end.get("detail") or "end event written")
    if last_time is None:
        return "unknown", "no metrics or events yet"
    idle = (_time.time() if now is None else now) - last_time
    if idle <= STALE_AFTER_S:
        return "running", f"no end event; last activity {idle:.0f} s ago"
    return "failed", f"no end event and no activity for {idle:.0f} s (the process probably died)"


def _session_begins(events: list[dict]) -> list[float]:
    """When each worker process began: its `start` event, or the `resume` (and refused checkpoints) it wrote
    just before."""
    begins = []
    for k, e in enumerate(events):
        if e["kind"] != "start" or not math.isfinite(e["time"]):
            continue
        j = k
        while j > 0 and events[j - 1]["kind"] in ("resume", "checkpoint_refused") \
                and math.isfinite(events[j - 1]["time"]):
            j -= 1
        begins.append(events[j]["time"])
    return begins


def _wall_time(times: list[float], events: list[dict]) -> tuple[float | None, float | None]:
    """(when the run began, wall time): the time its worker processes ran, plus every gap between one process
    and the next that the run did not choose. A gap after a crash, a hang or a failover is lost time; a gap
    after a `stop` (the run was told to pause, `--until`) or an `end` is not: counting the days between a
    paused run and its resume made a resumed run show 30% goodput."""
    if not times:
        return None, None
    begins = _session_begins(events)
    if not begins:
        return times[0], times[-1] - times[0]
    wall = 0.0
    for i, b in enumerate(begins):
        nxt = begins[i + 1] if i + 1 < len(begins) else math.inf
        end = max((t for t in times if b <= t < nxt), default=b)
        wall += end - b
        if nxt < math.inf:
            ended = [e["kind"] for e in events if e["kind"] in ("start", "stop", "end") and
                     math.isfinite(e["time"]) and e["time"] < nxt]
            if not ended or ended[-1] not in PAUSES:
                wall += nxt - end
    return begins[0], max(0.0, wall)


def _mean(values: list) -> float | None:
    vals = [v for v in (as_float(x) for x in values) if math.isfinite(v)]
    return sum(vals) / len(vals) if vals else None


def summarize(data: RunData, now: float | None = None) -> dict:
    """The headline numbers of a loaded run (see summarize_run for the keys)."""
    times = [m["time"] for m in data.train + data.evals + data.events if math.isfinite(m["time"])]
    last = max(times) if times else None
    first, wall = _wall_time(sorted(times), data.events)
    productive = sum(v for v in (as_float(m.get("step_time")) for m in data.final_train) if math.isfinite(v))
    targets = list(dict.fromkeys(m["target"] for m in data.train if m["target"]))
    if not targets and isinstance(data.info.get("targets"), list):
        targets = [str(t) for t in data.info["targets"]]  # nothing trained yet: show what was configured
    last_train = data.final_train[-1] if data.final_train else None
    last_eval = data.final_evals[-1] if data.final_evals else None
    status, status_detail = _status(data, last, now)
    incidents, undetected = find_incidents(data.events, data.train)
    by_target: Counter = Counter(m["target"] or "?" for m in data.final_train)
    tail = data.final_train[-max(1, len(data.final_train) // 10):] if data.final_train else []
    return {
        "name": str(data.info.get("name") or data.run_dir.name),
        "run_dir": str(data.run_dir),
        "status": status,
        "status_detail": status_detail,
        "targets": targets,
        "fallback": data.info.get("fallback") if isinstance(data.info.get("fallback"), list) else [],
        "steps": last_train["step"] if last_train else 0,
        "final_loss": as_float(last_train.get("loss")) if last_train else None,
        "final_val_loss": as_float(last_eval.get("val_loss")) if last_eval else None,
        "final_val_step": last_eval["step"] if last_eval else None,
        "started": first,
        "wall_time": wall,
        "productive_time": productive,
        "ettr": productive / wall if wall else None,
        "superseded_lines": len(data.train) - len(data.final_train),
        "steps_by_target": dict(by_target),
        "tokens_per_s": _mean([m.get("tokens_per_s") for m in tail]),  # over the last 10% of steps
        "mfu": _mean([m.get("mfu") for m in tail]),
        "params": as_int(data.info.get("params")),
        "active_params": as_int(data.info.get("active_params")),
        "checkpoints": [c["step"] for c in data.checkpoints],
        "incidents": incidents,
        "undetected_injections": undetected,
        "events": len(data.events),
        "skipped_lines": data.skipped_lines,
    }


def summarize_run(run_dir: Path | str, now: float | None = None) -> dict:
    """The run's headline numbers from its directory, without parsing any HTML.

    Keys: name, status (finished/stopped/running/failed/unknown), status_detail, targets (in order of first use),
    steps (last surviving step), final_loss, final_val_loss, wall_time (s, the worker processes' time plus
    the downtime the run did not choose, see _wall_time),
    productive_time (s, step_time summed over surviving steps), ettr (productive / wall, None without wall
    time), incidents (dicts with kind, step, time, target, ttd, ttr, steps_lost, recovery, actions, ...),
    undetected_injections, steps_by_target, tokens_per_s and mfu (means over the last 10% of steps), and more.
    Missing values are None; a NaN loss stays NaN. `now` (unix s) fixes the clock used to tell running from died.
    """
    return summarize(load_run(run_dir), now)
