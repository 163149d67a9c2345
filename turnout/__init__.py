"""turnout: train DeepSeek-V3-architecture models on accelerators you cannot fully trust yet.

Data flows one way: config -> backend -> model -> data -> ckpt -> train -> qualify / failover -> serve -> cli.
A module imports only modules before it in that order (tests/test_layering.py enforces it).
"""

__version__ = "0.1.0"


def __getattr__(name: str):
    """`from turnout import Guard` (and HealthSection) without importing torch on `import turnout`."""
    if name in ("Guard", "GuardStep", "TargetUntrusted"):
        import turnout.guard

        return getattr(turnout.guard, name)
    if name == "HealthSection":
        from turnout.config import HealthSection

        return HealthSection
    raise AttributeError(f"module 'turnout' has no attribute {name!r}")
