import json
import math
import os

import numpy as np
import pytest

from turnout.data import DataError, Dataset, load_shakespeare, prepare_dataset
from turnout.data import dataset as dataset_mod
from turnout.data.shards import token_dtype
from turnout.data.tokenizer import Tokenizer


@pytest.fixture
def small_corpus(tmp_path):
    """The first 50 KB of four plays as .txt plus two jsonl records: prepared in a fraction of a second."""
    src = tmp_path / "src"
    (src / "plays").mkdir(parents=True)
    docs = [d._replace(text=d.text[:50_000]) for d in load_shakespeare()[:4]]
    for d in docs:
        (src / "plays" / f"{d.name}.txt").write_text(d.text)
    records = [{"text": "A short record.\n"}, {"text": "Another one, with é and 中."}]
    (src / "z.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    texts = [d.text for d in sorted(docs)] + [r["text"] for r in records]
    return src, texts


def _stream(tok: Tokenizer, texts):
    return np.array([i for t in texts for i in tok.encode(t) + [tok.eos_id]], dtype=np.int64)


def test_token_dtype():
    assert token_dtype(4096) == np.uint16 and token_dtype(65536) == np.uint16
    assert token_dtype(65537) == np.uint32 and token_dtype(129280) == np.uint32


def test_embedded_dataset(shakespeare_ds):
    ds = shakespeare_ds
    assert ds.prepare_seconds < 30  # ~3 s on 2 cores
    assert ds.train_tokens.dtype == np.uint16 and isinstance(ds.train_tokens, np.memmap)
    m = ds.meta
    assert m["vocab_size"] == m["tokenizer_vocab_size"] == 4096 and m["dtype"] == "uint16"
    assert m["source"]["documents"] == 42 and m["source"]["description"] == ["shakespeare (embedded)"]
    n = m["tokens"]["train"] + m["tokens"]["val"]
    assert 1_500_000 < n < 1_800_000
    assert m["tokens"]["val"] == math.ceil(0.01 * n) == len(ds.val_tokens)
    first = load_shakespeare()[0].text
    assert ds.train_tokens[:200].tolist() == ds.tokenizer.encode(first)[:200]
    assert ds.val_tokens[-1] == ds.tokenizer.eos_id
    assert ds.tokenizer.decode(ds.val_tokens[-30:-1].tolist()) in load_shakespeare()[-1].text
    assert sorted(os.listdir(ds.path)) == ["meta.json", "tokenizer.json", "train.bin", "val.bin"]
    assert Tokenizer.load(ds.path) == ds.tokenizer


def test_memmap_equals_encoding_and_split_is_the_tail(small_corpus, tmp_path):
    src, texts = small_corpus
    ds = prepare_dataset([src], 1024, tmp_path / "cache", val_fraction=0.05, log=None)
    stream = _stream(ds.tokenizer, texts)
    n_val = math.ceil(0.05 * len(stream))
    assert len(ds.val_tokens) == n_val and len(ds.train_tokens) == len(stream) - n_val
    # train and val are disjoint slices of the one stream: the head and the tail
    assert np.array_equal(ds.train_tokens, stream[:-n_val])
    assert np.array_equal(ds.val_tokens, stream[-n_val:])
    assert ds.meta["split"] == {"method": "tail", "val_fraction": 0.05}
    assert ds.meta["source"]["documents"] == len(texts)


def test_zero_val_fraction(small_corpus, tmp_path):
    src, texts = small_corpus
    ds = prepare_dataset([src], 512, tmp_path / "cache", val_fraction=0.0, log=None)
    assert len(ds.val_tokens) == 0 and len(ds.train_tokens) == len(_stream(ds.tokenizer, texts))
    with pytest.raises(DataError, match="validation split has 0 tokens"):
        ds.val_batches(1, 2, 8)
    with pytest.raises(DataError, match=r"val_fraction must be in \[0, 1\)"):
        prepare_dataset([src], 512, tmp_path / "cache", val_fraction=1.0, log=None)


def test_second_call_reuses_the_cache(small_corpus, tmp_path, monkeypatch):
    src, _ = small_corpus
    lines = []
    first = prepare_dataset([src], 512, tmp_path / "cache", log=lines.append)
    assert any("trained" in line for line in lines) and any("tokenised" in line for line in lines)
    mtime = (first.path / "train.bin").stat().st_mtime_ns

    def refuse(*_a, **_k):
        raise AssertionError("re-tokenised a prepared dataset")

    monkeypatch.setattr(dataset_mod, "write_tokens", refuse)
    monkeypatch.setattr(Tokenizer, "train", refuse)
    lines.clear()
    second = prepare_dataset([str(src)], 512, tmp_path / "cache", log=lines.append)
    assert second.path == first.path and any("reusing" in line for line in lines)
    assert (second.path / "train.bin").stat().st_mtime_ns == mtime
    assert np.array_equal(second.train_tokens, first.train_tokens)
    # the key is the content: a copy elsewhere finds the same folder
    copy = tmp_path / "copy"
    copy.mkdir()
    for p in sorted(src.rglob("*")):
        if p.is_file():
            (copy / p.relative_to(src)).parent.mkdir(parents=True, exist_ok=True)
            (copy / p.relative_to(src)).write_bytes(p.read_bytes())
    assert prepare_dataset([copy], 512, tmp_path / "cache", log=None).path == first.path
    # other vocab size or val fraction: another folder (and so a real preparation, refused here)
    with pytest.raises(AssertionError, match="re-tokenised"):
        prepare_dataset([src], 600, tmp_path / "cache", log=None)
    with pytest.raises(AssertionError, match="re-tokenised"):
        prepare_dataset([src], 512, tmp_path / "cache", val_fraction=0.02, log=None)


def test_changed_content_is_prepared_again(tmp_path):
    src = tmp_path / "a.txt"
    src.write_text("to be or not to be\n" * 50)
    a = prepare_dataset([src], 300, tmp_path / "cache", log=None)
    src.write_text("that is the question\n" * 50)
    b = prepare_dataset([src], 300, tmp_path / "cache", log=None)
    assert a.path != b.path and b.tokenizer.decode(b.train_tokens[:4].tolist()).startswith("that")


def _leftovers(cache):
    return sorted(p.name for p in cache.iterdir()) if cache.exists() else []


@pytest.mark.parametrize("victim", ["split_tail", "_write_json"])
def test_failure_mid_write_leaves_no_trusted_cache(small_corpus, tmp_path, monkeypatch, victim):
    src, _ = small_corpus
    cache = tmp_path / "cache"
    real = getattr(dataset_mod, victim)

    def crash(*args, **kwargs):
        real(*args, **kwargs)  # the file is written, then the process "dies" before the folder is published
        raise RuntimeError("simulated crash")

    monkeypatch.setattr(dataset_mod, victim, crash)
    with pytest.raises(RuntimeError, match="simulated crash"):
        prepare_dataset([src], 512, cache, log=None)
    assert _leftovers(cache) == []
    monkeypatch.undo()
    ds = prepare_dataset([src], 512, cache, log=None)
    assert _leftovers(cache) == [ds.path.name]


def test_leftovers_of_a_killed_run_are_not_trusted(small_corpus, tmp_path):
    src, _ = small_corpus
    cache = tmp_path / "cache"
    good = prepare_dataset([src], 512, cache, log=None)
    expected = good.train_tokens.copy()
    key = good.path.name
    # a hard kill leaves a temp folder behind: ignored
    stray = cache / f".tmp-{key}-killed"
    stray.mkdir()
    (stray / "train.bin").write_bytes(b"\0" * 10)
    # a published folder that lost data after the fact (truncated file): detected, rebuilt, not trusted
    with open(good.path / "train.bin", "r+b") as f:
        f.truncate(100)
    with pytest.raises(DataError, match=r"train\.bin: 100 bytes, expected"):
        Dataset.load(good.path)
    lines = []
    again = prepare_dataset([src], 512, cache, log=lines.append)
    assert any("not reusing" in line for line in lines)
    assert np.array_equal(again.train_tokens, expected)
    # a folder under the key's name without meta.json (e.g. copied by hand, half done): rebuilt too
    (again.path / "meta.json").unlink()
    assert np.array_equal(prepare_dataset([src], 512, cache, log=None).train_tokens, expected)


def test_load_errors(tmp_path):
    with pytest.raises(DataError, match="not a prepared dataset"):
        Dataset.load(tmp_path)
    (tmp_path / "meta.json").write_text("{")
    with pytest.raises(DataError, match=r"meta\.json: unreadable"):
        Dataset.load(tmp_path)
    (tmp_path / "meta.json").write_text(json.dumps({"format": 999, "dtype": "uint16", "tokens": {}}))
    with pytest.raises(DataError, match="format 999"):
        Dataset.load(tmp_path)
    (tmp_path / "meta.json").write_text(json.dumps({"format": dataset_mod.FORMAT, "dtype": "uint16", "tokens": {}}))
    with pytest.raises(DataError, match="bad or missing field"):
        Dataset.load(tmp_path)


def test_mixed_sources_and_sampler_access(small_corpus, tmp_path, monkeypatch):
    src, texts = small_corpus
    three = load_shakespeare()[-3:]
    monkeypatch.setattr(dataset_mod, "load_shakespeare", lambda: three)  # a smaller "embedded corpus": faster
    ds = prepare_dataset(["shakespeare", src], 1024, tmp_path / "cache", val_fraction=0.01, log=None)
    assert ds.meta["source"]["documents"] == 3 + len(texts)
    assert np.array_equal(np.concatenate([ds.train_tokens, ds.val_tokens]),
                          _stream(ds.tokenizer, [d.text for d in three] + texts))
    assert ds.meta["source"]["description"][0] == "shakespeare (embedded)"
    x, y = ds.sampler(seq_len=64, seed=1).next_batch(8, rank=1, world_size=2)
    assert x.shape == y.shape == (4, 64)
    assert [b[0].shape for b in ds.val_batches(2, 4, 64)] == [(4, 64), (4, 64)]


def test_two_preparations_racing_both_succeed(small_corpus, tmp_path, monkeypatch):
    src, _ = small_corpus
    cache = tmp_path / "cache"
    real_build, other = dataset_mod._build, []

    def build_while_another_process_publishes_first(*args, **kwargs):
        meta = real_build(*args, **kwargs)
        monkeypatch.setattr(dataset_mod, "_build", real_build)
        other.append(prepare_dataset([src], 512, cache, log=None))
        return meta

    monkeypatch.setattr(dataset_mod, "_build", build_while_another_process_publishes_first)
    ds = prepare_dataset([src], 512, cache, log=None)
    assert ds.path == other[0].path and _leftovers(cache) == [ds.path.name]
    assert np.array_equal(ds.train_tokens, other[0].train_tokens)


def test_corpus_too_small(tmp_path):
    (tmp_path / "a.txt").write_text("a")
    with pytest.raises(DataError, match=r"corpus too small: .*a\.txt.* give 2 tokens, 1 of them for training"):
        prepare_dataset([tmp_path / "a.txt"], 300, tmp_path / "cache", log=None)
