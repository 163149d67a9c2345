"""The numerics fingerprint: what a qualification verdict is a statement about.

A verdict holds for the op set that was traced, and that depends on the model (architecture and shapes), the
kernels it was run with (blocked or fused attention call different ops), the compute dtype, the device and the
software under it (torch, the device runtime and driver, the CPU's vector ISA). qualify.json, every checkpoint
manifest and every serving certificate carry one; `differences` says why a run or a server does not match the
qualified one, so that a verdict is never quoted for numerics it did not see.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch

from turnout.backend import Backend
from turnout.report.rundir import QualifyDir

#: config keys of a transformers model that change no number it computes
_HF_NOT_MODEL = ("architectures", "transformers_version", "torch_dtype", "dtype", "_name_or_path", "use_cache",
                 "output_router_logits")


def model_identity(model: torch.nn.Module) -> dict:
    """Architecture and a digest of the shape-defining configuration (not the weights: training moves them)."""
    inner = getattr(model, "module", model)
    if hasattr(inner, "hf"):  # turnout.model.foreign.HFCausalLM
        raw = {k: v for k, v in inner.hf.config.to_dict().items() if k not in _HF_NOT_MODEL and not k.startswith("_")}
    elif hasattr(inner, "args"):  # turnout's Transformer: its args less the kernel choices (reported on their own)
        kernels = set(getattr(inner, "kernels", {}))
        raw = {k: v for k, v in inner.args.to_dict().items() if k not in kernels}
    else:
        raw = {"class": type(inner).__name__, "shapes": {n: list(p.shape) for n, p in inner.named_parameters()}}
    digest = hashlib.sha256(json.dumps(raw, sort_keys=True, default=str).encode()).hexdigest()[:16]
    return {"architecture": getattr(inner, "architecture", type(inner).__name__), "config_sha256": digest}


def numerics_fingerprint(model: torch.nn.Module, backend: Backend, dtype: str) -> dict:
    """The fingerprint of `model` computing in `dtype` (a name: fp32, bf16, ...) on `backend`."""
    inner = getattr(model, "module", model)
    return {"model": model_identity(inner), "kernels": dict(getattr(inner, "kernels", {})), "dtype": dtype,
            "device": backend.device_name(), "software": backend.software()}


def differences(qualified: dict, ours: dict) -> list[str]:
    """Why `ours` is not the fingerprint a verdict was given for (empty: the verdict applies)."""
    out = []
    qm, om = qualified.get("model", {}), ours.get("model", {})
    if qm.get("architecture") != om.get("architecture"):
        out.append(f"model {om.get('architecture')} is not the qualified {qm.get('architecture')}")
    elif qm.get("config_sha256") != om.get("config_sha256"):
        out.append(f"the {om.get('architecture')} model's configuration differs from the qualified one")
    for key in sorted(set(qualified.get("kernels", {})) | set(ours.get("kernels", {}))):
        a, b = qualified.get("kernels", {}).get(key), ours.get("kernels", {}).get(key)
        if a != b:
            out.append(f"kernel {key}={b} (qualified with {a})")
    for key in ("dtype", "device"):
        if qualified.get(key) != ours.get(key):
            out.append(f"{key} {ours.get(key)} (qualified: {qualified.get(key)})")
    qs, os_ = qualified.get("software", {}), ours.get("software", {})
    for key in sorted(set(qs) | set(os_)):
        if qs.get(key) != os_.get(key):
            out.append(f"{key} {os_.get(key)} (qualified: {qs.get(key)})")
    return out


def read_qualification(path: str | Path) -> dict:
    """qualify.json (or the folder holding it) as a dict; ValueError naming the file when it is not one."""
    p = Path(path).expanduser()
    p = QualifyDir(p).result if p.is_dir() else p
    try:
        doc = json.loads(p.read_text())
    except (OSError, ValueError) as e:
        raise ValueError(f"{p}: not a readable qualify.json ({e})") from None
    if not isinstance(doc, dict) or "verdict" not in doc:
        raise ValueError(f"{p}: not a qualify.json (key 'verdict' missing)")
    if not isinstance(doc.get("fingerprint"), dict):
        raise ValueError(f"{p}: key 'fingerprint' missing (qualified by an older turnout: qualify again)")
    doc["path"] = str(p)
    return doc


def applies(qualification: dict, ours: dict) -> tuple[bool, str]:
    """(whether the verdict applies, one line saying so) for a run or server with fingerprint `ours`."""
    why = differences(qualification["fingerprint"], ours)
    where = qualification.get("path", "the qualification")
    if not why:
        return True, (f"qualification {qualification['verdict']} of {qualification.get('target')} ({where}) applies "
                      f"to this model, kernels, dtype, device and software")
    return False, (f"qualification {qualification['verdict']} of {qualification.get('target')} ({where}) does NOT "
                   f"apply: " + "; ".join(why))
