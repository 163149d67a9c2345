"""Byte-level BPE tokenizer: trained with HF `tokenizers`, stored as one `tokenizer.json`; or a model's own.

Byte-level means every string round-trips exactly (decode(encode(s)) == s) and no text is unknown. Special
tokens take the first ids: <|eos|> = 0 (ends every document, so it is also the document separator),
<|bos|> = 1, <|pad|> = 2. Text never encodes to a special id, even when it contains "<|eos|>" literally;
callers add special ids themselves. The checkpoint and export layers copy `tokenizer.json` next to the weights,
so a model can always be decoded; `transformers.PreTrainedTokenizerFast(tokenizer_file=...)` reads it too.

A model's own tokenizer (any tokenizer.json, with the tokenizer_config.json transformers writes beside it) is
used as it is: its special ids come from those files (special_tokens.py), and `save` writes both files.
"""

import os
from collections.abc import Iterable, Iterator
from pathlib import Path

import tokenizers
from tokenizers import decoders, models, pre_tokenizers, trainers

from turnout import atomic
from turnout.errors import one_line

from .errors import DataError
from .special_tokens import (TOKENIZER_CONFIG, TURNOUT, TURNOUT_LAYOUT, SpecialTokens, config_json, is_turnout_layout,
                             read_special_tokens)

SPECIAL_TOKENS = TURNOUT_LAYOUT
FILE_NAME = "tokenizer.json"
FILES = (FILE_NAME, TOKENIZER_CONFIG)  # what travels with a model: the second only for a model's own tokenizer
MIN_VOCAB = 256 + len(SPECIAL_TOKENS)  # every byte, plus the special tokens
CHUNK_CHARS = 4096  # long texts are cut into ~4 KB pieces so encode_batch can spread them over threads


def split_for_encoding(text: str, size: int = CHUNK_CHARS) -> list[str]:
    """Cut `text` into pieces of about `size` characters whose encodings concatenate to the encoding of `text`.

    The GPT-2 pre-tokenizer regex never joins a non-space character and a following "\\n" into one piece, and
    what it does after a "\\n" does not depend on what came before. So a cut just before a "\\n" that follows a
    non-space character is a pre-token boundary, and BPE never merges across one.
    """
    pieces, start, n = [], 0, len(text)
    while n - start > size:
        cut = text.find("\n", start + size)
        while cut != -1 and text[cut - 1].isspace():  # isspace() is a superset of the regex's \s: stays safe
            cut = text.find("\n", cut + 1)
        if cut == -1:
            break
        pieces.append(text[start:cut])
        start = cut
    pieces.append(text[start:])
    return pieces


