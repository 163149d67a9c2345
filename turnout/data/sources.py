"""User corpora: `.txt`, `.jsonl` and `.parquet` files, or folders of them, read as a stream of documents.

A `.txt` file is one document. A `.jsonl` file holds one JSON object per line; the text of each object's
`jsonl_field` is one document. A `.parquet` file (read with pyarrow, a batch of rows at a time) gives one document
per row: the string in its column named `jsonl_field` (`text` by default, as in Hugging Face datasets). Folders are
walked recursively in sorted order, so the same tree always gives the same documents in the same order (and so the
same content hash and the same tokens). Hidden files and folders (names starting with ".") inside a walked folder
are skipped; other file types are ignored.
"""

import hashlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

from turnout.errors import one_line

from .errors import DataError

SUFFIXES = (".txt", ".jsonl", ".parquet")
PARQUET_BATCH_ROWS = 1024  # rows decoded at once: memory stays bounded on a large file


class Document(NamedTuple):
    """One document: `name` says where it came from (file, or file:line), `text` is its content."""

    name: str
    text: str


def resolve_files(sources: list[str | os.PathLike] | str | os.PathLike) -> list[Path]:
    """The `.txt`/`.jsonl`/`.parquet` files named by `sources` (files, or folders walked recursively; one path alone
    counts as a list of one), in a fixed order.

    Raises DataError for a missing path, a file of another kind, or when nothing is found.
    """
    if isinstance(sources, str | os.PathLike):
        sources = [sources]
    if not sources:
        raise DataError("no data sources given")
    files = []
    for src in sources:
        if not str(src).strip():  # Path("") is the working directory: never walk it by accident
            raise DataError("an empty path among the data sources")
        path = Path(src)
        if path.is_dir():
            # rglob order depends on the file system; sort by the path relative to the source for a fixed order
            found = sorted(
                (p for p in path.rglob("*") if p.suffix in SUFFIXES and p.is_file() and not _hidden(p, path)),
                key=lambda p: p.relative_to(path).parts,
            )
            if not found:
                raise DataError(f"{path}: folder holds no .txt, .jsonl or .parquet files")
            files.extend(found)
        elif path.is_file():
            if path.suffix not in SUFFIXES:
                raise DataError(f"{path}: unsupported file type {path.suffix!r} (expected .txt, .jsonl or .parquet)")
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


def _parquet_documents(path: Path, column: str) -> Iterator[Document]:
    # pyarrow is imported here: only a corpus with parquet files pays for it
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        f = pq.ParquetFile(path)
        schema = f.schema_arrow
    except (pa.ArrowException, OSError) as e:
        raise DataError(f"{path}: not a readable parquet file ({one_line(e)})") from None
    if column not in schema.names:
        raise DataError(f"{path}: no column {column!r} (columns: {', '.join(schema.names) or 'none'})")
    typ = schema.field(column).type
    if not (pa.types.is_string(typ) or pa.types.is_large_string(typ) or pa.types.is_string_view(typ)):
        raise DataError(f"{path}: column {column!r} is {typ}, expected strings")
    row = 0
    try:
        for batch in f.iter_batches(batch_size=PARQUET_BATCH_ROWS, columns=[column]):
            for text in batch.column(0).to_pylist():
                if text is None:
                    raise DataError(f"{path}: row {row}: column {column!r} is null, expected a string")
                yield Document(f"{path}#row{row}", text)
                row += 1
    except pa.ArrowException as e:
        raise DataError(f"{path}: row {row}: unreadable ({one_line(e)})") from None


def iter_documents(files: list[Path], jsonl_field: str = "text") -> Iterator[Document]:
    """Documents of `files` in order; empty documents are skipped. Raises DataError naming the file and line
    (or parquet row). `jsonl_field` names the text field of .jsonl records and the text column of .parquet files."""
    for path in files:
        if path.suffix in (".jsonl", ".parquet"):
            read = _jsonl_documents if path.suffix == ".jsonl" else _parquet_documents
            for doc in read(path, jsonl_field):
                if doc.text:
                    yield doc
        else:
            text = _read_text(path, path.read_bytes())
            if text:
                yield Document(str(path), text)


def hash_files(files: list[Path], jsonl_field: str) -> str:
    """sha256 over the files' bytes (and, for jsonl and parquet, the field read): equal content gives an equal hash.

    Paths do not enter the hash, so a moved or copied corpus still finds its prepared cache.
    """
    h = hashlib.sha256()
    for path in files:
        # length-prefix every file so that moving bytes between neighbouring files changes the hash
        h.update(f"{path.suffix}:{path.stat().st_size}:".encode())
        if path.suffix in (".jsonl", ".parquet"):
            h.update(f"field={jsonl_field}:".encode())
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()
