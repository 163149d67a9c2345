"""The package's import layering: config/atomic/errors -> report -> backend -> model -> data -> ckpt -> train ->
qualify/failover/guard -> serve/integrations -> cli.

A module may import only turnout modules at its own layer or earlier ones (modules in the same subpackage are
free to import each other); qualify and failover are siblings and may not import each other.
"""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "turnout"
LAYERS = {
    "config": 0,
    "atomic": 0,
    "errors": 0,
    "report": 1,  # the run record: run-folder names, JSONL, charts, pages; everything above may write or read it
    "backend": 2,
    "model": 3,
    "data": 4,
    "ckpt": 5,
    "train": 6,
    "qualify": 7,
    "failover": 7,
    "guard": 7,  # the training step's protection for loops turnout does not own
    "integrations": 8,  # the guard inside other trainers (transformers)
    "serve": 8,
    "cli": 9,
}


def _layer_of(parts: list[str]) -> str | None:
    """Top-level unit of a module path inside turnout (e.g. ['model', 'mla'] -> 'model')."""
    if not parts:
        return None
    return parts[0]


def _imports(path: Path) -> list[tuple[int, list[str]]]:
    tree = ast.parse(path.read_text(), filename=str(path))
    rel = path.relative_to(ROOT).with_suffix("").parts
    pkg = list(rel[:-1]) if rel[-1] != "__init__" else list(rel[:-1])
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name == "turnout" or a.name.startswith("turnout."):
                    found.append((node.lineno, a.name.split(".")[1:]))
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative import
                base = pkg[: len(pkg) - (node.level - 1)] if node.level > 1 else pkg
                mod = base + (node.module.split(".") if node.module else [])
                if not node.module:  # from . import x
                    for a in node.names:
                        found.append((node.lineno, mod + [a.name]))
                else:
                    found.append((node.lineno, mod))
            elif node.module and (node.module == "turnout" or node.module.startswith("turnout.")):
                mod = node.module.split(".")[1:]
                if not mod:
                    for a in node.names:
                        found.append((node.lineno, [a.name]))
                else:
                    found.append((node.lineno, mod))
    return found


def _files():
    return sorted(p for p in ROOT.rglob("*.py"))


@pytest.mark.parametrize("path", _files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_imports_follow_layering(path):
    own = _layer_of(list(path.relative_to(ROOT).with_suffix("").parts))
    if own in (None, "__init__", "__main__"):
        return
    assert own in LAYERS, f"{path}: top-level unit {own!r} has no place in the layering; add it to LAYERS"
    for lineno, target in _imports(path):
        tgt = _layer_of(target)
        if tgt is None or tgt == own:
            continue
        assert tgt in LAYERS, f"{path}:{lineno} imports unknown unit {tgt!r}"
        ok = LAYERS[tgt] < LAYERS[own]
        assert ok, f"{path}:{lineno}: {own} (layer {LAYERS[own]}) may not import {tgt} (layer {LAYERS[tgt]})"


def test_model_never_imports_backend():
    for path in (ROOT / "model").rglob("*.py"):
        for lineno, target in _imports(path):
            assert _layer_of(target) != "backend", f"{path}:{lineno} imports backend"
