"""Sim profiles: the TOML file that says what an emulated accelerator gets wrong, parsed and checked once.

`sim:NAME` finds `turnout/backend/profiles/NAME.toml`; `sim:path/to/file.toml` (anything ending in .toml or
containing a path separator) loads a user's file. Every problem raises `TargetError` with a one-line message
naming the file and the key, e.g. ``sim profile p.toml: fault[1].kind: unknown kind 'sdcc' (known: ...)``.

Schema (top level: one optional `[profile]` table and any number of `[[fault]]` tables, nothing else):

    [profile]  description: str, seed: int (default 0), dtype: "fp32"|"bf16"|"fp16" (default fp32),
               unsupported_dtypes: list of dtype names (any op touching them raises like a missing kernel)
    [[fault]]  kind, plus that kind's keys (`_KEYS`):
      lossy_accum       ops (default: MATMUL_OPS), precision (default "bf16")
      bad_backward      ops, error (outputs scaled by 1+error)
      missing_op        ops, fallback (default false), slowdown (default 10.0, >= 1)
      nondeterministic  ops, ulps (default 2: outputs times 1+k*eps, k in -ulps..ulps)
      sdc               ops, bit (default 22; taken mod the element width), trigger
      device_error      trigger, ops (default: any op)
      hang              trigger, seconds, ops (default: any op), error_after (default false: true raises
                        SimDeviceError once the hang ends, as a timed-out collective would)
    every kind also takes ranks = [..] (default: every rank): the fault exists only in these ranks' processes
    (RANK under torchrun; 0 in a single process), e.g. one replica's corrupted all_reduce result.
    trigger: exactly one of
      at_steps = [..]   fire at these steps
      every = K         fire at from_step, from_step+K, ... up to until_step
      rate = p          sdc: probability per matching op call; device_error / hang: per run of a step;
                        for steps in [from_step, until_step]
    and optionally call = k (the k-th matching op of the step, default 1; not with rate), repeat (default
    false: once per scheduled step, so re-running that step is clean; true: on every run of it), from_step
    (default 0) and until_step (default: none) with every or rate only.

`ops` entries name aten ops as 'mm', 'aten::mm' or 'aten.mm' (all overloads; 'index_add' also matches the
in-place 'index_add_'), or ops of other namespaces as 'c10d::allreduce'; unknown names are refused.
"""

from __future__ import annotations

import math
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from turnout.backend.spec import DTYPES, TargetError
from turnout.errors import one_line

PROFILE_DIR = Path(__file__).parent / "profiles"
FAULT_KINDS = ("lossy_accum", "bad_backward", "missing_op", "nondeterministic", "sdc", "device_error", "hang")
#: faults that fire at a step (the others act on every matching op call)
SCHEDULED_KINDS = ("sdc", "device_error", "hang")
#: ops lossy_accum applies to when a fault names none: every matmul-family aten op the CPU dispatches to
_NAMESPACES = ("aten", "c10d", "_c10d_functional", "prims")  # accepted as 'ns.op' besides 'ns::op'
MATMUL_OPS = ("mm", "bmm", "addmm", "baddbmm", "addbmm", "addmv", "mv", "dot", "_grouped_mm")

_TRIGGER_KEYS = {"at_steps": list, "every": int, "rate": float, "call": int, "repeat": bool, "from_step": int,
                 "until_step": int}
#: per kind: allowed keys -> expected type (float accepts ints); `kind` itself is implied
_KEYS: dict[str, dict[str, type]] = {
    "lossy_accum": {"ops": list, "precision": str, "ranks": list},
    "bad_backward": {"ops": list, "error": float, "ranks": list},
    "missing_op": {"ops": list, "fallback": bool, "slowdown": float, "ranks": list},
    "nondeterministic": {"ops": list, "ulps": int, "ranks": list},
    "sdc": {"ops": list, "bit": int, "ranks": list, **_TRIGGER_KEYS},
    "device_error": {"ops": list, "ranks": list, **_TRIGGER_KEYS},
    "hang": {"ops": list, "seconds": float, "error_after": bool, "ranks": list, **_TRIGGER_KEYS},
}
_REQUIRED = {"bad_backward": ("ops", "error"), "missing_op": ("ops",), "nondeterministic": ("ops",),
             "sdc": ("ops",), "hang": ("seconds",)}
_PROFILE_KEYS = {"description": str, "seed": int, "dtype": str, "unsupported_dtypes": list}


@dataclass(frozen=True)
class Fault:
    """One `[[fault]]` table, checked. `ops` holds normalised aten packet names; empty means any op."""

    kind: str
    index: int  # position in the file, so records can say which fault fired
    ops: tuple[str, ...] = ()
    precision: str = "bf16"
    error: float = 0.0
    fallback: bool = False
    slowdown: float = 10.0
    ulps: int = 2
    bit: int = 22
    seconds: float = 0.0
    error_after: bool = False
    at_steps: tuple[int, ...] = ()
    every: int | None = None
    rate: float | None = None
    call: int = 1
    repeat: bool = False
    from_step: int = 0
    until_step: int | None = None
    ranks: tuple[int, ...] = ()  # empty: every rank

    @property
    def label(self) -> str:
        return f"fault[{self.index}] {self.kind}"


