"""The accelerator seam. `get_backend(spec)` returns the one object that knows a target's device."""

from turnout.backend.interface import Backend
from turnout.backend.registry import default_spec, get_backend, known_targets, shipped_profiles
from turnout.backend.spec import DTYPES, TargetError, TargetSpec, canonical_spec, parse_spec

__all__ = ["Backend", "DTYPES", "TargetError", "TargetSpec", "canonical_spec", "default_spec", "get_backend",
           "known_targets", "parse_spec", "shipped_profiles"]
