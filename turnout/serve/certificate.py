"""Parity certificates: the verdict rule, the JSON file, and the check `turnout serve --require-certificate` makes.

Pass rule (teacher-forced numbers; every check must hold, and all logits must be finite):

    precision class   both targets compute in fp32      either computes in bf16/fp16
    top1_agreement    >= 0.99                           >= 0.95
    mean_kl           <= 1e-3                           <= 1e-2
    rel_mean_abs_diff <= 5e-5                           <= 5e-2

Why these numbers (measured with `turnout parity` on a 4-step `debug` checkpoint, 4 x 128 held-out tokens):

    b target / weights                   rel_mean_abs_diff   mean_kl    top1    verdict
    sim:healthy                          0                   0          1.0     pass
    sim:nondeterministic (ulp jitter)    1.7e-7              1.7e-15    1.0     pass
    absorbed vs expanded attention path  2.2e-7              ~1e-9      1.0     (fp32 rounding, for scale)
    sim:lossy-accum (bf16-rounded mm)    4.5e-4              1.1e-8     1.0     FAIL (fp32 class)
    cpu:bf16 (a bf16 copy)               5.5e-3              5.0e-6     1.0     pass (low-precision class)
    one tensor + N(0, its std) noise     5.4e-4              2.0e-8     1.0     FAIL

A near-uniform small model keeps top-1 agreement at 1.0 and KL far below 1e-3 even under bf16 rounding, so those
two checks alone would pass a lossy target; the relative logit error is what separates fp32 from bf16-level
arithmetic (~230x above fp32 rounding noise, ~9x below bf16 rounding). Deeper models accumulate more fp32 rounding;
these limits come from this small model only, so a real fp32 pair near 5e-5 calls for re-measuring, not for a
silently looser limit. Greedy continuations are reported, not
judged: near ties make them diverge legitimately. The sha256 binds the certificate to the weights; small weight
perturbations (1% noise in one tensor: ~7e-6) are below what logit parity can see and are caught by the hash.

Against an endpoint (`--b openai:URL`, endpoint_parity.py) the same rule reads the numbers of a top-K view: KL is
then a lower bound, and the endpoint's side must also pass the tokenizer check. Its precision class comes from
the dtype the endpoint is declared to compute in (`--endpoint-dtype`, fp32 unless stated: the strict class).

A certificate is valid for serving weights W on target T when it passed (under these thresholds, re-checked on
read), one side is (T, sha256 of W), and the other side's target is the one W was trained on.
"""

from __future__ import annotations

import json
import math
import re
import time
from pathlib import Path

import torch

from turnout import atomic
from turnout.backend import TargetError, canonical_spec
from turnout.config import ConfigError
from turnout.errors import one_line
from turnout.serve.loader import ModelIdentity

FORMAT = "turnout-parity/1"
THRESHOLDS = {
    "fp32": {"top1_agreement_min": 0.99, "mean_kl_max": 1e-3, "rel_mean_abs_diff_max": 5e-5},
    "low-precision": {"top1_agreement_min": 0.95, "mean_kl_max": 1e-2, "rel_mean_abs_diff_max": 5e-2},
}


class CertificateError(ConfigError):
    """No usable certificate (one line; `turnout serve` exits 2)."""


def precision_class(dtype_a: str, dtype_b: str) -> str:
    return "fp32" if dtype_a == dtype_b == "fp32" else "low-precision"


def judge(report: dict) -> tuple[bool, str, list[dict]]:
    """(passed, precision class, checks) for a parity report (run_parity's result or a certificate)."""
    cls = precision_class(report["a"]["dtype"], report["b"]["dtype"])
    lim = THRESHOLDS[cls]
    tf = report["teacher_forced"]

    def num(key: str) -> float:
        v = tf.get(key)
        return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else float("nan")

    checks = [
        {"name": "finite", "value": bool(tf.get("finite")), "rule": "all logits finite",
         "ok": tf.get("finite") is True},
        _check("top1_agreement", num("top1_agreement"), ">=", lim["top1_agreement_min"]),
        _check("mean_kl", num("mean_kl"), "<=", lim["mean_kl_max"]),
        _check("rel_mean_abs_diff", num("rel_mean_abs_diff"), "<=", lim["rel_mean_abs_diff_max"]),
    ]
    if "tokenizer" in report:  # an endpoint side: its tokenizer must make the model's ids
        tok = report["tokenizer"] if isinstance(report["tokenizer"], dict) else {}
        checks.insert(0, {"name": "tokenizer", "value": tok.get("ok") is True, "ok": tok.get("ok") is True,
                          "rule": "the endpoint tokenizes text into the model's ids"})
    return all(c["ok"] for c in checks), cls, checks