@dataclass(frozen=True)
class Profile:
    """A loaded profile: where it came from, what it pretends to be, and its faults in file order."""

    name: str
    path: Path
    description: str
    seed: int = 0
    dtype: str = "fp32"
    unsupported_dtypes: tuple[str, ...] = ()
    faults: tuple[Fault, ...] = field(default_factory=tuple)


def op_name(name: str) -> str:
    """Normalise an op name to its overload packet, in-place variant folded in: 'aten::index_add_',
    'aten.index_add.default' and 'index_add_' -> 'index_add'; other namespaces keep theirs ('c10d::allreduce')."""
    ns = "aten"
    if "::" in name:
        ns, name = name.split("::", 1)
    elif name.split(".", 1)[0] in _NAMESPACES and "." in name:
        ns, name = name.split(".", 1)
    name = name.split(".", 1)[0]  # drop an overload suffix (.default, .out, ...): all overloads match
    if name.endswith("_") and not name.endswith("__"):
        name = name[:-1]
    return name if ns == "aten" else f"{ns}::{name}"


def _op_exists(norm: str) -> bool:
    ns, _, base = norm.rpartition("::")
    space = getattr(torch.ops, ns or "aten")
    return any(hasattr(space, n) for n in (base, base + "_"))


def shipped_names() -> list[str]:
    return sorted(p.stem for p in PROFILE_DIR.glob("*.toml"))


def resolve(ref: str) -> Path:
    """The file a profile reference names: a path (ends in .toml or has a separator) or a shipped name."""
    if ref.endswith(".toml") or "/" in ref or os.sep in ref:
        path = Path(ref).expanduser()
        if not path.is_file():
            raise TargetError(f"sim profile file not found: {ref}")
        return path
    path = PROFILE_DIR / f"{ref}.toml"
    if not path.is_file():
        raise TargetError(f"unknown sim profile {ref!r}; shipped profiles: {', '.join(shipped_names())} "
                          f"(or give a path to a .toml file)")
    return path


