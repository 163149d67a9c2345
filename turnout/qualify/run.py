"""Qualification end to end: run the stages in order, decide the verdict, write DIR/qualify.json and DIR/report.html.

Stage order: capabilities (a refusal stops here), op conformance, block parity, determinism, training parity,
SDC coverage, performance; the two-rank collectives job starts in the background right after capabilities and is
collected at the end. Each stage logs a line when it starts and one with its status and time when it ends.
"""

from __future__ import annotations

import math
import platform
import time
import traceback
from pathlib import Path
from typing import Any, Callable

import torch

from turnout import atomic
from turnout.backend import Backend, TargetError, get_backend
from turnout.backend.spec import DTYPES
from turnout.config import Config, ConfigError
from turnout.errors import one_line
from turnout.qualify import collectives
from turnout.qualify.blocks import block_parity
from turnout.qualify.capabilities import check_capabilities
from turnout.qualify.determinism import determinism
from turnout.qualify.numerics import MAXREL_FACTOR, NORM_FACTOR, RATIO_FACTOR, RATIO_FLOOR
from turnout.qualify.ops import conformance
from turnout.qualify.perf import performance
from turnout.qualify.sdc_coverage import coverage_stage
from turnout.qualify.stage import Log, StageResult
from turnout.qualify.trace import trace_step
from turnout.qualify.training import FLOOR_ULPS, NOISE_ULPS, SAFETY, training_parity
from turnout.qualify.verdict import decide
from turnout.qualify.coverage import covers
from turnout.qualify.workload import Settings, Workload, load_foreign, load_workload
from turnout.report.qualify_page import write_qualify_report
from turnout.report.rundir import QualifyDir
from turnout.train.build import model_args, refusals

STAGES = (("capabilities", "Capabilities"), ("ops", "Op conformance"), ("blocks", "Block parity"),
          ("determinism", "Determinism"), ("training", "Training parity"), ("sdc", "SDC coverage"),
          ("collectives", "Collectives"), ("perf", "Performance"))
SCHEMA = 1
# The pass bars the stages apply, recorded in qualify.json so the page (and any later reader) can state them.
RULES = {"ratio_factor": RATIO_FACTOR, "ratio_floor": RATIO_FLOOR, "maxrel_factor": MAXREL_FACTOR,
         "norm_factor": NORM_FACTOR, "band_safety": SAFETY, "band_floor_ulps": FLOOR_ULPS, "noise_ulps": NOISE_ULPS}


class _Runner:
    """Runs stages with progress lines and timing; a stage that crashes becomes a failed stage, not a crash."""

    def __init__(self, log: Log):
        self.log = log
        self.results: dict[str, StageResult] = {}

    def __call__(self, name: str, fn: Callable[[], StageResult], what: str = "") -> StageResult:
        i = [n for n, _ in STAGES].index(name) + 1
        title = dict(STAGES)[name]
        self.log(f"qualify [{i}/{len(STAGES)}] {title.lower()}{' (' + what + ')' if what else ''} ...")
        t0 = time.perf_counter()
        try:
            st = fn()
        except (ConfigError, TargetError, KeyboardInterrupt):
            raise
        except Exception as e:  # noqa: BLE001 - report it as the stage's failure, keep the other stages
            st = StageResult(name, title)
            st.find("stage_error", f"{title.lower()} could not complete: {one_line(e)}")
            st.evidence["traceback"] = traceback.format_exc().splitlines()[-12:]
        if not st.seconds:
            st.seconds = time.perf_counter() - t0
        self.results[name] = st
        self.log(f"qualify [{i}/{len(STAGES)}] {title.lower()}: {st.status.upper()} in {st.seconds:.1f} s"
                 f"{' - ' + st.summary if st.summary else ''}")
        return st

    def skip(self, name: str, why: str) -> None:
        self.results[name] = StageResult(name, dict(STAGES)[name]).skip(why)
        i = [n for n, _ in STAGES].index(name) + 1
        self.log(f"qualify [{i}/{len(STAGES)}] {dict(STAGES)[name].lower()}: SKIPPED - {why}")


