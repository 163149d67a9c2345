"""Data: text sources -> byte-level BPE tokenizer -> memmapped token shards -> deterministic global batches.

The training layer needs only `prepare_dataset(...)` and the `Dataset` it returns:

    ds = prepare_dataset(None, vocab_size=4096, cache_dir=Path("runs/data"))   # None: embedded Shakespeare
    sampler = ds.sampler(seq_len=256, seed=0, index=state["index"])
    x, y = sampler.next_batch(global_batch_size=64, rank=rank, world_size=world_size)   # int64 [64 // W, 256]
    evals = ds.val_batches(n_batches=8, batch_size=64, seq_len=256, rank=rank, world_size=world_size)

Files: errors (DataError), sources (user .txt/.jsonl), shakespeare (embedded corpus, corpus/), tokenizer,
shards (token files), sampler (GlobalSampler, val_batches), dataset (cache folder, prepare_dataset).
"""

from .dataset import Dataset, prepare_dataset
from .errors import DataError
from .sampler import GlobalSampler, val_batches
from .shakespeare import load_shakespeare
from .sources import Document, iter_documents, resolve_files
from .special_tokens import SpecialTokens
from .tokenizer import FILES as TOKENIZER_FILES
from .tokenizer import Tokenizer

__all__ = [
    "DataError",
    "Dataset",
    "Document",
    "GlobalSampler",
    "SpecialTokens",
    "TOKENIZER_FILES",
    "Tokenizer",
    "iter_documents",
    "load_shakespeare",
    "prepare_dataset",
    "resolve_files",
    "val_batches",
]
