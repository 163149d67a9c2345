import hashlib
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import turnout
from turnout.data import DataError, Tokenizer, load_shakespeare
from turnout.data.tokenizer import MIN_VOCAB, split_for_encoding

SMALL_TRAIN = "\n".join(d.text[:20_000] for d in load_shakespeare()[:10])  # ~200 KB: trains in a blink

# letters, digits, spaces, tabs, newlines, punctuation and non-ASCII: every branch of the pre-tokenizer regex
PARTS = list("ab Z9 \t\n\n\r.,'-") + ["é", "ß", "中", "😀", "\u00a0", "\u2028", "\x1c", " the", "'s", "<|eos|>"]
TEXT = st.lists(st.sampled_from(PARTS), max_size=300).map("".join)


def test_round_trip_exact(shakespeare_tok):
    for doc in load_shakespeare()[::7]:
        assert shakespeare_tok.decode(shakespeare_tok.encode(doc.text)) == doc.text
    for s in ["", " ", "\n\n  \n", "naïve café — 東京 🙂\x00\x7f", "  leading and trailing  "]:
        assert shakespeare_tok.decode(shakespeare_tok.encode(s)) == s


@settings(max_examples=150, deadline=None)
@given(TEXT)
def test_round_trip_any_text(shakespeare_tok, text):
    ids = shakespeare_tok.encode(text)
    assert shakespeare_tok.decode(ids) == text
    assert all(0 <= i < shakespeare_tok.vocab_size for i in ids)


@settings(max_examples=200, deadline=None)
@given(TEXT, st.integers(1, 40))
def test_split_for_encoding_keeps_the_encoding(shakespeare_tok, text, size):
    pieces = split_for_encoding(text, size)
    assert "".join(pieces) == text
    whole = shakespeare_tok._tok.encode(text, add_special_tokens=False).ids  # the unsplit HF encoding
    assert [i for p in pieces for i in shakespeare_tok._tok.encode(p, add_special_tokens=False).ids] == whole


def test_long_text_is_split_and_encodes_the_same(shakespeare_tok):
    text = load_shakespeare()[0].text
    assert len(split_for_encoding(text)) > 10
    assert shakespeare_tok.encode(text) == shakespeare_tok._tok.encode(text, add_special_tokens=False).ids


def test_special_tokens(shakespeare_tok):
    tok = shakespeare_tok
    assert (tok.eos_id, tok.bos_id, tok.pad_id) == (0, 1, 2)
    ids = tok.encode("end <|eos|> here")
    assert tok.eos_id not in ids  # user text never becomes a control token
    assert tok.decode(ids) == "end <|eos|> here"
    assert tok.decode([5, tok.eos_id]).endswith("<|eos|>")
    assert tok.decode([tok.eos_id], skip_special=True) == ""


def test_respects_vocab_size():
    assert Tokenizer.train([SMALL_TRAIN], 500).vocab_size == 500
    tiny = Tokenizer.train(["hello world, hello there"], 4096)
    assert MIN_VOCAB <= tiny.vocab_size < 4096  # not enough pairs to fill it: fewer ids, never more
    with pytest.raises(DataError, match="vocab_size 100"):
        Tokenizer.train([SMALL_TRAIN], 100)


def test_deterministic_in_process_and_across_processes():
    a = Tokenizer.train([SMALL_TRAIN], 1000)
    assert a == Tokenizer.train([SMALL_TRAIN], 1000)
    assert a != Tokenizer.train([SMALL_TRAIN], 999)
    # Rust hash maps are seeded per process: train again in a fresh interpreter
    code = ("import hashlib; from turnout.data import Tokenizer; from tests.data.test_tokenizer import SMALL_TRAIN;"
            "print(hashlib.sha256(Tokenizer.train([SMALL_TRAIN], 1000).to_str().encode()).hexdigest())")
    root = Path(turnout.__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=root, check=True)
    assert out.stdout.strip() == hashlib.sha256(a.to_str().encode()).hexdigest()


def test_save_load_identical(shakespeare_tok, tmp_path):
    path = shakespeare_tok.save(tmp_path)
    assert path == tmp_path / "tokenizer.json"
    for loaded in (Tokenizer.load(path), Tokenizer.load(tmp_path)):
        assert loaded == shakespeare_tok
        assert loaded.vocab_size == shakespeare_tok.vocab_size
        text = "Now is the winter of our discontent <|eos|>"
        assert loaded.encode(text) == shakespeare_tok.encode(text)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tokenizer.json"]  # no temp file left


def test_load_errors(tmp_path):
    with pytest.raises(DataError, match="no such tokenizer file"):
        Tokenizer.load(tmp_path / "nope.json")
    bad = tmp_path / "tokenizer.json"
    bad.write_text("{not json")
    with pytest.raises(DataError, match="not a valid tokenizer.json"):
        Tokenizer.load(bad)


def test_readable_by_transformers(shakespeare_tok, tmp_path):
    transformers = pytest.importorskip("transformers")
    hf = transformers.PreTrainedTokenizerFast(tokenizer_file=str(shakespeare_tok.save(tmp_path)))
    text = "O Romeo, Romeo! wherefore art thou Romeo?\n"
    assert hf.encode(text, add_special_tokens=False) == shakespeare_tok.encode(text)
    assert hf.decode(shakespeare_tok.encode(text)) == text
