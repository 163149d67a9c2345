"""The README names no file that does not exist: every repository path it mentions, and every entry of its Layout."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
TOP = {p.name for p in ROOT.iterdir() if p.is_dir() and not p.name.startswith(".")} - {"runs"}
PACKAGES = {p.name for p in (ROOT / "turnout").iterdir() if p.is_dir() and (p / "__init__.py").is_file()}

# a path: words joined by '/', ending in a file extension or in '/' (a folder); e.g. configs/tiny.toml, train/heal.py
PATH = re.compile(r"(?<![\w./~:<-])((?:[\w.-]+/)+(?:[\w*-]+\.[A-Za-z]\w*)?)(?![\w/<-])")


def _resolve(path: str) -> Path | None:
    """Where a mentioned path lives: from the repository root (configs/...), or inside the package when it starts
    with a subpackage (train/heal.py); None for what is not a repository path (RUN/report.html, tok/s)."""
    head = path.split("/")[0]
    if head in TOP:
        return ROOT / path
    if head in PACKAGES:
        return ROOT / "turnout" / path
    return None


def _exists(p: Path) -> bool:
    return any(p.parent.glob(p.name)) if "*" in p.name else p.exists()


def mentioned_paths() -> list[str]:
    return sorted({m.group(1) for m in PATH.finditer(README)})


def layout_entries() -> list[str]:
    """The Layout block's entries: `turnout/` and the names indented under it, and the folders beside it."""
    block = README.split("## Layout", 1)[1].split("```", 2)[1]
    entries = []
    for line in block.splitlines():
        if re.match(r"^\S", line):
            entries.append(line.split()[0])
        elif re.match(r"^  \S", line):
            entries.append("turnout/" + line.split()[0])
    return entries


def test_the_patterns_find_what_the_readme_mentions():
    paths = mentioned_paths()
    assert {"configs/tiny.toml", "bench/resilience.py", "train/heal.py", "tests/test_layering.py",
            "docs/demo-loss.png"} <= set(paths)
    assert "RUN/report.html" in paths and _resolve("RUN/report.html") is None  # a run's file, not the repository's
    assert {"turnout/", "turnout/config.py", "turnout/backend/", "configs/", "bench/"} <= set(layout_entries())


def test_every_repository_path_the_readme_mentions_exists():
    missing = [p for p in mentioned_paths() if _resolve(p) is not None and not _exists(_resolve(p))]
    assert not missing, f"README.md names files that do not exist: {missing}"


def test_every_layout_entry_exists():
    missing = [e for e in layout_entries() if not (ROOT / e).exists()]
    assert not missing, f"README.md's Layout names files that do not exist: {missing}"
