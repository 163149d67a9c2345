"""Stage 1, capabilities: is the target there, which dtypes really run, memory, collectives, and does it refuse
the config? A refusal stops qualification here (verdict unfit) with the target's own reasons."""

from __future__ import annotations

from turnout.backend import Backend
from turnout.config import Config
from turnout.qualify.stage import StageResult
from turnout.train.build import param_count, refusals


def check_capabilities(config: Config, target: Backend, params: int | None = None) -> StageResult:
    """Probe `target` and ask it whether it can run `config` on one device (`params`: the parameter count of a
    model the config does not describe)."""
    st = StageResult("capabilities", "Capabilities")
    ok, detail = target.availability()
    ev = st.evidence
    ev.update({"available": ok, "detail": detail, "device_type": target.device_type, "collective": target.collective})
    if not ok:
        st.find("unavailable", f"target {target.name} is not available: {detail}")
        st.summary = "target not available"
        return st
    probes = target.probe_dtypes()
    ev["dtypes"] = {name: {"works": err is None, "error": err} for name, err in probes.items()}
    ev["device_name"] = target.device_name()
    ev["device_count"] = target.device_count()
    ev["memory"] = target.memory_stats()
    ev["compute_dtype"] = target.compute_dtype_name(config)
    ev["params"] = param_count(config) if params is None else params
    reasons = refusals(target, config, params=params)
    ev["refusals"] = reasons
    for r in reasons:
        st.find("refused", f"{target.name} refuses this config: {r}")
    broken = [n for n, err in probes.items() if err is not None]
    if broken:
        st.warnings.extend(f"dtype {n} does not run on {target.name}: {probes[n]}" for n in broken)
    works = [n for n, err in probes.items() if err is None]
    st.summary = (f"{', '.join(works) or 'no dtype'} run; computes in {ev['compute_dtype']}; "
                  f"collectives via {target.collective}" + (f"; REFUSED: {'; '.join(reasons)}" if reasons else ""))
    return st
