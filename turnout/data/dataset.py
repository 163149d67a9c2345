"""A prepared dataset: text sources tokenised once into a cache folder, then memmapped by every run that uses it.

    cache_dir/<source hash[:16]>-v<vocab_size>-val<val_fraction>/
        tokenizer.json   byte-level BPE trained on all the sources (tokenizer.py), or the model's own tokenizer
                         (with its tokenizer_config.json) when one is given
        train.bin        the token stream (shards.py) less its tail; dtype and length in meta.json
        val.bin          the held-out tail: the last ceil(val_fraction * n_tokens) tokens
        meta.json        what was prepared from what

The folder is built under a hidden temporary name and renamed into place only when complete, so a folder with
the key's name is always whole; an interrupted preparation leaves only a `.tmp-*` folder that nothing reads.
Two processes preparing the same key at once both finish; the first rename wins and the other uses its result.
"""

import hashlib
import json
import math
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tokenizers
import torch

from turnout.errors import one_line

from .errors import DataError
from .sampler import GlobalSampler, val_batches
from .shakespeare import NAME as EMBEDDED
from .shakespeare import corpus_hash, load_shakespeare
from .shards import open_tokens, split_tail, token_dtype, write_tokens
from .sources import Document, hash_files, iter_documents, resolve_files
from .tokenizer import Tokenizer

FORMAT = 1  # bump when preparation changes what a cache folder holds; old folders are then not reused
META_FILE = "meta.json"
Log = Callable[[str], None] | None