def _check(name: str, value: float, op: str, limit: float) -> dict:
    ok = not math.isnan(value) and (value >= limit if op == ">=" else value <= limit)
    return {"name": name, "value": value, "rule": f"{op} {limit:g}", "ok": ok}


def make_certificate(report: dict) -> dict:
    """The certificate body: the report plus format, verdict, thresholds and provenance."""
    passed, cls, checks = judge(report)
    return {"format": FORMAT, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "torch_version": torch.__version__, **report, "precision_class": cls,
            "thresholds": THRESHOLDS[cls], "checks": checks, "passed": passed}


def _slug(spec: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", spec).strip("_") or "target"


def default_path(identity: ModelIdentity, a: str, b: str) -> Path:
    return identity.certificate_dir / f"parity-{_slug(a)}-vs-{_slug(b)}.json"


def write_certificate(cert: dict, path: str | Path) -> Path:
    """Write atomically (temp file + rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return atomic.write_json(path, _finite(cert), allow_nan=False)


def _finite(obj):
    """Standard JSON: non-finite floats become null (judge() treats a missing number as failing)."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_finite(v) for v in obj]
    return obj


def read_certificate(path: str | Path) -> dict:
    try:
        cert = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise CertificateError(f"{path}: unreadable certificate ({e})") from None
    if not isinstance(cert, dict) or cert.get("format") != FORMAT:
        raise CertificateError(f"{path}: not a {FORMAT} certificate")
    return cert


def why_unusable(cert: dict, identity: ModelIdentity, target: str, trained_on: str) -> str | None:
    """None when `cert` lets `identity`'s weights serve on `target`; else the reason."""
    try:
        if "endpoint" in (cert["a"].get("kind"), cert["b"].get("kind")):
            return "certifies an inference endpoint, not a target turnout serves on"
        sides = {canonical_spec(cert["a"]["target"]): cert["a"], canonical_spec(cert["b"]["target"]): cert["b"]}
        if set(sides) != {target, trained_on}:
            return f"compares {cert['a']['target']} with {cert['b']['target']}"
        if sides[target].get("sha256") != identity.sha256:
            return f"was made for other weights (sha256 {str(sides[target].get('sha256'))[:12]})"
        passed, _, checks = judge(cert)
    except (KeyError, TypeError, AttributeError, TargetError) as e:
        return f"is malformed ({one_line(e)})"
    if not (passed and cert.get("passed") is True):
        failed = [f"{c['name']} {c['value']:.3g} not {c['rule']}" if isinstance(c["value"], float) else c["name"]
                  for c in checks if not c["ok"]]
        return "failed (" + ("; ".join(failed) or "marked failed") + ")"
    return None


def require_certificate(identity: ModelIdentity, target: str, extra: list[str | Path] = ()) -> Path | None:
    """The certificate that lets these weights serve on `target` (None when `target` is the trained-on target).

    Looks at `extra` files and every parity-*.json in identity.certificate_dirs; raises CertificateError naming
    what it found and the command that would make one."""
    if identity.trained_on is None:
        raise CertificateError(f"{identity.folder} does not record the target it was trained on (an HF directory "
                               f"has no manifest); pass --trained-on SPEC to say which target its certificate "
                               f"must compare against")
    target, trained_on = canonical_spec(target), canonical_spec(identity.trained_on)
    if target == trained_on:
        return None
    found = [Path(p) for p in extra] + [p for d in identity.certificate_dirs for p in sorted(d.glob("parity-*.json"))]
    reasons = []
    for path in found:
        try:
            reason = why_unusable(read_certificate(path), identity, target, trained_on)
        except CertificateError as e:
            reason = str(e)
        if reason is None:
            return path
        reasons.append(f"{path} {reason}")
    seen = f" ({'; '.join(reasons)})" if reasons else ""
    raise CertificateError(f"no passing parity certificate for these weights (sha256 {identity.sha256[:12]}) "
                           f"between {trained_on} (trained on) and {target}{seen}; make one with: turnout parity "
                           f"--model {identity.path} --a {trained_on} --b {target}")
