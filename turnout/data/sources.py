"""User corpora: `.txt` and `.jsonl` files, or folders of them, read as a stream of documents.

A `.txt` file is one document. A `.jsonl` file holds one JSON object per line; the text of each object's
`jsonl_field` is one document. Folders are walked recursively in sorted order, so the same tree always gives the
same documents in the same order (and so the same content hash and the same tokens). Hidden files and folders
(names starting with ".") inside a walked folder are skipped; other file types are ignored.
"""

import hashlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

from .errors import DataError

SUFFIXES = (".txt", ".jsonl")


class Document(NamedTuple):
    """One document: `name` says where it came from (file, or file:line), `text` is its content."""

    name: str
    text: str


def resolve_files(sources: list[str | os.PathLike]) -> list[Path]:
    """The `.txt`/`.jsonl` files named by `sources` (files, or folders walked recursively), in a fixed order.

    Raises DataError for a missing path, a file of another kind, or when nothing is found.
    """
    if not sources:
        raise DataError("no data sources given")
    files = []
    for src in sources:
        path = Path(src)
        if path.is_dir():
            # rglob order depends on the file system; sort by the path relative to the source for a fixed order
            found = sorted(
                (p for p in path.rglob("*") if p.suffix in SUFFIXES and p.is_file() and not _hidden(p, path)),
                key=lambda p: p.relative_to(path).parts,
            )
            if not found:
                raise DataError(f"{path}: folder holds no .txt or .jsonl files")
            files.extend(found)
        elif path.is_file():
            if path.suffix not in SUFFIXES:
                raise DataError(f"{path}: unsupported file type {path.suffix!r} (expected .txt or .jsonl)")
            files.append(path)
        else:
            raise DataError(f"{path}: no such file or folder")
    return files


def _hidden(path: Path, root: Path) -> bool:
    # .git, .ipynb_checkpoints, editor swap files...: never part of a corpus
    return any(part.startswith(".") for part in path.relative_to(root).parts)


def _read_text(path: Path, raw: bytes, line: int | None = None) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        where = f"{path}:{line}" if line is not None else str(path)
        raise DataError(f"{where}: not valid UTF-8 ({e.reason} at byte {e.start})") from None


def _jsonl_documents(path: Path, field: str) -> Iterator[Document]:
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, start=1):
            line = _read_text(path, raw, lineno).strip()
            if not line:
                continue  # blank lines (e.g. a trailing newline) are not records
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{path}:{lineno}: bad JSON ({e.msg} at column {e.colno})") from None
            if not isinstance(record, dict):
                raise DataError(f"{path}:{lineno}: expected a JSON object, got {type(record).__name__}")
            if field not in record:
                raise DataError(f"{path}:{lineno}: no field {field!r} (fields: {', '.join(sorted(record)) or 'none'})")
            text = record[field]
            if not isinstance(text, str):
                raise DataError(f"{path}:{lineno}: field {field!r} is {type(text).__name__}, expected a string")
            yield Document(f"{path}:{lineno}", text)


def iter_documents(files: list[Path], jsonl_field: str = "text") -> Iterator[Document]:
    """Documents of `files` in order; empty documents are skipped. Raises DataError naming the file and line."""
    for path in files:
        if path.suffix == ".jsonl":
            for doc in _jsonl_documents(path, jsonl_field):
                if doc.text:
                    yield doc
        else:
            text = _read_text(path, path.read_bytes())
            if text:
                yield Document(str(path), text)


def hash_files(files: list[Path], jsonl_field: str) -> str:
    """sha256 over the files' bytes (and, for jsonl, the field read): equal content gives an equal hash.

    Paths do not enter the hash, so a moved or copied corpus still finds its prepared cache.
    """
    h = hashlib.sha256()
    for path in files:
        # length-prefix every file so that moving bytes between neighbouring files changes the hash
        h.update(f"{path.suffix}:{path.stat().st_size}:".encode())
        if path.suffix == ".jsonl":
            h.update(f"field={jsonl_field}:".encode())
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()