@dataclass
class Dataset:
    """A prepared dataset folder: tokenizer, train/val token memmaps and meta.json."""

    path: Path
    meta: dict
    tokenizer: Tokenizer
    train_tokens: np.ndarray  # [n_train] uint16/uint32, read-only memmap
    val_tokens: np.ndarray  # [n_val]

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Dataset":
        """Open a folder written by `prepare_dataset`; DataError if it is missing, incomplete or truncated."""
        path = Path(path)
        meta, dtype, n_train, n_val = _read_meta(path / META_FILE)
        tokenizer = Tokenizer.load(path / "tokenizer.json")
        train = open_tokens(path / "train.bin", dtype, n_train)
        val = open_tokens(path / "val.bin", dtype, n_val)
        return cls(path, meta, tokenizer, train, val)

    def sampler(self, seq_len: int, seed: int, index: int = 0) -> GlobalSampler:
        """A GlobalSampler over the train split, starting at global sample `index`."""
        return GlobalSampler(self.train_tokens, seq_len, seed, index)

    def val_batches(
        self, n_batches: int, batch_size: int, seq_len: int, rank: int = 0, world_size: int = 1
    ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Fixed held-out batches (see sampler.val_batches): the same for every run and every world size."""
        return val_batches(self.val_tokens, n_batches, batch_size, seq_len, rank, world_size)


def prepare_dataset(
    sources: Iterable[str | os.PathLike] | None,
    vocab_size: int,
    cache_dir: str | os.PathLike,
    val_fraction: float = 0.01,
    jsonl_field: str = "text",
    log: Log = print,
    tokenizer: Tokenizer | None = None,
) -> Dataset:
    """Tokenise `sources` once into `cache_dir` and return the dataset; later calls reuse the folder.

    sources: None or ["shakespeare"] for the embedded corpus; otherwise .txt/.jsonl files and folders (walked
        recursively in sorted order). The name "shakespeare" always means the embedded corpus (write
        "./shakespeare" for a folder of that name); it may be mixed with paths.
    vocab_size: the model's vocabulary size; the tokenizer uses at most this many ids.
    val_fraction: the tail of the token stream held out for validation, in [0, 1).
    jsonl_field: the field of each .jsonl record that holds its text.
    log: called with one line per stage (None for silence).
    tokenizer: a model's own tokenizer to encode with (its vocabulary must fit vocab_size); None trains turnout's.
    The cache key is (content hash of the sources, vocab_size, val_fraction, the given tokenizer); paths do not
    enter it.
    """
    log = log or (lambda _msg: None)
    if not 0 <= val_fraction < 1:
        raise DataError(f"val_fraction must be in [0, 1), got {val_fraction}")
    if tokenizer is not None and tokenizer.vocab_size > vocab_size:
        raise DataError(f"the tokenizer has {tokenizer.vocab_size} tokens and the model's vocab_size is {vocab_size}: "
                        "its ids would not fit the embedding")
    parts, description, source_hash = _resolve(sources, jsonl_field)
    if tokenizer is not None:  # the same text under another tokenizer is another dataset
        source_hash = hashlib.sha256(f"{source_hash}\ntokenizer:{_tokenizer_hash(tokenizer)}".encode()).hexdigest()
    key = f"{source_hash[:16]}-v{vocab_size}-val{val_fraction:g}"
    cache_dir = Path(cache_dir)
    final = cache_dir / key
    log(f"data: {'; '.join(description)} (sha256 {source_hash[:16]})")
    if (ds := _reuse(final, source_hash, vocab_size, val_fraction, log)) is not None:
        return ds

    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=cache_dir, prefix=f".tmp-{key}-"))
    try:
        meta = _build(tmp, parts, "; ".join(description), jsonl_field, vocab_size, val_fraction, log, tokenizer)
        meta["source"] = {"description": description, "sha256": source_hash, "jsonl_field": jsonl_field,
                          **meta["source"]}
        _write_json(tmp / META_FILE, meta)
        try:
            os.rename(tmp, final)  # atomic; fails if another process renamed a complete folder there first
        except OSError:
            if (ds := _reuse(final, source_hash, vocab_size, val_fraction, log)) is None:
                raise
            return ds
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # gone after a rename; a leftover after a failure
    log(f"data: prepared {final} ({meta['tokens']['train']:,} train + {meta['tokens']['val']:,} val tokens)")
    return Dataset.load(final)


def _resolve(sources, jsonl_field: str) -> tuple[list[list[Path] | None], list[str], str]:
    # -> parts (None = the embedded corpus, else a list of files), a description per part, the content hash
    if sources is None:
        sources = [EMBEDDED]
    elif isinstance(sources, str | os.PathLike):
        sources = [sources]
    sources = list(sources)
    if not sources:
        raise DataError("no data sources given (use None for the embedded corpus)")
    h = hashlib.sha256(f"turnout-data-format-{FORMAT}\n".encode())
    parts, description = [], []
    for src in sources:
        if str(src) == EMBEDDED:
            parts.append(None)
            description.append(f"{EMBEDDED} (embedded)")
            h.update(f"embedded:{corpus_hash()}\n".encode())
        else:
            files = resolve_files([src])
            parts.append(files)
            description.append(f"{Path(src).resolve()} ({len(files)} file{'s' * (len(files) != 1)})")
            h.update(f"files:{hash_files(files, jsonl_field)}\n".encode())
    return parts, description, h.hexdigest()


def _documents(parts: list[list[Path] | None], jsonl_field: str) -> Iterator[Document]:
    for files in parts:
        yield from load_shakespeare() if files is None else iter_documents(files, jsonl_field)


def _reuse(path: Path, source_hash: str, vocab_size: int, val_fraction: float, log) -> Dataset | None:
    """The dataset at `path` if it is complete and was made from the same inputs; else None (removing a bad one)."""
    if not path.exists():
        return None
    try:
        ds = Dataset.load(path)
        m = ds.meta
        made_from = (m["source"]["sha256"], m["vocab_size"], m["split"]["val_fraction"])
        if made_from != (source_hash, vocab_size, val_fraction):
            raise DataError(f"{path}: made from other inputs (hash prefix collision)")
    except (DataError, KeyError, TypeError) as e:
        log(f"data: not reusing {path}: {e}; preparing it again")
        stale = path.with_name(f".stale-{path.name}-{os.getpid()}")
        try:
            os.rename(path, stale)  # out of the way first, so a half-deleted folder never keeps the key's name
        except FileNotFoundError:
            pass  # another process moved it first
        shutil.rmtree(stale, ignore_errors=True)
        return None
    log(f"data: reusing {path}")
    return ds


def _tokenizer_hash(tokenizer: Tokenizer) -> str:
    return hashlib.sha256((tokenizer.to_str() + json.dumps(tokenizer.config(), sort_keys=True)).encode()).hexdigest()


def _build(tmp: Path, parts, description: str, jsonl_field: str, vocab_size: int, val_fraction: float, log,
           given: Tokenizer | None = None) -> dict:
    """Train the tokenizer (unless one is `given`) and write tokenizer.json, train.bin and val.bin into `tmp`;
    returns meta (no source)."""
    stats = {"documents": 0, "chars": 0}

    def texts() -> Iterator[str]:
        # the first pass over the sources, so bad input (a DataError) surfaces here; tokenizers re-raises it as is
        for doc in _documents(parts, jsonl_field):
            stats["documents"] += 1
            stats["chars"] += len(doc.text)
            yield doc.text

    if given is None:
        log(f"data: training a byte-level BPE tokenizer with at most {vocab_size} tokens")
        t0 = time.monotonic()
        tokenizer = Tokenizer.train(texts(), vocab_size)
        log(f"data: trained a {tokenizer.vocab_size}-token tokenizer on {stats['documents']:,} documents "
            f"({stats['chars'] / 1e6:.1f} M chars) in {time.monotonic() - t0:.1f} s")
    else:
        tokenizer = given
        for _ in texts():  # counts the documents, and surfaces bad input before any token is written
            pass
        log(f"data: encoding with the model's {tokenizer.vocab_size}-token tokenizer ({tokenizer.specials.source})")
    if stats["documents"] == 0:
        raise DataError(f"empty corpus: {description} hold no text")
    tokenizer.save(tmp / "tokenizer.json")

    t0 = time.monotonic()
    dtype = token_dtype(vocab_size)
    stream = tmp / "tokens.tmp"
    n = write_tokens(tokenizer, _documents(parts, jsonl_field), stream, dtype, log).tokens
    n_val = math.ceil(val_fraction * n)
    if n - n_val < 2:
        raise DataError(f"corpus too small: {description} give {n} tokens, {n - n_val} of them for training")
    split_tail(stream, n_val, dtype, tmp / "train.bin", tmp / "val.bin")
    log(f"data: tokenised {n:,} tokens ({stats['chars'] / n:.2f} chars/token) in {time.monotonic() - t0:.1f} s")
    return {
        "format": FORMAT,
        "source": stats,  # prepare_dataset adds description, sha256 and jsonl_field
        "vocab_size": vocab_size,
        "tokenizer_vocab_size": tokenizer.vocab_size,
        "eos_id": tokenizer.eos_id,
        "tokenizer": "trained" if given is None else "given",
        "dtype": dtype.name,
        "tokens": {"train": n - n_val, "val": n_val},
        "split": {"method": "tail", "val_fraction": val_fraction},
        "tokenizers_version": tokenizers.__version__,
    }


def _read_meta(path: Path) -> tuple[dict, np.dtype, int, int]:
    # -> meta, token dtype, train and val token counts; DataError for anything else
    if not path.is_file():
        raise DataError(f"{path.parent}: not a prepared dataset (no {path.name})")
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, OSError) as e:
        raise DataError(f"{path}: unreadable ({e})") from None
    fmt = meta.get("format") if isinstance(meta, dict) else None
    if fmt != FORMAT:
        raise DataError(f"{path}: format {fmt}, this turnout reads format {FORMAT}; prepare the data again")
    try:
        dtype = np.dtype(meta["dtype"]).newbyteorder("<")
        return meta, dtype, int(meta["tokens"]["train"]), int(meta["tokens"]["val"])
    except (KeyError, TypeError, ValueError) as e:
        raise DataError(f"{path}: bad or missing field ({one_line(e)})") from None


def _write_json(path: Path, obj: dict) -> None:
    # the folder is renamed into place as a whole; fsync so the rename never publishes an unwritten meta.json
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=2)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
