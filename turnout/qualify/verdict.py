"""The verdict: what each kind of finding costs, in one table, and the reasons that decided it.

    unfit           cannot be trusted at all: the target is absent or refuses the config; an op serving needs fails
                    or is missing (forward conformance); a block's forward output is off; the device faults (lost,
                    hung) in a forward stage or gives different results for the same step (nondeterministic /
                    corrupt); collectives return wrong values
    inference-only  serving works but training does not: an op only training runs fails or is missing (backward
                    kernels, the fused loss), a gradient is off (op autograd, block or whole-model gradients),
                    training parity leaves the reference band, the device is lost or hangs only under training,
                    the product checksums fail on clean steps (a checked run could not train), training is too
                    slow to be usable, or collectives hang or fail (no data-parallel training)
    train-ready     no finding at all (warnings -- host fallbacks, slow dtypes the run does not use, needing
                    deterministic mode -- are reported but do not decide)
"""

from __future__ import annotations

from turnout.qualify.stage import Finding, StageResult

TRAIN_READY, INFERENCE_ONLY, UNFIT = "train-ready", "inference-only", "unfit"
VERDICTS = (TRAIN_READY, INFERENCE_ONLY, UNFIT)

LEVELS: dict[str, str] = {
    "unavailable": UNFIT,
    "refused": UNFIT,
    "forward_conformance": UNFIT,
    "missing_inference_op": UNFIT,
    "block_forward": UNFIT,
    "device_error": UNFIT,
    "corrupt": UNFIT,
    "nondeterministic": UNFIT,
    "collectives_corrupt": UNFIT,
    "stage_error": UNFIT,
    "training_conformance": INFERENCE_ONLY,
    "backward_conformance": INFERENCE_ONLY,
    "missing_training_op": INFERENCE_ONLY,
    "block_gradients": INFERENCE_ONLY,
    "model_gradients": INFERENCE_ONLY,
    "training_parity": INFERENCE_ONLY,
    "training_device_error": INFERENCE_ONLY,
    "checksum_false_alarms": INFERENCE_ONLY,
    "too_slow": INFERENCE_ONLY,
    "collectives_hang": INFERENCE_ONLY,
    "collectives_error": INFERENCE_ONLY,
}
_RANK = {TRAIN_READY: 0, INFERENCE_ONLY: 1, UNFIT: 2}


def level(f: Finding) -> str:
    """The verdict a finding forces (unknown kinds count as unfit: never certify what was not understood)."""
    return LEVELS.get(f.kind, UNFIT)


def decide(stages: list[StageResult], target: str) -> tuple[str, list[str]]:
    """(verdict, the reasons that decided it) from every stage's findings."""
    findings = [f for st in stages for f in st.findings]
    if not findings:
        ran = [st.title.lower() for st in stages if st.status == "pass"]
        return TRAIN_READY, [f"{target} passes every stage that ran ({', '.join(ran)}) within the reference's "
                             f"tolerances"]
    worst = max((level(f) for f in findings), key=_RANK.__getitem__)
    return worst, [f"{f.stage}: {f.message}" for f in findings if level(f) == worst]


def satisfies(verdict: str, require: str | None) -> bool:
    """Does `verdict` meet `--require train|inference` (None: anything does)?"""
    if require is None:
        return True
    need = {"train": TRAIN_READY, "inference": INFERENCE_ONLY}[require]
    return _RANK[verdict] <= _RANK[need]
