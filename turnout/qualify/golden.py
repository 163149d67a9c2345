"""Golden reference curves: the reference target's training-parity run, stored once and reused by later runs.

A golden file holds the reference's loss and per-layer gradient-norm curves *and* their spread under a 1-ulp
weight perturbation (the tolerance band is rebuilt from it), keyed by everything that changes them: the
qualification config (model, data, schedule, batch), the data's identity, the number of steps, the reference
spec and compute dtype, and the torch version. Like torchtitan's tests/assets/losses/*.txt, but self-describing.

Lookup order: the user's golden folder (`--golden DIR`, $TURNOUT_GOLDEN_DIR, ~/.cache/turnout/golden), then the
files shipped in turnout/qualify/golden/. New files are written (atomically) to the user's folder only.
"""

from __future__ import annotations

import hashlib
import json
import platform
import time
from pathlib import Path

import torch

from turnout import atomic

SHIPPED = Path(__file__).parent / "golden"
FORMAT = 1


def golden_key(workload_key: dict, reference: str, dtype: str) -> tuple[str, dict]:
    """(hex key, the dict it hashes) for one reference run of one workload."""
    ident = {"format": FORMAT, "workload": workload_key, "reference": reference, "dtype": dtype,
             "torch": torch.__version__}
    digest = hashlib.sha256(json.dumps(ident, sort_keys=True, default=str).encode()).hexdigest()[:20]
    return digest, ident


def _name(reference: str, key: str) -> str:
    safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in reference)[:40]
    return f"{safe}-{key}.json"


def find_golden(folder: Path, reference: str, key: str, shipped: bool = True) -> tuple[dict, Path] | None:
    """The stored curve for `key` (user folder first, then shipped), or None; unreadable files are ignored."""
    for base in (folder, SHIPPED) if shipped else (folder,):
        path = base / _name(reference, key)
        if path.is_file():
            try:
                data = json.loads(path.read_text())
            except (OSError, ValueError):
                continue
            if data.get("key") == key and data.get("format") == FORMAT:
                return data, path
    return None


def save_golden(folder: Path, reference: str, key: str, ident: dict, curve: dict) -> Path:
    """Write a golden file atomically (temp file + rename) and return its path."""
    folder.mkdir(parents=True, exist_ok=True)
    data = {"format": FORMAT, "key": key, "ident": ident, "created": time.time(),
            "host": platform.machine() + " " + (platform.processor() or ""), **curve}
    return atomic.write_json(folder / _name(reference, key), data, indent=None)
