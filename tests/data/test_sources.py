import json

import pytest

from turnout.data import DataError, iter_documents, prepare_dataset, resolve_files
from turnout.data.sources import hash_files


def _write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def _jsonl(path, records):
    return _write(path, "".join(json.dumps(r) + "\n" for r in records))


def _docs(sources, field="text"):
    return [d.text for d in iter_documents(resolve_files(sources), field)]


def test_txt_file_is_one_document(tmp_path):
    f = _write(tmp_path / "a.txt", "line one\nline two\n")
    assert _docs([f]) == ["line one\nline two\n"]


def test_jsonl_records_default_and_custom_field(tmp_path):
    f = _jsonl(tmp_path / "a.jsonl", [{"text": "first", "body": "x"}, {"text": "second", "body": "y"}])
    assert _docs([f]) == ["first", "second"]
    assert _docs([f], field="body") == ["x", "y"]
    g = _write(tmp_path / "blank.jsonl", '{"text": "one"}\n\n   \n{"text": ""}\n{"text": "two"}')
    assert _docs([g]) == ["one", "two"]  # blank lines and empty texts are skipped, a missing last newline is fine


def test_folder_walk_is_recursive_and_sorted(tmp_path):
    root = tmp_path / "corpus"
    _write(root / "b" / "2.txt", "b2")
    _jsonl(root / "b" / "1.jsonl", [{"text": "b1-first"}, {"text": "b1-second"}])
    _write(root / "a.txt", "a")
    _write(root / "c" / "d" / "e.txt", "cde")
    _write(root / "notes.md", "ignored")
    _write(root / "b" / "data.csv", "ignored")
    _write(root / ".git" / "description.txt", "hidden: ignored")
    _write(root / "b" / ".draft.txt", "hidden: ignored")
    files = resolve_files([root])
    assert [p.relative_to(root).as_posix() for p in files] == ["a.txt", "b/1.jsonl", "b/2.txt", "c/d/e.txt"]
    assert _docs([root]) == ["a", "b1-first", "b1-second", "b2", "cde"]
    # a list of sources keeps its order; a file may be named directly
    assert _docs([root / "c", root / "a.txt"]) == ["cde", "a"]


def test_missing_path(tmp_path):
    with pytest.raises(DataError, match=r"nope\.txt: no such file or folder"):
        resolve_files([tmp_path / "nope.txt"])


def test_bad_json_line_names_file_and_line(tmp_path):
    f = _write(tmp_path / "bad.jsonl", '{"text": "ok"}\n{"text": "ok too"}\n{"text": oops}\n')
    with pytest.raises(DataError, match=r"bad\.jsonl:3: bad JSON") as e:
        _docs([f])
    assert "\n" not in str(e.value)


def test_missing_field_names_field_file_and_line(tmp_path):
    f = _jsonl(tmp_path / "a.jsonl", [{"text": "ok"}, {"content": "wrong name"}])
    with pytest.raises(DataError, match=r"a\.jsonl:2: no field 'text' \(fields: content\)"):
        _docs([f])
    with pytest.raises(DataError, match=r"a\.jsonl:1: no field 'body'"):
        _docs([f], field="body")


@pytest.mark.parametrize("line, message", [
    ('{"text": 3}', "field 'text' is int, expected a string"),
    ('["text"]', "expected a JSON object, got list"),
])
def test_wrong_record_shapes(tmp_path, line, message):
    f = _write(tmp_path / "a.jsonl", line + "\n")
    with pytest.raises(DataError, match=r"a\.jsonl:1: " + message):
        _docs([f])


def test_other_bad_inputs(tmp_path):
    with pytest.raises(DataError, match="no data sources"):
        resolve_files([])
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=r"empty: folder holds no .txt, .jsonl or .parquet files"):
        resolve_files([tmp_path / "empty"])
    with pytest.raises(DataError, match=r"x\.csv: unsupported file type '.csv'"):
        resolve_files([_write(tmp_path / "x.csv", "a,b")])
    latin = tmp_path / "latin.txt"
    latin.write_bytes("caf\xe9".encode("latin-1"))
    with pytest.raises(DataError, match=r"latin\.txt: not valid UTF-8"):
        _docs([latin])


def test_empty_corpus_is_refused(tmp_path):
    _write(tmp_path / "src" / "a.txt", "")
    _jsonl(tmp_path / "src" / "b.jsonl", [{"text": ""}])
    with pytest.raises(DataError, match="empty corpus"):
        prepare_dataset([tmp_path / "src"], 300, tmp_path / "cache", log=None)
    assert [p.name for p in (tmp_path / "cache").iterdir()] == []  # nothing half-made left behind