def load_profile(ref: str) -> Profile:
    """Load and check the profile `ref` names (shipped name or path). Raises TargetError."""
    path = resolve(ref)
    where = f"sim profile {path}"
    try:
        raw = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as e:
        raise TargetError(f"{where}: invalid TOML: {one_line(str(e))}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise TargetError(f"{where}: cannot read: {e}") from None
    for key in raw:
        if key not in ("profile", "fault"):
            raise TargetError(f"{where}: {key}: unknown key (known: profile, fault)")
    head = raw.get("profile", {})
    if not isinstance(head, dict):
        raise TargetError(f"{where}: profile: expected a [profile] table, got {head!r}")
    for key, value in head.items():
        if key not in _PROFILE_KEYS:
            raise TargetError(f"{where}: profile.{key}: unknown key (known: {', '.join(_PROFILE_KEYS)})")
        _check_type(where, f"profile.{key}", value, _PROFILE_KEYS[key])
    dtype = head.get("dtype", "fp32")
    _check_dtype(where, "profile.dtype", dtype)
    unsupported = head.get("unsupported_dtypes", [])
    for i, name in enumerate(unsupported):
        _check_dtype(where, f"profile.unsupported_dtypes[{i}]", name)
    if dtype in unsupported:
        raise TargetError(f"{where}: profile.dtype: {dtype!r} is also listed in profile.unsupported_dtypes")
    faults = raw.get("fault", [])
    if not isinstance(faults, list) or not all(isinstance(f, dict) for f in faults):
        raise TargetError(f"{where}: fault: expected [[fault]] tables")
    name = path.stem if path.parent.resolve() == PROFILE_DIR.resolve() else str(path)
    return Profile(name=name, path=path, description=head.get("description", f"sim profile {name}"),
                   seed=head.get("seed", 0), dtype=dtype, unsupported_dtypes=tuple(unsupported),
                   faults=tuple(_fault(where, i, f) for i, f in enumerate(faults)))


def _check_type(where: str, key: str, value: Any, typ: type) -> None:
    if typ is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    elif typ is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    else:
        ok = isinstance(value, typ)
    if not ok:
        want = {float: "a number", int: "an integer", bool: "true or false", str: "a string", list: "a list"}[typ]
        raise TargetError(f"{where}: {key}: expected {want}, got {value!r}")


def _check_dtype(where: str, key: str, value: Any) -> None:
    if not isinstance(value, str) or value not in DTYPES:
        raise TargetError(f"{where}: {key}: expected one of {', '.join(DTYPES)}, got {value!r}")


def _fail(where: str, key: str, why: str) -> None:
    raise TargetError(f"{where}: {key}: {why}")


def _fault(where: str, i: int, raw: dict) -> Fault:
    """Check one [[fault]] table against its kind's keys; return the Fault."""
    at = f"fault[{i}]"
    kind = raw.get("kind")
    if kind is None:
        _fail(where, f"{at}.kind", f"missing (one of {', '.join(FAULT_KINDS)})")
    if kind not in FAULT_KINDS:
        _fail(where, f"{at}.kind", f"unknown kind {kind!r} (known: {', '.join(FAULT_KINDS)})")
    keys = _KEYS[kind]
    for key, value in raw.items():
        if key == "kind":
            continue
        if key not in keys:
            _fail(where, f"{at}.{key}", f"unknown key for kind {kind} (known: kind, {', '.join(keys)})")
        _check_type(where, f"{at}.{key}", value, keys[key])
    for key in _REQUIRED.get(kind, ()):
        if key not in raw:
            _fail(where, f"{at}.{key}", f"required for kind {kind}")
    args: dict[str, Any] = {k: v for k, v in raw.items() if k != "kind"}
    args["ops"] = _ops(where, at, raw.get("ops", list(MATMUL_OPS) if kind == "lossy_accum" else []))
    if kind == "lossy_accum":
        _check_dtype(where, f"{at}.precision", args.get("precision", "bf16"))
    if kind == "missing_op" and args.get("slowdown", 10.0) < 1:
        _fail(where, f"{at}.slowdown", f"expected a number >= 1, got {args['slowdown']!r}")
    if kind == "nondeterministic" and args.get("ulps", 2) < 1:
        _fail(where, f"{at}.ulps", f"expected an integer >= 1, got {args['ulps']!r}")
    if kind == "sdc" and not 0 <= args.get("bit", 22) <= 63:
        _fail(where, f"{at}.bit", f"expected an integer in [0, 63], got {args['bit']!r}")
    if kind == "hang" and args["seconds"] <= 0:
        _fail(where, f"{at}.seconds", f"expected a number > 0, got {args['seconds']!r}")
    if kind in SCHEDULED_KINDS:
        _check_trigger(where, at, args)
    for key in ("error", "slowdown", "seconds", "rate"):
        if key in args:
            args[key] = float(args[key])
    if "at_steps" in args:
        args["at_steps"] = tuple(args["at_steps"])
    if "ranks" in args:
        ranks = args["ranks"]
        if not ranks or not all(isinstance(r, int) and not isinstance(r, bool) and r >= 0 for r in ranks):
            _fail(where, f"{at}.ranks", f"expected a non-empty list of integers >= 0, got {ranks!r}")
        args["ranks"] = tuple(ranks)
    return Fault(kind=kind, index=i, **args)


def _ops(where: str, at: str, ops: list) -> tuple[str, ...]:
    """Normalised op names, each checked to be an aten op (a typo would otherwise silently inject nothing)."""
    out = []
    for j, name in enumerate(ops):
        if not isinstance(name, str) or not name:
            _fail(where, f"{at}.ops[{j}]", f"expected an op name, got {name!r}")
        norm = op_name(name)
        if not _op_exists(norm):
            _fail(where, f"{at}.ops[{j}]", f"{name!r} is not an aten op (nor a namespaced one, e.g. c10d::allreduce)")
        out.append(norm)
    return tuple(dict.fromkeys(out))


def _check_trigger(where: str, at: str, args: dict) -> None:
    """Exactly one of at_steps / every / rate, and only the companions that make sense with it."""
    given = [k for k in ("at_steps", "every", "rate") if k in args]
    if len(given) != 1:
        _fail(where, at, f"needs exactly one of at_steps, every, rate (got {', '.join(given) or 'none'})")
    if "at_steps" in args:
        steps = args["at_steps"]
        if not steps or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in steps):
            _fail(where, f"{at}.at_steps", f"expected a non-empty list of integers >= 0, got {steps!r}")
        for key in ("from_step", "until_step"):
            if key in args:
                _fail(where, f"{at}.{key}", "applies only with every or rate")
    if "every" in args and args["every"] < 1:
        _fail(where, f"{at}.every", f"expected an integer >= 1, got {args['every']!r}")
    if "rate" in args:
        if not 0 <= args["rate"] <= 1:
            _fail(where, f"{at}.rate", f"expected a number in [0, 1], got {args['rate']!r}")
        for key in ("call", "repeat"):
            if key in args:
                _fail(where, f"{at}.{key}", "does not apply with rate (rate draws afresh on every call or run)")
    if args.get("call", 1) < 1:
        _fail(where, f"{at}.call", f"expected an integer >= 1, got {args['call']!r}")
    if args.get("from_step", 0) < 0:
        _fail(where, f"{at}.from_step", f"expected an integer >= 0, got {args['from_step']!r}")
    if "until_step" in args and args["until_step"] < args.get("from_step", 0):
        _fail(where, f"{at}.until_step", f"{args['until_step']} is before from_step={args.get('from_step', 0)}")
