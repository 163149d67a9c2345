"""Token shards: a corpus tokenised once into raw little-endian integer files, read back as numpy memmaps.

A shard file is the flat token stream: each document's ids followed by <|eos|>. There is no header; the dtype
and token count live in the dataset's meta.json, and `open_tokens` checks the file size against them.
"""

import os
import shutil
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import NamedTuple

import numpy as np

from .errors import DataError
from .sources import Document
from .tokenizer import Tokenizer

BATCH_CHARS = 1 << 20  # encode ~1 MB of text per encode_batch call: parallel enough, small in memory
LOG_EVERY_S = 2.0


class StreamStats(NamedTuple):
    tokens: int
    documents: int
    chars: int


def token_dtype(vocab_size: int) -> np.dtype:
    """uint16 when every id fits (vocab_size <= 65536), else uint32; always little-endian on disk."""
    return np.dtype("<u2") if vocab_size <= 1 << 16 else np.dtype("<u4")


def write_tokens(
    tokenizer: Tokenizer,
    docs: Iterable[Document],
    path: Path,
    dtype: np.dtype,
    log: Callable[[str], None] | None = None,
) -> StreamStats:
    """Encode `docs` in order into `path` (created or overwritten), eos after each document (and bos before it when
    the tokenizer frames documents so)."""
    if tokenizer.vocab_size > np.iinfo(dtype).max + 1:
        raise DataError(f"{path}: vocabulary of {tokenizer.vocab_size} does not fit {dtype.name}")
    n_tokens = n_docs = n_chars = 0
    last_log = start = time.monotonic()
    with open(path, "wb") as f:
        for batch in _batches(docs):
            for ids in tokenizer.encode_batch(batch):
                ids = tokenizer.frame(ids)  # bos first when the model's tokenizer says so
                ids.append(tokenizer.eos_id)
                f.write(np.asarray(ids, dtype=dtype).tobytes())
                n_tokens += len(ids)
            n_docs += len(batch)
            n_chars += sum(map(len, batch))
            if log and time.monotonic() - last_log >= LOG_EVERY_S:
                last_log = time.monotonic()
                log(f"  tokenised {n_chars / 1e6:.1f} M chars, {n_tokens:,} tokens ({last_log - start:.0f} s)")
        f.flush()
        os.fsync(f.fileno())
    return StreamStats(n_tokens, n_docs, n_chars)


def _batches(docs: Iterable[Document]) -> Iterator[list[str]]:
    batch, size = [], 0
    for doc in docs:
        batch.append(doc.text)
        size += len(doc.text)
        if size >= BATCH_CHARS:
            yield batch
            batch, size = [], 0
    if batch:
        yield batch


def split_tail(stream: Path, n_val: int, dtype: np.dtype, train_path: Path, val_path: Path) -> None:
    """Move the last `n_val` tokens of `stream` into `val_path`; the rest becomes `train_path`."""
    n_total = stream.stat().st_size // dtype.itemsize
    cut = (n_total - n_val) * dtype.itemsize
    with open(stream, "r+b") as src, open(val_path, "wb") as dst:
        src.seek(cut)
        shutil.copyfileobj(src, dst, 1 << 22)
        dst.flush()
        os.fsync(dst.fileno())
        src.truncate(cut)
        src.flush()
        os.fsync(src.fileno())
    os.replace(stream, train_path)


def open_tokens(path: Path, dtype: np.dtype, n_tokens: int) -> np.ndarray:
    """Read-only memmap of `path`, shape [n_tokens]; DataError if the file is missing or has another size."""
    if not path.is_file():
        raise DataError(f"{path}: token file missing")
    size = path.stat().st_size
    if size != n_tokens * dtype.itemsize:
        raise DataError(f"{path}: {size} bytes, expected {n_tokens} tokens x {dtype.itemsize} bytes (truncated?)")
    if n_tokens == 0:
        return np.empty(0, dtype=dtype)  # numpy cannot memmap an empty file
    return np.memmap(path, dtype=dtype, mode="r", shape=(n_tokens,))
