"""The manifest every checkpoint carries: enough to rebuild the model anywhere and to trust the files.

`manifest.json` lives beside the DCP shards in `RUN/checkpoints/step-N/`. It records model args, the run
config, the target, torch version, world size, step, global sample index, RNG states (base64 of the raw
generator bytes), the sha256 of every other file in the folder, and the sha256 of its own content (`digest`,
over every other field in canonical JSON), so an edited manifest (a rewound `samples`, say) is refused like an
altered shard.
"""

from __future__ import annotations

import base64
import hashlib
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from turnout import atomic
from turnout.errors import CheckpointError  # one error type for every checkpoint problem, HF or ours
from turnout.report.rundir import MANIFEST

FORMAT = "turnout-checkpoint/1"


@dataclass
class Manifest:
    """What a checkpoint is: provenance, position in the run, and file hashes."""

    step: int
    samples: int  # global sample index: the next sample the sampler hands out
    model_args: dict
    config: dict
    target: str
    world_size: int
    torch_version: str = field(default_factory=lambda: torch.__version__)
    format: str = FORMAT
    time: float = field(default_factory=time.time)
    rng: dict = field(default_factory=dict)  # name -> base64 of a uint8 generator state
    files: dict = field(default_factory=dict)  # relative path -> sha256
    extra: dict = field(default_factory=dict)  # loop state that is not tensors (health, lr scale, losses, ...)
    fingerprint: dict = field(default_factory=dict)  # the run's numerics fingerprint (turnout.train.fingerprint)
    digest: str = ""  # sha256 of every other field (see content_digest); set by write_manifest

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1, sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict, where: str = "manifest") -> "Manifest":
        if d.get("format") != FORMAT:
            raise CheckpointError(f"{where}: unknown format {d.get('format')!r} (expected {FORMAT})")
        known = set(cls.__dataclass_fields__)
        missing = [k for k in ("step", "samples", "model_args", "config", "target", "world_size") if k not in d]
        if missing:
            raise CheckpointError(f"{where}: missing field(s) {', '.join(missing)}")
        return cls(**{k: v for k, v in d.items() if k in known})

    def rng_tensors(self) -> dict[str, torch.Tensor]:
        return {k: torch.frombuffer(bytearray(base64.b64decode(v)), dtype=torch.uint8) for k, v in self.rng.items()}


def encode_rng(state: dict[str, torch.Tensor]) -> dict[str, str]:
    """Generator states (uint8 tensors) as base64 strings for JSON."""
    return {k: base64.b64encode(v.cpu().to(torch.uint8).numpy().tobytes()).decode() for k, v in state.items()}


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def hash_folder(folder: Path) -> dict[str, str]:
    """sha256 of every file below `folder` except the manifest, keyed by relative path."""
    return {str(p.relative_to(folder)): sha256_file(p) for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name != MANIFEST}


def content_digest(fields: dict) -> str:
    """sha256 of a manifest's fields other than `digest`, as canonical JSON (sorted keys, no spaces): the same
    for the dict written and the dict read back, since JSON round-trips every value a manifest holds."""
    body = {k: v for k, v in fields.items() if k != "digest"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def write_manifest(folder: Path, manifest: Manifest) -> None:
    """Hash the folder's files and then the manifest itself into it, and write it atomically."""
    manifest.files = hash_folder(folder)
    manifest.digest = content_digest(asdict(manifest))
    atomic.write_text(folder / MANIFEST, manifest.to_json())


def _read_raw(folder: Path) -> dict:
    path = Path(folder) / MANIFEST
    if not path.is_file():
        raise CheckpointError(f"{folder}: no {MANIFEST} (incomplete or not a turnout checkpoint)")
    try:
        raw = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path}: unreadable manifest ({e})") from None
    if not isinstance(raw, dict):
        raise CheckpointError(f"{path}: manifest is not a JSON object")
    return raw


def read_manifest(folder: Path) -> Manifest:
    """Read and parse a checkpoint's manifest (no hash check; see `verify`)."""
    return Manifest.from_dict(_read_raw(folder), str(Path(folder) / MANIFEST))


def verify(folder: Path) -> list[str]:
    """Problems that make a checkpoint untrustworthy: a missing/bad/edited manifest, missing, extra or altered
    files. A file that vanishes or cannot be read while it is checked is a problem too, never an exception."""
    folder = Path(folder)
    try:
        raw = _read_raw(folder)
        m = Manifest.from_dict(raw, str(folder / MANIFEST))
    except (CheckpointError, OSError, TypeError) as e:
        return [str(e) if isinstance(e, CheckpointError) else f"{folder / MANIFEST}: unreadable ({e})"]
    if raw.get("digest") != content_digest(raw):  # nothing an edited manifest says can be trusted
        return [f"{folder / MANIFEST}: its digest does not match its content (the manifest was edited or corrupted)"
                if raw.get("digest") else f"{folder / MANIFEST}: no digest of its own content"]
    problems = []
    if not m.files or not isinstance(m.files, dict):
        problems.append(f"{folder}: manifest lists no files")
    try:
        present = {str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file() and p.name != MANIFEST}
    except OSError:
        present = set()
    for rel, digest in sorted(m.files.items()):
        p = folder / rel
        try:
            ok = sha256_file(p) == digest if p.is_file() else None
        except OSError as e:
            problems.append(f"{p}: unreadable ({e.strerror or e})")
            continue
        if ok is None:
            problems.append(f"{p}: missing")
        elif not ok:
            problems.append(f"{p}: sha256 mismatch (file altered or corrupted)")
    for rel in sorted(present - set(m.files)):
        problems.append(f"{folder / rel}: not listed in the manifest")
    return problems


def describe(manifest: Manifest) -> dict[str, Any]:
    """Short summary for logs and events."""
    return {"step": manifest.step, "samples": manifest.samples, "target": manifest.target,
            "world_size": manifest.world_size, "torch": manifest.torch_version}