class Tokenizer:
    """A tokenizer: `encode`, `decode`, `vocab_size`, the special ids, `save`, `load`, `train`.

    `specials` None means turnout's own layout, which `tok` must have; a model's own tokenizer gives them."""

    def __init__(self, tok: tokenizers.Tokenizer, specials: SpecialTokens | None = None):
        if specials is None:
            for i, name in enumerate(SPECIAL_TOKENS):
                if tok.token_to_id(name) != i:
                    raise DataError(f"tokenizer lacks special token {name!r} at id {i}; not a turnout tokenizer")
            specials = TURNOUT
        tok.encode_special_tokens = True  # not stored in tokenizer.json: set on every load
        self._tok, self.specials = tok, specials
        self._parsing: tokenizers.Tokenizer | None = None

    @classmethod
    def train(cls, texts: Iterable[str], vocab_size: int) -> "Tokenizer":
        """Train on `texts` with at most `vocab_size` tokens (fewer when the text has too few distinct pairs).

        Deterministic: the same texts and vocab_size give the same tokenizer.json in every process.
        """
        if vocab_size < MIN_VOCAB:
            raise DataError(f"vocab_size {vocab_size} is below {MIN_VOCAB} (256 bytes + the special tokens)")
        tok = tokenizers.Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            min_frequency=2,  # a pair seen once is noise, not a token
            special_tokens=list(SPECIAL_TOKENS),
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # all 256 bytes, even unseen ones
            show_progress=False,
        )
        tok.train_from_iterator(_pieces(texts), trainer)
        return cls(tok)

    def encode(self, text: str) -> list[int]:
        """Token ids of `text`, without special tokens."""
        return self.encode_batch([text])[0]

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        """Token ids of each text; long texts are cut (see split_for_encoding) and encoded in parallel."""
        pieces, owner = [], []  # owner[k]: which text pieces[k] belongs to
        for i, text in enumerate(texts):
            parts = split_for_encoding(text)
            pieces.extend(parts)
            owner.extend([i] * len(parts))
        out: list[list[int]] = [[] for _ in texts]
        for i, enc in zip(owner, self._tok.encode_batch(pieces, add_special_tokens=False)):
            out[i].extend(enc.ids)
        return out

    def encode_special(self, text: str) -> list[int]:
        """Token ids of text in which special tokens are written out (a rendered chat template): each becomes its
        id. Only for text the model's own template wrote; `encode` never does this."""
        if self._parsing is None:  # a second copy: the flag is per tokenizer, and encode may run on other threads
            self._parsing = tokenizers.Tokenizer.from_str(self._tok.to_str())
            self._parsing.encode_special_tokens = False
        return self._parsing.encode(text, add_special_tokens=False).ids

    def decode(self, ids: list[int], skip_special: bool = False) -> str:
        """Text of `ids`; special tokens appear as "<|eos|>" etc. unless `skip_special`."""
        return self._tok.decode(list(ids), skip_special_tokens=skip_special)

    @property
    def vocab_size(self) -> int:
        """Number of ids in use (ids are 0 .. vocab_size-1); at most the size asked for in `train`."""
        return self._tok.get_vocab_size(with_added_tokens=True)

    @property
    def eos_id(self) -> int:
        return self.specials.eos_id

    @property
    def bos_id(self) -> int | None:
        return self.specials.bos_id

    @property
    def pad_id(self) -> int | None:
        return self.specials.pad_id

    @property
    def own(self) -> bool:
        """True for a tokenizer turnout trained (its layout); False for a model's own."""
        return self.specials == TURNOUT

    def frame(self, ids: list[int]) -> list[int]:
        """A document's or prompt's ids as the model reads them: after bos when the model expects one."""
        return [self.bos_id, *ids] if self.specials.add_bos else ids

    def token_names(self, *ids: int | None) -> tuple[str | None, ...]:
        """The token strings of `ids` (None stays None)."""
        return tuple(None if i is None else self._tok.id_to_token(i) for i in ids)

    def to_str(self) -> str:
        """The tokenizer.json text."""
        return self._tok.to_str()

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Tokenizer) and self.to_str() == other.to_str() and self.specials == other.specials

    def save(self, path: str | os.PathLike) -> Path:
        """Write tokenizer.json atomically (and, for a model's own tokenizer, tokenizer_config.json beside it);
        `path` is the file or a folder to hold FILE_NAME. Returns the tokenizer.json file."""
        path = Path(path)
        if path.is_dir():
            path = path / FILE_NAME
        if not self.own:
            atomic.write_json(path.parent / TOKENIZER_CONFIG, config_json(self._tok, self.specials))
        return atomic.write_text(path, self.to_str())

    def config(self) -> dict:
        """tokenizer_config.json for transformers' AutoTokenizer (what `save` writes for a model's own)."""
        return config_json(self._tok, self.specials)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Tokenizer":
        """Read a tokenizer.json (`path` is the file or its folder): turnout's own, or a model's own with its
        special tokens named by the files beside it (see special_tokens.py)."""
        path = Path(path)
        if path.is_dir():
            path = path / FILE_NAME
        if not path.is_file():
            raise DataError(f"{path}: no such tokenizer file")
        try:
            tok = tokenizers.Tokenizer.from_file(str(path))
        except Exception as e:  # tokenizers raises a bare Exception for malformed JSON
            raise DataError(f"{path}: not a valid tokenizer.json ({one_line(str(e))})") from None
        return cls(tok, None if is_turnout_layout(tok) else read_special_tokens(path.parent, tok))


def _pieces(texts: Iterable[str]) -> Iterator[str]:
    # training counts words within pieces; safe cuts keep the counts (and so the merges) of whole texts
    for text in texts:
        yield from split_for_encoding(text)
