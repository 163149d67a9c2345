"""turnout: train DeepSeek-V3-architecture models on accelerators you cannot fully trust yet.

Data flows one way: config -> backend -> model -> data -> ckpt -> train -> qualify / failover -> serve -> cli.
A module imports only modules before it in that order (tests/test_layering.py enforces it).
"""

__version__ = "0.1.0"