def qualify(config: Config, target: str | Backend, out_dir: str | Path, *, reference: str | Backend = "cpu",
            settings: Settings | None = None, log: Log | None = print, config_path: str | None = None,
            model: str | None = None) -> dict:
    """Qualify `target` for `config` against `reference`; writes OUT/qualify.json and OUT/report.html and returns
    the qualify.json dict. `model`: "hf:DIR", a transformers causal LM to qualify instead of the configured model
    (the config's train section still sets the dtype, schedule and seed). Bad specs raise TargetError, bad configs
    (or a reference that refuses it) ConfigError, a model folder that does not load CheckpointError."""
    settings = (settings or Settings()).check()
    log = log or (lambda _msg: None)
    tgt = target if isinstance(target, Backend) else get_backend(target)
    ref = reference if isinstance(reference, Backend) else get_backend(reference)
    foreign = load_foreign(model, config.train.seed) if model else None  # before anything is written
    params = sum(p.numel() for p in foreign[0].parameters()) if foreign else None
    ref_refusals = refusals(ref, config, params=params)  # a bad preset or override is a ConfigError before anything
    if ref_refusals:
        raise ConfigError(f"reference {ref.name} refuses this config: " + "; ".join(ref_refusals))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    started, t0 = time.time(), time.perf_counter()
    threads = torch.get_num_threads()
    if settings.threads:
        torch.set_num_threads(settings.threads)
    try:
        runner = _Runner(log)
        work = _stages(runner, config, tgt, ref, settings, out, log, foreign, params)
    finally:
        torch.set_num_threads(threads)
    stages = [runner.results[n] for n, _ in STAGES]
    verdict, reasons = decide(stages, tgt.name)
    covered = covers(work, runner.results.get("ops"), tgt, config) if work is not None else None
    result = {
        "schema": SCHEMA, "target": tgt.name, "reference": ref.name, "verdict": verdict, "reasons": reasons,
        "model": covered["model"] if covered else None, "covers": covered,
        "fingerprint": covered["fingerprint"] if covered else None,
        "warnings": [f"{st.name}: {w}" for st in stages for w in st.warnings],
        "findings": [f.to_dict() for st in stages for f in st.findings],
        "stages": {st.name: st.to_dict() for st in stages},
        "config": config.to_dict(), "config_path": config_path, "settings": settings.to_dict(),
        "started": started, "seconds": time.perf_counter() - t0, "torch": torch.__version__,
        "host": f"{platform.system()} {platform.machine()} {platform.processor()}".strip(),
        "sim": _sim_record(tgt),
        "rules": RULES,
    }
    qdir, doc = QualifyDir(out), _clean(result)  # doc: plain JSON values, what the file holds and the page reads
    atomic.write_json(qdir.result, doc)
    write_qualify_report(qdir, doc)
    return result


def _exchange(config: Config, foreign: tuple | None) -> tuple[int, int] | None:
    """The expert-parallel exchange's size for the configured model (None for a model without routed experts)."""
    if foreign is not None:
        return None
    a = model_args(config)
    if a.n_layers <= a.n_dense_layers:
        return None
    tokens = config.train.batch_size // collectives.WORLD * config.train.seq_len
    return collectives.exchange_for(a.dim, a.n_routed_experts, a.n_activated_experts, tokens)


def _stages(run: _Runner, config: Config, tgt: Backend, ref: Backend, s: Settings, out: Path, log: Log,
            foreign: tuple | None, params: int | None) -> Workload | None:
    caps = run("capabilities", lambda: check_capabilities(config, tgt, params), tgt.name)
    if caps.findings:
        why = "not run: " + caps.findings[0].message
        for name, _ in STAGES[1:]:
            run.skip(name, why)
        return None
    dtype_name = tgt.compute_dtype_name(config)
    dtype = DTYPES[dtype_name]
    job = collectives.start(tgt, out, s.collectives_timeout, _exchange(config, foreign)) if s.collectives else None
    work: Workload = load_workload(config, s, log=lambda m: log(f"  {m}"), model=foreign)
    d = work.describe()
    log(f"  model: {d['architecture']} from {d['source']}, {d['params']:,} parameters, {d['blocks']} blocks; "
        f"kernels: {', '.join(f'{k}={v}' for k, v in d['kernels'].items())}")
    host = get_backend("cpu")
    run("ops", lambda: conformance(trace_step(work, host, dtype), tgt, ref, work.config.train.seed),
        f"{tgt.name} vs {ref.name} vs float64")
    run("blocks", lambda: block_parity(work, tgt, ref, dtype))
    run("determinism", lambda: determinism(work, tgt, step=s.steps + 1), f"{s.determinism_repeats} runs of a step")
    train = run("training", lambda: training_parity(work, tgt, ref, ref.compute_dtype_name(config),
                                                    log=lambda m: log(f"  {m}")),
                f"{s.steps} steps, {work.tokens_per_step} tokens each")
    run("sdc", lambda: coverage_stage(work, tgt, s), f"{s.sdc_flips} bit flips over {s.sdc_steps} steps")
    if job is None:
        run.skip("collectives", "skipped (--skip-collectives)")
    else:  # collected before perf, so that its two ranks are gone before anything is timed
        run("collectives", lambda: collectives.finish(job, tgt, s.collectives_timeout),
            job.skipped or f"2 ranks via {tgt.collective}")
    run("perf", lambda: performance(work, tgt, ref, dtype_name, run.results.get("ops"), train))
    return work


def _sim_record(tgt: Backend) -> dict | None:
    """For an emulated target: its profile and what it injected during qualification (ground truth)."""
    events = getattr(tgt, "events", None)
    if events is None:
        return None
    kinds: dict[str, int] = {}
    for e in events:
        kinds[e["kind"]] = kinds.get(e["kind"], 0) + 1
    return {"profile": str(tgt.profile.path), "description": tgt.profile.description, "injected": kinds,
            "counts": getattr(tgt, "counts", {}),
            "events": [{k: e[k] for k in ("step", "kind", "op", "detail")} for e in events[:50]]}


def _clean(v: Any) -> Any:
    """JSON-safe: non-finite floats become strings ("inf", "nan"), tuples lists, unknown objects their str()."""
    if isinstance(v, float):
        return v if math.isfinite(v) else str(v)
    if isinstance(v, dict):
        return {str(k): _clean(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_clean(x) for x in v]
    if v is None or isinstance(v, (bool, int, str)):
        return v
    return str(v)