def test_bad_line_surfaces_through_prepare(tmp_path):
    f = _write(tmp_path / "bad.jsonl", '{"text": "fine"}\n{"txt": "typo"}\n')
    with pytest.raises(DataError, match=r"bad\.jsonl:2: no field 'text'"):
        prepare_dataset([f], 300, tmp_path / "cache", log=None)


def test_content_hash(tmp_path):
    a = _write(tmp_path / "one" / "x.txt", "same words")
    b = _write(tmp_path / "two" / "renamed.txt", "same words")
    assert hash_files([a], "text") == hash_files([b], "text")  # paths do not matter, content does
    c = _write(tmp_path / "three" / "x.txt", "other words")
    assert hash_files([a], "text") != hash_files([c], "text")
    # moving bytes from one file to the next changes the hash
    assert hash_files([_write(tmp_path / "p1.txt", "ab"), _write(tmp_path / "p2.txt", "c")], "text") != \
        hash_files([_write(tmp_path / "q1.txt", "a"), _write(tmp_path / "q2.txt", "bc")], "text")
    j = _jsonl(tmp_path / "r.jsonl", [{"text": "t", "body": "b"}])
    assert hash_files([j], "text") != hash_files([j], "body")


def _parquet(path, columns, row_group_size=None):
    """A parquet file written by pyarrow itself; `columns` maps a name to its values."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table(columns), path, row_group_size=row_group_size)
    return path


def test_parquet_rows_are_documents_in_order(tmp_path):
    texts = [f"row {i} says {'x' * (i % 7)}" for i in range(2500)]
    texts[3] = ""  # skipped like an empty jsonl text
    # three row groups, each larger than the reader's batch, so order must hold across groups and batches
    f = _parquet(tmp_path / "a.parquet", {"text": texts, "body": [t.upper() for t in texts],
                                         "id": list(range(2500))}, row_group_size=1000)
    want = [t for t in texts if t]
    assert _docs([f]) == want
    assert _docs([f], field="body") == [t.upper() for t in want]
    docs = list(iter_documents([f]))
    assert docs[3].name == f"{f}#row4"  # names count every row, the skipped empty one included


def test_parquet_in_folders_and_as_a_single_path(tmp_path):
    root = tmp_path / "corpus"
    _write(root / "a.txt", "a")
    _parquet(root / "b" / "train-00000-of-00002.parquet", {"text": ["b0", "b1"]})
    _parquet(root / "b" / "train-00001-of-00002.parquet", {"text": ["b2"]})
    _jsonl(root / "c.jsonl", [{"text": "c"}])
    assert _docs([root]) == ["a", "b0", "b1", "b2", "c"]
    assert _docs(str(root)) == _docs([root]) == _docs(root)  # one path alone, as a string or a Path
    assert _docs(str(root / "b" / "train-00001-of-00002.parquet")) == ["b2"]


def test_bad_parquet_inputs_are_named(tmp_path):
    f = _parquet(tmp_path / "a.parquet", {"content": ["x"], "n": [1]})
    with pytest.raises(DataError, match=r"a\.parquet: no column 'text' \(columns: content, n\)"):
        _docs([f])
    with pytest.raises(DataError, match=r"a\.parquet: column 'n' is int64, expected strings"):
        _docs([f], field="n")
    g = _parquet(tmp_path / "nulls.parquet", {"text": ["ok", None, "fine"]})
    with pytest.raises(DataError, match=r"nulls\.parquet: row 1: column 'text' is null"):
        _docs([g])
    h = _write(tmp_path / "fake.parquet", "this is not parquet")
    with pytest.raises(DataError, match=r"fake\.parquet: not a readable parquet file") as e:
        _docs([h])
    assert "\n" not in str(e.value)


def test_parquet_prepares_a_dataset_from_a_string_path(tmp_path):
    texts = [f"To be, or not to be, line {i}: that is the question." for i in range(200)]
    f = _parquet(tmp_path / "corpus.parquet", {"text": texts})
    ds = prepare_dataset(str(f), 300, tmp_path / "cache", log=None)
    assert ds.meta["source"]["documents"] == 200
    stream = ds.train_tokens.tolist() + ds.val_tokens.tolist()
    assert ds.tokenizer.decode(stream) == "".join(t + "<|eos|>" for t in texts)  # every row, in order
    # the column read enters the content hash, as the jsonl field does
    g = _parquet(tmp_path / "two.parquet", {"text": ["t"], "body": ["b"]})
    assert hash_files([g], "text") != hash_files([g], "body")


def test_an_empty_path_is_refused_not_read_as_the_working_directory():
    with pytest.raises(DataError, match="empty path"):
        resolve_files(["", "x.txt"])
