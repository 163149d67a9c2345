"""Shared fixtures: the embedded corpus prepared once per session (~3 s on 2 cores)."""

import time

import pytest

from turnout.data import prepare_dataset


@pytest.fixture(scope="session")
def shakespeare_ds(tmp_path_factory):
    t0 = time.monotonic()
    ds = prepare_dataset(None, vocab_size=4096, cache_dir=tmp_path_factory.mktemp("data-cache"), log=None)
    ds.prepare_seconds = time.monotonic() - t0
    return ds


@pytest.fixture(scope="session")
def shakespeare_tok(shakespeare_ds):
    return shakespeare_ds.tokenizer
